"""Frames as the wire protocol sends them: a batch of simulated frames to `frame` messages.

The tick loop converts the whole batch to Python lists once (`batch_columns`) and then builds
each session's message from its row, so the per-session cost is a few dict lookups and one
msgpack call, not a tensor operation per field. The message itself is built by
`core.wire_frame.frame_message`, which the client's replays share.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from core.wire_frame import WIRE_COLUMNS
from model.packed_frame import PackedFrame


def batch_columns(frames: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, list]:
    """The fields the wire needs, as Python lists (one row per game, or per frame), from
    tensors or numpy arrays (a packed frame: a group of fields at a time)."""
    if isinstance(frames, PackedFrame):
        return frames.lists(WIRE_COLUMNS)
    return {key: frames[key].tolist() for key in WIRE_COLUMNS}
