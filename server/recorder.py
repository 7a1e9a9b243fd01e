"""Recordings of every live session and every match, in the ingestion schema.

A game's recording is a folder `<recordings>/<id>/`:
- `parts/frames-000000.parquet`, ...: one file per second of play, each written atomically as
  soon as its frames are final (older than the rollback window), so a crash loses at most the
  last second or so;
- `info.json`: what was played (kind, setup, model and checkpoint hash, settings), written when
  the game starts and again, with its events and the frames whose input was substituted, when
  it ends (each part also carries its own events and substitutions in its metadata);
- `game.parquet`: the whole game in one file, written when the game ends (the parts are then
  removed), with `info.json` also in its metadata.

The recordings folder is also a dataset folder: each finished game gets a row in its
`manifest.jsonl`, so `playmodel eval --data <recordings> --split all` reads it, and
`playmodel play --replay <recordings>/<id>/game.parquet` plays one back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from core import game_state as gs
from core.atomic_file import atomic_path
from core.manifest import ManifestAppender
from model.frames import Frames, frames_from_table, table_from_frames
from server.column_groups import GroupedRow, Layout

log = logging.getLogger(__name__)

PART_FRAMES = 60  # a second of play per part file
GAME_FILE = "game.parquet"
INFO_FILE = "info.json"


def file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class GameRecorder:
    """Collects one game's frames and writes them as described in the module docstring.

    `add` and `correct` run on the device thread; `take_writes` hands the file writes to the
    caller, which runs them in order on a writer thread. Frames wait in preallocated arrays,
    one per column group (`Layout`), so adding a frame of a `BatchCopy` costs one copy per
    group and a part needs no stacking."""

    def __init__(self, folder: Path, info: dict, hold_back: int, stagger: int = 0):
        """`hold_back`: frames a rollback may still change, kept back from the parts.
        `stagger`: the first part is this many frames shorter (0 to PART_FRAMES - 1), so that
        sessions that started together do not all write a part on the same tick."""
        self.folder = folder
        self.info = {**info, "status": "recording"}
        self.events: list[dict] = []  # the whole game's, for the final info.json
        self.substituted: list[list[int]] = []
        self.hold_back = hold_back  # frames a rollback may still change
        self.capacity = 2 * PART_FRAMES + hold_back
        self.layout: Layout | None = None
        self.buffer: list[np.ndarray] = []  # per group, frames not yet written, in order
        self.count = 0
        self.first_pending: int | None = None  # frame id of the buffer's first frame
        self.part_events: list[dict] = []  # since the last part
        self.part_substituted: list[list[int]] = []
        self.written = 0
        self.parts = 0
        self.part_frames = PART_FRAMES - stagger % PART_FRAMES  # the next part's length
        self.finished = False
        self.started = False

    # ------------------------------------------------------------------ device thread
    def add(
        self,
        frame_id: int,
        row: GroupedRow | Mapping[str, np.ndarray],
        events=(),
        substituted=(),
    ) -> None:
        """Append one frame: a row of a `BatchCopy`, or a mapping of field -> value."""
        groups = self._groups(row)
        if not self.buffer:
            self.buffer = [np.empty((self.capacity, *g.shape), dtype=g.dtype) for g in groups]
        if self.count == self.capacity:  # no writer has taken a part: grow
            self.buffer = [np.concatenate([b, np.empty_like(b)]) for b in self.buffer]
            self.capacity *= 2
        if self.first_pending is None:
            self.first_pending = frame_id
        for array, group in zip(self.buffer, groups, strict=True):
            array[self.count] = group
        self.count += 1
        new_events = [e.to_dict() for e in events]
        new_substituted = [[frame_id, port] for port in substituted]
        self.events += new_events
        self.substituted += new_substituted
        self.part_events += new_events
        self.part_substituted += new_substituted

    def correct(self, frame_id: int, row: GroupedRow | Mapping[str, np.ndarray]) -> None:
        """A rollback re-made `frame_id`: replace it if it is not written yet."""
        if self.first_pending is None:
            return
        index = frame_id - self.first_pending
        if 0 <= index < self.count:
            for array, group in zip(self.buffer, self._groups(row), strict=True):
                array[index] = group

    def _groups(self, row: GroupedRow | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.layout is None:
            self.layout = row.layout if isinstance(row, GroupedRow) else Layout.of(row, 0)
        if not isinstance(row, GroupedRow):
            return self.layout.pack(row)
        if row.layout is not self.layout and row.layout.signature != self.layout.signature:
            raise ValueError(f"recording {self.folder.name}: the frame's columns changed")
        return row.groups

    def take_writes(self, final: bool = False) -> list:
        """The file writes now due: info.json when recording starts, a part per full second
        of final frames (everything when `final`), the whole game at the end. Returned as
        callables for the writer thread."""
        writes = []
        if not self.started:
            self.started = True
            writes.append(partial(write_info, self.folder, dict(self.info)))
        while self.count >= self.part_frames + self.hold_back or (final and self.count):
            n = min(self.part_frames, self.count)
            self.part_frames = PART_FRAMES
            # One copy per column group here, on the device thread; the writer thread splits
            # the groups into columns.
            groups = [array[:n].copy() for array in self.buffer]
            for array in self.buffer:
                array[: self.count - n] = array[n : self.count]
            self.count -= n
            self.first_pending = None if not self.count else self.first_pending + n
            self.written += n
            part = {
                "id": self.info.get("id"),
                "part": self.parts,
                "events": self.part_events,
                "substituted": self.part_substituted,
            }
            self.part_events, self.part_substituted = [], []
            writes.append(_PartWrite(self.folder, self.parts, self.layout, groups, part))
            self.parts += 1
        if final and not self.finished:
            self.finished = True
            info = {
                **self.info,
                "frames": self.written,
                "status": "complete",
                "events": self.events,
                "substituted": self.substituted,
            }
            writes.append(FinishGame(self.folder, info))
        return writes


class _PartWrite:
    def __init__(
        self, folder: Path, index: int, layout: Layout, groups: list[np.ndarray], info: dict
    ):
        self.folder, self.index, self.info = folder, index, info
        self.layout, self.groups = layout, groups

    def __call__(self) -> None:
        parts = self.folder / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        frames = {}
        for (_, names), array in zip(self.layout.groups, self.groups, strict=True):
            for j, name in enumerate(names):
                frames[name] = torch.from_numpy(np.ascontiguousarray(array[:, j]))
        table = table_from_frames(frames, metadata=_metadata(self.info))
        with atomic_path(parts / f"frames-{self.index:06d}.parquet") as tmp:
            # Parts are merged (and compressed) when the game ends: write them fast. Without
            # compression, dictionaries or statistics a part takes 2.5 ms instead of 5.4 (zstd).
            pq.write_table(
                table, tmp, compression="none", use_dictionary=False, write_statistics=False
            )


class FinishGame:
    """All parts into `game.parquet`, a manifest row for the recordings folder, parts gone."""

    def __init__(self, folder: Path, info: dict):
        self.folder, self.info = folder, info

    def __call__(self) -> None:
        parts = sorted((self.folder / "parts").glob("frames-*.parquet"))
        if not parts:
            write_info(self.folder, self.info)
            return
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        table = table.replace_schema_metadata(_metadata(self.info))
        with atomic_path(self.folder / GAME_FILE) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        write_info(self.folder, self.info)
        shutil.rmtree(self.folder / "parts", ignore_errors=True)
        add_to_manifest(self.folder, table, self.info)


def write_complete_game(folder: Path, frames: Frames, info: dict) -> None:
    """A whole game at once (matches): `game.parquet`, `info.json` and a manifest row."""
    info = {**info, "status": "complete", "frames": len(frames["frame"])}
    table = table_from_frames({k: v.cpu() for k, v in frames.items()}, metadata=_metadata(info))
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / GAME_FILE) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    write_info(folder, info)
    add_to_manifest(folder, table, info)


def read_recording(folder: Path) -> pa.Table | None:
    """A recording as one table: the finished game, or the parts written so far."""
    for _ in range(3):  # the game may finish (parts merged, then removed) while we read
        if (folder / GAME_FILE).exists():
            return pq.read_table(folder / GAME_FILE)
        parts = sorted((folder / "parts").glob("frames-*.parquet"))
        if not parts:
            return None
        try:
            return pa.concat_tables([pq.read_table(p) for p in parts])
        except FileNotFoundError:
            continue
    return None


def _metadata(info: dict) -> dict[bytes, bytes]:
    return {
        b"schema_version": str(gs.SCHEMA_VERSION).encode(),
        b"recording": json.dumps(info).encode(),
    }


def write_info(folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / INFO_FILE) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1), encoding="utf-8")


def add_to_manifest(folder: Path, table: pa.Table, info: dict) -> None:
    frames = frames_from_table(table.slice(0, 1))
    output = f"{folder.name}/{GAME_FILE}"
    row = {
        "path": output,
        "hash": hashlib.sha256(f"{folder.name}:{time.time_ns()}".encode()).hexdigest(),
        "status": "ok",
        "reason": None,
        "bytes": (folder / GAME_FILE).stat().st_size,
        "mtime_ns": (folder / GAME_FILE).stat().st_mtime_ns,
        "output": output,
        "frames": table.num_rows,
        "stage": int(frames["stage"][0]),
        "characters_internal": [int(frames[f"{p}_character"][0]) for p in gs.PLAYERS],
        "missing_fields": [],
        "recording": info.get("kind", "session"),
    }
    with ManifestAppender(folder.parent) as manifest:
        manifest.append(row)
    log.info("recording %s: %d frames in %s", folder.name, table.num_rows, folder / GAME_FILE)
