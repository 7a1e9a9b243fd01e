"""Frames as tensors: from a game's parquet table to the dict the model reads, and slicing.

A frame dict maps dataset column names to tensors in game units: one value per frame for player
and frame columns, (frames, ITEM_SLOTS) for the dense item columns (`item_exists`, `item_type`,
...). Floats are float32, `item_exists` bool, everything else int64 (ids the model embeds).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from core import game_state as gs
from model import frame_spec as fs
from model.packed_frame import PackedFrame

Frames = dict[str, Tensor]


def player_columns(frame: Mapping[str, Tensor], names) -> Tensor:
    """Both players' `<player>_<name>` columns stacked into (*lead, 2, len(names)), so that
    a field of both players goes through one op (the encoder, decoding)."""
    keys = [f"{p}_{n}" for p in gs.PLAYERS for n in names]
    return stacked_columns(frame, keys).unflatten(-1, (len(gs.PLAYERS), len(names)))


def stacked_columns(frame: Mapping[str, Tensor], keys: list[str]) -> Tensor:
    """The fields `keys` stacked along a new last axis, (*field shape, len(keys)), as
    `torch.stack` would (mixed dtypes promoted).

    From a `PackedFrame` they are gathered from its groups, one `index_select` per group,
    rather than stacked one field at a time: in the live step's trace, a stack of 38 fields
    is 38 row views, 38 unsqueezes and a cat, and the step's time is mostly such per-op
    overhead (BENCHMARKS.md, "Live step latency")."""
    if isinstance(frame, PackedFrame) and not frame.replaced:
        return _gathered(frame, keys)
    return torch.stack([frame[key] for key in keys], -1)


def _gathered(frame: PackedFrame, keys: list[str]) -> Tensor:
    where = [frame.position(key) for key in keys]
    groups = list(dict.fromkeys(g for g, _ in where))
    dtype = functools.reduce(torch.promote_types, [frame.packed[g].dtype for g in groups])
    parts, order = [], []
    for g in groups:
        rows = [i for group, i in where if group == g]
        block = frame.packed[g]
        parts.append(block.index_select(0, _index(block.device, tuple(rows))).to(dtype))
        order += [k for k, (group, _) in enumerate(where) if group == g]
    gathered = parts[0] if len(parts) == 1 else torch.cat(parts)
    if order != sorted(order):  # back to the order of `keys`
        gathered = gathered.index_select(0, _index(gathered.device, _inverse(order)))
    return gathered.movedim(0, -1)


def _inverse(order: list[int]) -> tuple[int, ...]:
    inverse = [0] * len(order)
    for position, k in enumerate(order):
        inverse[k] = position
    return tuple(inverse)


@functools.lru_cache(maxsize=256)
def _index(device: torch.device, rows: tuple[int, ...]) -> Tensor:
    # Made outside inference mode: a trace keeps it as a constant, and eager autograd code
    # may save it for a backward pass, which an inference tensor cannot be.
    with torch.inference_mode(False):
        return torch.tensor(rows, dtype=torch.long, device=device)


def frames_from_table(table: pa.Table) -> Frames:
    """All frames of one game: (T,) per scalar column, (T, ITEM_SLOTS) per item column."""
    frames: Frames = {}
    for field in gs.FRAME_FIELDS:
        frames[field.name] = _tensor(table.column(field.name).to_numpy())
    for p in gs.PLAYERS:
        for field in gs.PLAYER_FIELDS + gs.CONTROLLER_FIELDS:
            column = table.column(gs.player_column(p, field)).to_numpy()
            frames[gs.player_column(p, field)] = _tensor(column)
    for name, dense in gs.dense_items(table).items():
        frames[f"item_{name}"] = _tensor(dense)
    return frames


def _tensor(values: np.ndarray) -> Tensor:
    # A copy: Arrow's buffers are read-only, and callers may write into the frames.
    dtype = {"f": np.float32, "b": np.bool_}.get(values.dtype.kind, np.int64)
    return torch.from_numpy(np.array(values, dtype=dtype, order="C"))


def cast_to(frames: Frames, dtypes: Mapping[str, torch.dtype]) -> Frames:
    """Every field with an entry in `dtypes` in that dtype (decode and the rules work in
    float32 and int64; a simulation's frames keep the dtypes they started with)."""
    return {
        k: v if k not in dtypes or v.dtype == (t := dtypes[k]) else v.to(t)
        for k, v in frames.items()
    }


def index(frames: Frames, i) -> Frames:
    """Select along the leading frame (or batch) axis: an int, a slice or an index tensor."""
    return {k: v[i] for k, v in frames.items()}


def stack(frame_list: list[Frames], dim: int = 0) -> Frames:
    return {k: torch.stack([f[k] for f in frame_list], dim) for k in frame_list[0]}


def controls_of(frames: Frames) -> Frames:
    """Only the controller columns (the model's external inputs)."""
    keys = [f"{p}_{n}" for p in gs.PLAYERS for n in fs.EXTERNAL_FIELDS]
    return {k: frames[k] for k in keys}


def model_inputs(frames: Frames) -> tuple[Frames, Frames, Frames]:
    """(prev, controls, target) for teacher forcing over the frames of one game (frame axis
    first): position t reads frame t-1 and the controls of frame t, and predicts frame t."""
    prev = {k: v[:-1] for k, v in frames.items()}
    target = {k: v[1:] for k, v in frames.items()}
    return prev, controls_of(target), target


def table_from_frames(frames: Frames, metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """Frames of one game (frame axis first) -> a table in the dataset schema, so that a
    simulated game can be evaluated and replayed like an ingested one."""
    columns = {}
    for field in gs.FRAME_FIELDS:
        columns[field.name] = frames[field.name].cpu().numpy().astype(field.dtype)
    for p in gs.PLAYERS:
        for field in gs.PLAYER_FIELDS + gs.CONTROLLER_FIELDS:
            name = gs.player_column(p, field)
            values = frames[name].cpu().numpy()
            if np.dtype(field.dtype).kind in "iu":
                values = np.rint(values)
            columns[name] = values.astype(field.dtype)
    exists = frames["item_exists"].cpu().numpy().astype(bool)
    rows, slots = np.nonzero(exists)  # row-major: by frame, then slot
    offsets = pa.array(np.searchsorted(rows, np.arange(len(exists) + 1)).astype(np.int32))
    for field in gs.ITEM_FIELDS:
        if field.name == "slot":
            values = slots
        else:
            values = frames[f"item_{field.name}"].cpu().numpy()[rows, slots]
        values = pa.array(np.asarray(values).astype(field.dtype), type=field.arrow_type)
        columns[gs.item_column(field)] = pa.ListArray.from_arrays(offsets, values)
    schema = gs.arrow_schema(metadata)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def read_replay_frames(path: str | Path) -> Frames:
    """A `.slp` replay or a parquet trajectory (dataset schema, checked: ValueError naming
    the column that differs) as frames, `state_age` counted as the model reads it
    (`frame_spec.count_state_age`)."""
    path = Path(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        gs.check_table(table)  # a column of another dtype would change the frames' dtypes
        frames = frames_from_table(table)
    else:
        from core.replay_reader import read_replay

        frames = frames_from_table(read_replay(path).table)
    fs.count_state_age(frames)
    return frames
