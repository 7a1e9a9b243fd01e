"""Cutting a training window into what the model reads and what it predicts: the previous
frames, the next frame's controllers, the target frames, and the target's action choices that
an action-conditioned model's heads are taught with."""

from __future__ import annotations

import torch
from torch import Tensor

from core import game_state as gs
from model.frames import Frames, controls_of


def teacher_choices(target: Frames) -> Tensor:
    """Both players' action ids and facings in the predicted frames, (B, T, 2, 2) or (B, 2, 2):
    what an action-conditioned model's heads are conditioned on in training (model.heads)."""
    return torch.stack(
        [
            torch.stack([target[f"{p}_action"], target[f"{p}_facing"].long()], -1)
            for p in gs.PLAYERS
        ],
        -2,
    )


def split_window(frames: dict[str, torch.Tensor]):
    """(B, L+1) windows -> prev (frames 0..L-1), controls and targets (frames 1..L)."""
    prev = {k: v[:, :-1] for k, v in frames.items()}
    target = {k: v[:, 1:] for k, v in frames.items()}
    return prev, controls_of(target), target
