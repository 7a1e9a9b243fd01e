"""PackedFrame: a batch of frames held as a few stacked tensors, one per group of fields.

The live step's trace takes and returns frames packed (`model.traced_step`): a hundred
separate tensors crossing between torch and Python cost a hundred trips through the GIL, which
a server's device thread waits for while the event loop holds it. A `PackedFrame` is what the
trace returns, and reads like the usual dict of (B,)-tensors: a field is a view of its group,
made the first time it is read, so a tick that only feeds the frame back to the model and
sends a few columns to the players makes no per-field tensors at all (`lists` reads columns
as Python lists, a group at a time). Changing a field in place changes the packing too (it is
a view); assigning a field replaces it, and marks the frame `replaced`, so the trace packs it
again rather than reuse the stale packing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping

import torch
from torch import Tensor

Layout = list[list[str]]
"""A frame's fields in groups of one dtype and number of dimensions, in field order."""


def layout_of(frame: MutableMapping[str, Tensor] | dict[str, Tensor]) -> Layout:
    groups: dict[tuple, list[str]] = {}
    for key, value in frame.items():
        # Not the shape: while tracing, sizes are traced values, never equal as keys.
        groups.setdefault((value.dtype, value.dim()), []).append(key)
    return list(groups.values())


def pack(frame, layout: Layout) -> list[Tensor]:
    """One stacked tensor per group: (fields, B, ...). A PackedFrame of this layout (a
    trace's own output fed back, or controls built packed) that was not replaced since is its
    own packing already."""
    packed_already = isinstance(frame, PackedFrame) and not frame.replaced
    if packed_already and (frame.layout is layout or frame.layout == layout):
        return frame.packed
    return [torch.stack([frame[key] for key in keys]) for keys in layout]


class PackedFrame(MutableMapping):
    def __init__(self, packed: list[Tensor], layout: Layout, order: list[str] | None = None):
        """`packed[g]` stacks the fields `layout[g]`; `order`: the fields' order when iterated
        (default: the layout's)."""
        self.packed = packed
        self.layout = layout
        self._where = {key: (g, i) for g, keys in enumerate(layout) for i, key in enumerate(keys)}
        self._order = list(order) if order is not None else [k for keys in layout for k in keys]
        self._fields: dict[str, Tensor] = {}
        self.replaced = False  # a field was assigned or deleted: the packing is stale

    def __getitem__(self, key: str) -> Tensor:
        field = self._fields.get(key)
        if field is None:
            g, i = self._where[key]  # KeyError for a field the frame does not have
            field = self._fields[key] = self.packed[g][i]
        return field

    def __setitem__(self, key: str, value: Tensor) -> None:
        if key not in self._where and key not in self._fields:
            self._order.append(key)
        self._fields[key] = value
        self.replaced = True

    def __delitem__(self, key: str) -> None:
        self[key]
        self._fields.pop(key, None)
        self._where.pop(key, None)
        self._order.remove(key)
        self.replaced = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._where or key in self._fields

    def lists(self, keys: Iterable[str]) -> dict[str, list]:
        """Fields as Python lists (one item per game), each group converted once."""
        converted: dict[int, list] = {}
        out = {}
        for key in keys:
            if self.replaced and key in self._fields:
                out[key] = self._fields[key].tolist()
                continue
            g, i = self._where[key]
            if g not in converted:
                converted[g] = self.packed[g].tolist()
            out[key] = converted[g][i]
        return out

    def position(self, key: str) -> tuple[int, int]:
        """(group, index in the group) of a packed field."""
        return self._where[key]

    def field_types(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(field, dtype, item shape) of every field, read from the packing, without a
        tensor per field; for a frame not `replaced`."""
        assert not self.replaced, "a replaced field's type is its own tensor's"
        return [
            (key, self.packed[g].dtype, tuple(self.packed[g].shape[2:]))
            for key, (g, _) in self._where.items()
        ]
