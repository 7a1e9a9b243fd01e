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
from torch import Tensor

from core import game_state as gs
from core.atomic_file import atomic_path
from core.manifest import ManifestAppender
from model.frames import Frames, frames_from_table, table_from_frames
from model.packed_frame import PackedFrame

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


class Layout:
    """Frame columns grouped by dtype and shape, in a fixed order. A tick's batch is copied off
    the device as one array per group, and a game's frame then goes into its recording with
    one assignment per group instead of one per field (about 150): at 16 sessions that was
    milliseconds of every tick."""

    def __init__(self, signature: tuple):
        self.signature = signature
        groups: dict[tuple, list[str]] = {}
        for name, dtype, shape in signature:
            groups.setdefault((dtype, shape), []).append(name)
        self.groups = list(groups.items())  # [((dtype, shape), names)]

    @staticmethod
    def of(frame: Mapping[str, Tensor | np.ndarray], leading: int) -> Layout:
        """The layout of a frame whose arrays have `leading` batch axes (1: a batch, 0: one
        game's frame), cached per distinct set of columns."""
        if isinstance(frame, PackedFrame) and not frame.replaced and leading == 1:
            types = frame.field_types()
        else:
            types = [(k, v.dtype, tuple(v.shape[leading:])) for k, v in frame.items()]
        signature = tuple(
            sorted((k, str(dtype).removeprefix("torch."), shape) for k, dtype, shape in types)
        )
        layout = _LAYOUTS.get(signature)
        if layout is None:
            layout = _LAYOUTS[signature] = Layout(signature)
        return layout

    def pack(self, row: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One game's frame (name -> array) as this layout's group arrays, (n, *shape) each."""
        return [np.stack([np.asarray(row[n]) for n in names]) for _, names in self.groups]


_LAYOUTS: dict[tuple, Layout] = {}


class BatchCopy:
    """A private numpy copy of a batch of frames, taken once per tick: one (B, n, *shape)
    array per column group of its `Layout`, and `columns`, views of it by field name. The
    simulation later writes into its own tensors in place (on a restore), so a copy is needed;
    rows of this one are then kept per game without copying field by field."""

    def __init__(self, batch: Frames):
        if isinstance(batch, PackedFrame) and not batch.replaced:
            # Numpy views of the packed groups, then one gather per group: no per-field work.
            self.layout, gathers = _packed_plan(batch)
            arrays = [group.cpu().numpy() for group in batch.packed]
            self.groups = [np.moveaxis(arrays[g], 0, 1)[:, rows] for g, rows in gathers]
        else:
            self.layout = Layout.of(batch, leading=1)
            self.groups = [
                torch.stack([batch[n] for n in names], 1).cpu().numpy()
                for _, names in self.layout.groups
            ]
        self.columns: dict[str, np.ndarray] = {}
        for (_, names), array in zip(self.layout.groups, self.groups, strict=True):
            for j, name in enumerate(names):
                self.columns[name] = array[:, j]

    def row(self, index: int) -> GroupedRow:
        return GroupedRow(self.layout, [array[index] for array in self.groups])


def _packed_plan(batch: PackedFrame) -> tuple[Layout, list[tuple[int, np.ndarray]]]:
    """The `Layout` of a packed batch, and for each of its groups the packed group it comes
    from and the rows to take from it (a layout group has one dtype and shape, so one packed
    group holds all its fields). Cached per packing: the live step returns frames of one
    packing tick after tick, and working this out again took a quarter of a millisecond."""
    key = (
        tuple(map(tuple, batch.layout)),
        tuple((group.dtype, tuple(group.shape[2:])) for group in batch.packed),
    )
    plan = _PACKED_PLANS.get(key)
    if plan is None:
        layout = Layout.of(batch, leading=1)
        gathers = []
        for _, names in layout.groups:
            places = [batch.position(name) for name in names]
            (group,) = {g for g, _ in places}
            gathers.append((group, np.array([i for _, i in places])))
        plan = _PACKED_PLANS[key] = (layout, gathers)
    return plan


_PACKED_PLANS: dict[tuple, tuple[Layout, list[tuple[int, np.ndarray]]]] = {}


class GroupedRow:
    """One game's frame from a `BatchCopy`: its layout's group arrays, (n, *shape) each."""

    def __init__(self, layout: Layout, groups: list[np.ndarray]):
        self.layout, self.groups = layout, groups


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
            writes.append(partial(_write_info, self.folder, dict(self.info)))
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
            writes.append(_Finish(self.folder, info))
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


class _Finish:
    """All parts into `game.parquet`, a manifest row for the recordings folder, parts gone."""

    def __init__(self, folder: Path, info: dict):
        self.folder, self.info = folder, info

    def __call__(self) -> None:
        parts = sorted((self.folder / "parts").glob("frames-*.parquet"))
        if not parts:
            _write_info(self.folder, self.info)
            return
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        table = table.replace_schema_metadata(_metadata(self.info))
        with atomic_path(self.folder / GAME_FILE) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        _write_info(self.folder, self.info)
        shutil.rmtree(self.folder / "parts", ignore_errors=True)
        _add_to_manifest(self.folder, table, self.info)


def write_complete_game(folder: Path, frames: Frames, info: dict) -> None:
    """A whole game at once (matches): `game.parquet`, `info.json` and a manifest row."""
    info = {**info, "status": "complete", "frames": len(frames["frame"])}
    table = table_from_frames({k: v.cpu() for k, v in frames.items()}, metadata=_metadata(info))
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / GAME_FILE) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    _write_info(folder, info)
    _add_to_manifest(folder, table, info)


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


def _write_info(folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / INFO_FILE) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=1), encoding="utf-8")


def _add_to_manifest(folder: Path, table: pa.Table, info: dict) -> None:
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
