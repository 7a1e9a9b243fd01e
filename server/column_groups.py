"""A batch of frames copied off the device once per tick, grouped by column dtype and shape.

A tick's frames go to several places (the frame message of each session, the recordings, the
matches' logs). Field by field that was about 150 assignments per game per place: at 16
sessions, milliseconds of every tick. Grouped, a game's frame is one array per group
(`GroupedRow`), written with one assignment per group.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from model.frames import Frames
from model.packed_frame import PackedFrame


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
