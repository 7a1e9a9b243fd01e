"""A match's frames while it plays, held compactly: one growing numpy array per column group
(`column_groups.Layout`: the fields of one dtype and shape), about 1 KB a frame for the 75 fields of
the game state.

Kept as they came, a chunk of frames is a dict of one tensor per field, and a tensor costs
about 550 bytes of its own besides its numbers. Between live ticks a match advances a frame or
two at a time, so its chunks were a frame or two long: 41 KB a frame, 40 times the frame's
1,051 bytes (64 short matches took the server to 1.9 GB).

A match appends each frame as it is made, as a row of the step's `column_groups.BatchCopy` (one
copy per column group, no tensor per field), and keeps its log, trimmed to what it holds, once
it has finished.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from model.frames import Frames
from server.column_groups import GroupedRow, Layout

FIRST_CAPACITY = 256  # frames; the arrays double from there up to the game's limit


class FrameLog:
    """Frames appended in order, `(n, ...)` per field at a time; `frames()` gives them back
    as one tensor per field. `limit` (the most frames the game can have) caps the growth, so
    the memory reserved for a match is never more than its frames need."""

    def __init__(self, limit: int):
        self.limit = limit
        self.layout: Layout | None = None
        self.arrays: list[np.ndarray] = []  # per group: (capacity, fields, *shape)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays)

    def extend(self, frames: Mapping[str, Tensor]) -> None:
        if self.layout is None:
            self.layout = Layout.of(frames, leading=1)
        groups = [
            torch.stack([frames[name] for name in names], 1).cpu().numpy()  # (n, fields, ...)
            for _, names in self.layout.groups
        ]
        self._put(groups)

    def append(self, row: GroupedRow) -> None:
        """One frame: a row of a `column_groups.BatchCopy` (one assignment per column group)."""
        if self.layout is None:
            self.layout = row.layout
        assert row.layout.signature == self.layout.signature, "a frame of other columns"
        self._put([group[None] for group in row.groups])  # (1, fields, ...)

    def trim(self) -> None:
        """Give back the room reserved for frames that will not come (a finished game)."""
        if self.arrays and len(self.arrays[0]) > self.count:
            self.arrays = [array[: self.count].copy() for array in self.arrays]

    def _put(self, groups: list[np.ndarray]) -> None:
        n = len(groups[0])
        assert self.count + n <= self.limit, f"{self.count + n} frames, limit {self.limit}"
        if not self.arrays:
            capacity = min(self.limit, max(FIRST_CAPACITY, n))
            self.arrays = [np.empty((capacity, *g.shape[1:]), g.dtype) for g in groups]
        capacity = len(self.arrays[0])
        if self.count + n > capacity:
            capacity = min(self.limit, max(2 * capacity, self.count + n))
            grown = []
            for array in self.arrays:
                bigger = np.empty((capacity, *array.shape[1:]), array.dtype)
                bigger[: self.count] = array[: self.count]
                grown.append(bigger)
            self.arrays = grown
        for array, group in zip(self.arrays, groups, strict=True):
            array[self.count : self.count + n] = group
        self.count += n

    def frames(self) -> Frames:
        """Every frame so far: one (count, ...) tensor per field."""
        assert self.layout is not None, "no frames yet"
        out: Frames = {}
        for (_, names), array in zip(self.layout.groups, self.arrays, strict=True):
            for j, name in enumerate(names):
                out[name] = torch.from_numpy(np.ascontiguousarray(array[: self.count, j]))
        return out
