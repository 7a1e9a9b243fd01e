"""Snapshots: one game's full state (model cache, last frame, rule state, sampling
generator), copied out of a `Simulation`'s batch and written back into it.

A server snapshots every game for rollbacks that rarely come, and resets or resumes many
games in one tick, so the copies are made for many games at once: one copy per batch tensor,
and a packed batch frame (the live step's, `model.packed_frame`) a group of fields at a time
(a hundred small copies per game were most of a tick). Each snapshot's tensors are views of
those copies, made when first read (`_RowTensors`).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

import torch
from torch import Tensor

from model.frames import Frames
from model.game_start import GameSetup
from model.packed_frame import Layout, PackedFrame
from model.rule_state import RuleState
from model.world_model import WorldModelCache


@dataclass
class Snapshot:
    """One game's full state: model cache, last frame, rule state, sampling generator.
    `tensors` maps "cache.*", "frame.*" and "rules.*" names to the game's tensors; treat them
    as read-only (a restore may keep them packed for the next restore: replace an entry
    rather than change a tensor in place)."""

    tensors: MutableMapping[str, Tensor]
    generator_state: Tensor
    setup: GameSetup

    @property
    def nbytes(self) -> int:
        sizes = [t.numel() * t.element_size() for t in self.tensors.values()]
        return sum(sizes) + self.generator_state.numel()

    def names(self) -> list[str]:
        """The names of `tensors`, read without making them (see `_RowTensors`)."""
        if isinstance(self.tensors, _RowTensors):
            return self.tensors.names()
        return list(self.tensors)

    def tensor(self, name: str) -> Tensor:
        """One of `tensors`, read without making the others (see `_RowTensors`)."""
        if isinstance(self.tensors, _RowTensors):
            return self.tensors.one(name)
        return self.tensors[name]

    def frame_groups(self, layout: Layout) -> list[Tensor]:
        """The frame packed in `layout`, (fields, ...) per group: views of the copy the
        snapshot was taken as, or stacked once and kept (a session's start snapshot is
        restored at every reset)."""
        if isinstance(self.tensors, _RowTensors):
            groups = self.tensors.frame_groups(layout)
            if groups is not None:
                return groups
        names = [f"frame.{k}" for keys in layout for k in keys]
        key = (id(layout), tuple(id(self.tensors[n]) for n in names))
        kept = getattr(self, "_kept_frame_groups", None)
        if kept is None or kept[0] != key:
            groups = [torch.stack([self.tensors[f"frame.{k}"] for k in keys]) for keys in layout]
            kept = (key, layout, groups)  # the layout held, so that its id stays its own
            self._kept_frame_groups = kept
        return kept[2]


class _BatchRows:
    """Several games' rows, copied out of a batch together by `Simulation.snapshots`:
    (games, ...) per named tensor, and a packed frame's groups as (fields, games, ...)."""

    def __init__(
        self, tensors: dict[str, Tensor], groups: list[Tensor], layout: Layout | None
    ) -> None:
        self.tensors, self.groups, self.layout = tensors, groups, layout


class _RowTensors(MutableMapping):
    """A snapshot's tensors as views of its game's row in a `_BatchRows`, made when first
    read: most snapshots (kept for a rollback that rarely comes) are never read, and a
    hundred views per game were most of a server tick that snapshots every game at once."""

    def __init__(self, rows: _BatchRows, index: int):
        self._rows, self._index = rows, index
        self._dict: dict[str, Tensor] | None = None
        self._changed = False

    def _made(self) -> dict[str, Tensor]:
        if self._dict is None:
            i = self._index
            made = {name: t[i] for name, t in self._rows.tensors.items()}
            if self._rows.layout is not None:
                for group, keys in zip(self._rows.groups, self._rows.layout, strict=True):
                    made |= zip([f"frame.{k}" for k in keys], group[:, i].unbind(0), strict=True)
            self._dict = made
        return self._dict

    def names(self) -> list[str]:
        if self._dict is not None:
            return list(self._dict)
        frame = [f"frame.{k}" for keys in self._rows.layout or [] for k in keys]
        return [*self._rows.tensors, *frame]

    def one(self, name: str) -> Tensor:
        if self._dict is None and name in self._rows.tensors:
            return self._rows.tensors[name][self._index]
        return self._made()[name]

    def frame_groups(self, layout: Layout) -> list[Tensor] | None:
        rows = self._rows
        if self._changed or rows.layout is None:
            return None
        if rows.layout is not layout and rows.layout != layout:
            return None
        return [group[:, self._index] for group in rows.groups]

    def __getitem__(self, name: str) -> Tensor:
        return self._made()[name]

    def __setitem__(self, name: str, value: Tensor) -> None:
        self._made()[name] = value
        self._changed = True

    def __delitem__(self, name: str) -> None:
        del self._made()[name]
        self._changed = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._made())

    def __len__(self) -> int:
        return len(self._made())


def take_snapshots(
    cache: WorldModelCache,
    rules: RuleState,
    frame: Frames,
    rows: Tensor,
    generators: list[torch.Generator],
    setups: list[GameSetup],
) -> list[Snapshot]:
    """Snapshots of the batch rows `rows` (one a game, with its generator and setup), copied
    out together: one copy per tensor or packed group for all of them (each snapshot's
    tensors are views of these, made when first read)."""
    tensors: dict[str, Tensor] = {}
    for k, v in cache.tensors().items():
        tensors[f"cache.{k}"] = v.index_select(0, rows)
    for k, v in rules.tensors().items():
        tensors[f"rules.{k}"] = v.index_select(0, rows)
    if isinstance(frame, PackedFrame) and not frame.replaced:
        copied = _BatchRows(tensors, [g.index_select(1, rows) for g in frame.packed], frame.layout)
    else:
        tensors |= {f"frame.{k}": v.index_select(0, rows) for k, v in frame.items()}
        copied = _BatchRows(tensors, [], None)
    return [
        Snapshot(_RowTensors(copied, i), generator.get_state(), setup)
        for i, (generator, setup) in enumerate(zip(generators, setups, strict=True))
    ]


def restore_rows(
    cache: WorldModelCache,
    rules: RuleState,
    frame: Frames,
    rows: Tensor,
    snapshots: list[Snapshot],
) -> None:
    """Write each snapshot's cache, rule state and frame into its batch row of `rows`, in
    place, the rows of all of them together (the generators are the caller's)."""
    names = [k for k in snapshots[0].names() if k.startswith("frame.")]
    packed = isinstance(frame, PackedFrame) and not frame.replaced
    if packed and len(names) == len(frame) and set(names) == {f"frame.{k}" for k in frame}:
        per_game = [s.frame_groups(frame.layout) for s in snapshots]
        for g, group in enumerate(frame.packed):
            values = torch.stack([groups[g] for groups in per_game], 1)
            group.index_copy_(1, rows, values.to(group.dtype))
    else:
        for name in names:
            field = frame[name.removeprefix("frame.")]
            field.index_copy_(0, rows, stack_tensor(snapshots, name).to(field.dtype))
    for prefix, tensors in (("cache.", cache.tensors()), ("rules.", rules.tensors())):
        for key, tensor in tensors.items():
            tensor.index_copy_(0, rows, stack_tensor(snapshots, prefix + key).to(tensor.dtype))


def stack_tensor(snapshots: list[Snapshot], name: str) -> Tensor:
    """The tensor `name` of every snapshot, stacked: (snapshots, ...). Read without making a
    lazy snapshot's other views."""
    return torch.stack([s.tensor(name) for s in snapshots])
