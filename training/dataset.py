"""The training data: the games of a dataset folder (`playmodel parse`) as tensors in memory.

`GameDataset(folder, split)` reads `manifest.jsonl`, keeps the ok games that pass the filters,
loads each game's parquet file once with pyarrow (`model.frames.frames_from_table`) and
concatenates all games into one tensor per column. Each `Game.frames` is a view into those
tensors, and `batch()` gathers B windows with a single index per column, so no per-frame Python
runs on the hot path.

Conventions:
- The train / val split is by game and depends only on the game's hash (sha256 of the replay):
  a game is in "val" iff int(hash[:8], 16) / 2**32 < val_fraction. Adding games to a folder
  never moves an existing game from one split to the other.
- A window is seq_len + 1 consecutive frames of one game: the model reads frames 0..seq_len-1
  as `prev` and predicts frames 1..seq_len (`model.frames.model_inputs`).
- `batch(step)` is a pure function of (seed, step), so a run resumed at step k sees exactly the
  batches it would have seen.
- Masks: {column: (B,) bool}, True where the window's game recorded the column, for every
  column (manifest `missing_fields` names, e.g. `p1_hitlag`, `item_slot`) that at least one
  game of the dataset lacks. The trainer masks those losses instead of learning the defaults.
- `state_age` is the rule's count (`model.frame_spec.count_state_age`), as the model reads it
  in play, not Slippi's animation frame.
- Velocities, recorded from Slippi 3.5, are filled in for older games as each frame's own move
  (`model.frame_spec.impute_missing_velocities`): positions are decoded from them.

May import `core` and `model`; reads files, never writes them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import Tensor

from core import game_state as gs
from core.manifest import MANIFEST_NAME, load_manifest
from model.frame_spec import count_state_age, impute_missing_velocities
from model.frames import Frames, frames_from_table

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")


@dataclass
class Game:
    hash: str
    frames: Frames  # (T, ...) views into the dataset's concatenated columns
    missing: frozenset[str]  # columns this game's Slippi version did not record

    def __len__(self) -> int:
        return len(self.frames["frame"])


def in_val(game_hash: str, val_fraction: float) -> bool:
    """Whether a game belongs to the validation split (a pure function of its hash)."""
    return int(game_hash[:8], 16) / 2**32 < val_fraction


class GameDataset:
    """The games of one split of a dataset folder, in memory. See the module docstring."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "train",
        val_fraction: float = 0.1,
        stages: Iterable[int] | None = None,
        characters: Iterable[int] | None = None,
        min_frames: int = 2,
    ):
        self.data_dir = Path(data_dir)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1] (got {val_fraction})")
        rows = self._select_rows(split, val_fraction, stages, characters, min_frames)
        self.games: list[Game] = []
        self.columns: Frames = {}  # every game's frames, concatenated: (total_frames, ...)
        self._load(rows)
        self._numpy_columns = {k: c.numpy() for k, c in self.columns.items()}  # shared memory
        self.starts = torch.tensor([0] + [len(g) for g in self.games]).cumsum(0)  # (G + 1,)
        self.lengths = self.starts[1:] - self.starts[:-1]  # (G,)
        # Columns missing in some game, and per game whether it recorded each: (G, K).
        self.masked_columns = sorted(set().union(*(g.missing for g in self.games)))
        self.recorded = torch.tensor(
            [[c not in g.missing for c in self.masked_columns] for g in self.games],
            dtype=torch.bool,
        ).view(len(self.games), len(self.masked_columns))
        self._window_cumsum: dict[int, Tensor] = {}
        log.info(
            "%s: %d %s games, %s frames", self.data_dir, len(self), split, f"{self.total_frames:,}"
        )

    def __len__(self) -> int:
        return len(self.games)

    @property
    def total_frames(self) -> int:
        return int(self.starts[-1])

    def _select_rows(self, split, val_fraction, stages, characters, min_frames) -> list[dict]:
        folder = self.data_dir
        if not folder.is_dir():
            raise ValueError(f"dataset folder {folder}: no such folder")
        if not (folder / MANIFEST_NAME).exists():
            raise ValueError(
                f"dataset folder {folder}: no {MANIFEST_NAME} (build it with "
                f"`playmodel parse REPLAYS --out {folder}`)"
            )
        by_hash: dict[str, dict] = {}
        manifest = load_manifest(folder)
        for path in sorted(manifest):  # path order: the first copy of a game is kept
            row = manifest[path]
            if row["status"] == "ok":
                by_hash.setdefault(row["hash"], row)  # a copy of a game counts once
        stage_set = None if stages is None else set(stages)
        char_set = None if characters is None else set(characters)
        rows = []
        for game_hash, row in sorted(by_hash.items()):  # hash order: independent of paths
            if stage_set is not None and row["stage"] not in stage_set:
                continue
            if char_set is not None and not set(row["characters_internal"]) <= char_set:
                continue
            if row["frames"] < min_frames:
                continue
            if split != "all" and in_val(game_hash, val_fraction) != (split == "val"):
                continue
            rows.append(row)
        if not rows:
            raise ValueError(
                f"dataset folder {folder}: no game left after filtering ({len(by_hash)} ok "
                f"games; split={split!r}, val_fraction={val_fraction}, "
                f"stages={_listed(stage_set)}, characters={_listed(char_set)}, "
                f"min_frames={min_frames})"
            )
        return rows

    def _load(self, rows: list[dict]) -> None:
        """Read every game's parquet file into one preallocated tensor per column."""
        total = sum(row["frames"] for row in rows)
        offset = 0
        for row in rows:
            path = self.data_dir / row["output"]
            try:
                table = pq.read_table(path)
            except OSError as e:  # missing or unreadable file (pyarrow raises OSError kinds)
                raise ValueError(f"dataset folder {self.data_dir}: cannot read {path}: {e}") from e
            version = (table.schema.metadata or {}).get(b"schema_version", b"?").decode()
            if version != str(gs.SCHEMA_VERSION):
                raise ValueError(
                    f"{path} has schema version {version}, this code reads "
                    f"{gs.SCHEMA_VERSION}; parse the replays again with --force"
                )
            if table.num_rows != row["frames"]:
                raise ValueError(
                    f"{path} has {table.num_rows} frames but the manifest says {row['frames']}; "
                    "parse the replays again with --force"
                )
            frames = frames_from_table(table)
            impute_missing_velocities(frames, row["missing_fields"])  # Slippi < 3.5
            count_state_age(frames)  # as the simulation counts it, not as Slippi records it
            if not self.columns:
                self.columns = {
                    k: torch.empty((total, *v.shape[1:]), dtype=v.dtype) for k, v in frames.items()
                }
            end = offset + table.num_rows
            for k, v in frames.items():
                self.columns[k][offset:end] = v
            game_frames = {k: c[offset:end] for k, c in self.columns.items()}
            self.games.append(Game(row["hash"], game_frames, frozenset(row["missing_fields"])))
            offset = end

    def _masks(self, game_index: Tensor) -> dict[str, Tensor]:
        recorded = self.recorded[game_index]  # (B, K)
        return {c: recorded[:, i] for i, c in enumerate(self.masked_columns)}

    def _gather(self, first: Tensor, length: int) -> Frames:
        """Frames first[b] .. first[b] + length - 1 (global indices) of every column."""
        index = (first[:, None] + torch.arange(length)).flatten().numpy()  # (B * length,)
        shape = (len(first), length)
        # numpy's take, not torch's index_select: torch splits a gather this size across its
        # intra-op threads, which made it 30x slower (70 ms instead of 2 ms a batch) on a
        # 2-core machine whose cores were busy; numpy's single-threaded copy never waits.
        return {
            k: torch.from_numpy(c.take(index, axis=0).reshape(*shape, *c.shape[1:]))
            for k, c in self._numpy_columns.items()
        }  # (B, length) or (B, length, ITEM_SLOTS)

    def _windows_cumsum(self, seq_len: int) -> Tensor:
        """Cumulative count of windows per game: (G,). A game of n frames has n - seq_len."""
        if seq_len not in self._window_cumsum:
            counts = (self.lengths - seq_len).clamp(min=0)
            if int(counts.sum()) == 0:
                raise ValueError(
                    f"dataset folder {self.data_dir}: no game has the {seq_len + 1} frames a "
                    f"window of seq_len={seq_len} needs (longest: {int(self.lengths.max())})"
                )
            self._window_cumsum[seq_len] = counts.cumsum(0)
        return self._window_cumsum[seq_len]

    def batch(
        self, step: int, batch_size: int, seq_len: int, seed: int = 0
    ) -> tuple[Frames, dict[str, Tensor]]:
        """B random windows of seq_len + 1 frames, a pure function of (seed, step).

        Every window of every game is equally likely (so a game is picked in proportion to its
        number of windows, and the start is uniform within it). Returns frames, (B, seq_len + 1)
        or (B, seq_len + 1, ITEM_SLOTS), and the masks (module docstring).
        """
        assert seq_len >= 1 and batch_size >= 1, (seq_len, batch_size)
        cumsum = self._windows_cumsum(seq_len)
        generator = torch.Generator().manual_seed(_seed_of(seed, step))
        window = torch.randint(int(cumsum[-1]), (batch_size,), generator=generator)  # (B,)
        game = torch.searchsorted(cumsum, window, right=True)  # (B,)
        start = window - (cumsum[game] - (self.lengths[game] - seq_len))  # within the game
        return self._gather(self.starts[game] + start, seq_len + 1), self._masks(game)

    def windows(
        self, seq_len: int, batch_size: int = 1
    ) -> Iterator[tuple[Frames, dict[str, Tensor]]]:
        """Every non-overlapping window of seq_len + 1 frames of every game, in game order and
        then frame order (a game's tail shorter than a window is left out), batch_size at a
        time (the last batch may be smaller). Same masks as `batch`."""
        starts, games = [], []
        for g, game in enumerate(self.games):
            first = torch.arange(0, len(game) - seq_len, seq_len + 1)
            starts.append(int(self.starts[g]) + first)
            games.append(torch.full_like(first, g))
        first, game = torch.cat(starts), torch.cat(games)
        for i in range(0, len(first), batch_size):
            sl = slice(i, i + batch_size)
            yield self._gather(first[sl], seq_len + 1), self._masks(game[sl])


def _seed_of(seed: int, step: int) -> int:
    # A hash, not seed + step: nearby (seed, step) pairs must not share streams.
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _listed(values: set[int] | None) -> str:
    return "any" if values is None else str(sorted(values))
