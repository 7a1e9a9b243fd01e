"""Recorded games as a stream of protocol `Frame`s, so the renderer that draws the model's
predictions also plays back real Melee (`.slp`) and recorded trajectories (parquet).

Both are read into the dataset's columns (docs/DATA.md: `frame`, `stage`, `p1_<field>`,
`p2_<field>`, `item_<field>` lists): a parquet trajectory as `playmodel parse` and `playmodel
match` write it, a `.slp` by the same reader the dataset is made with (`core.replay_reader`).
Each row becomes the message the server would send (`core.wire_frame.frame_message`), with
the KO, respawn and game-end events the rules would announce (`core.events`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import game_state as gs
from core.events import Event, recorded_events
from core.replay_reader import ReplaySkipped, ReplayUnreadable, read_replay
from core.wire_frame import frame_message
from server.protocol import Frame

DEFAULT_TIMER_FRAMES = 8 * 60 * 60  # Melee's versus default, 8:00 (the dataset keeps no timer)
# Columns a parquet file must have to be played back; any other is filled with its default.
NEEDED_COLUMNS = {"frame", "stage"} | {f"p1_{c}" for c in ("x", "y", "action", "stocks")}


@dataclass
class Recording:
    """One game in the dataset's columns: `columns[name]` is a numpy array over frames, the
    items dense ((frames, slots) arrays named `item_<field>`, as `gs.dense_items` makes them)."""

    source: str
    columns: dict[str, np.ndarray]
    timer_frames: int = DEFAULT_TIMER_FRAMES  # the clock runs out at this frame
    events: list[list[Event]] = field(init=False)  # per row

    def __post_init__(self) -> None:
        c = self.columns
        for p in gs.PLAYERS:
            c[f"{p}_state_age"] = count_state_age(c[f"{p}_action"], c[f"{p}_state_age"])
        self.events = recorded_events(
            c["frame"],
            [c[f"{p}_stocks"] for p in gs.PLAYERS],
            [c[f"{p}_action"] for p in gs.PLAYERS],
            [c[f"{p}_percent"] for p in gs.PLAYERS],
        )

    def __len__(self) -> int:
        return len(self.columns["frame"])

    @property
    def stage(self) -> int:
        return int(self.columns["stage"][0])

    @property
    def frame_ids(self) -> np.ndarray:
        return self.columns["frame"]

    @property
    def characters(self) -> list[int]:
        return [int(self.columns[f"{p}_character"][0]) for p in gs.PLAYERS]

    def frame(self, i: int) -> Frame:
        """Row i as the server would send it, with the events that happen on it."""
        return Frame.model_validate(frame_message(self.columns, i, self.events[i]))


def count_state_age(action: np.ndarray, recorded: np.ndarray) -> np.ndarray:
    """Frames since each action began, 0 on its first frame, as the server's rules count it
    and as the wire's `state_age` means (the dataset's loader counts the same on tensors,
    `model.frame_spec.count_state_age`): Slippi records the animation's frame instead (1 on
    the first frame of most actions, paused in hitlag). The first action counts on from the
    recorded value."""
    n = len(action)
    if n == 0:
        return np.asarray(recorded, dtype=np.float32)
    position = np.arange(n)
    change = np.ones(n, dtype=bool)
    change[1:] = action[1:] != action[:-1]
    run_start = np.maximum.accumulate(np.where(change, position, 0))
    age = (position - run_start).astype(np.float32)
    age[run_start == 0] += np.float32(recorded[0])
    return age


def load(path: str | Path) -> Recording:
    """A `.slp` replay or a parquet trajectory; ValueError naming the file if it is neither."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".slp":
        return _load_slp(path)
    if path.suffix == ".parquet":
        return _load_parquet(path)
    raise ValueError(f"{path}: expected a Slippi replay (.slp) or a parquet trajectory (.parquet)")


def _load_parquet(path: Path) -> Recording:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable parquet file: {e}") from None
    missing = NEEDED_COLUMNS - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not a trajectory in the dataset schema (lacks {missing})")
    return Recording(source=str(path), columns=_columns(table))


def _load_slp(path: Path) -> Recording:
    try:
        replay = read_replay(path, dataset_only=False)
    except ReplaySkipped as e:
        raise ValueError(f"{path}: {e}; the client shows games of two players") from None
    except (OSError, ValueError, ReplayUnreadable) as e:
        raise ValueError(f"{path}: not a readable Slippi replay: {e}") from None
    timer = replay.timer_seconds
    return Recording(
        source=str(path),
        columns=_columns(replay.table),
        timer_frames=timer * 60 if timer else DEFAULT_TIMER_FRAMES,
    )


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The table's frame and player columns as numpy (a column the file lacks: its field's
    default), and its items dense."""
    n, names = table.num_rows, set(table.column_names)
    columns = {}
    for f in gs.FRAME_FIELDS:
        columns[f.name] = table.column(f.name).to_numpy()
    for p in gs.PLAYERS:
        for f in gs.PLAYER_FIELDS + gs.CONTROLLER_FIELDS:
            name = gs.player_column(p, f)
            columns[name] = (
                table.column(name).to_numpy() if name in names else np.full(n, f.default, f.dtype)
            )
    if "item_slot" in names:
        items = gs.dense_items(table)
    else:
        items = {"exists": np.zeros((n, gs.ITEM_SLOTS), dtype=bool)}
        items |= {
            f.name: np.full((n, gs.ITEM_SLOTS), f.default, f.dtype)
            for f in gs.ITEM_FIELDS
            if f.name != "slot"
        }
    columns |= {f"item_{name}": values for name, values in items.items()}
    return columns
