"""Left/right mirror augmentation: a training window flipped about the stage's centre line.

The legal stages are symmetric about x = 0 and Melee's actions are relative to the way a
character faces (a forward roll is a forward roll either way), so a game seen in a mirror is
another real-looking game: positions, speeds and stick x change sign, facing flips, and a
player standing on the left platform now stands on the right one. Training on both halves
teaches the model that holding right does what holding left does, mirrored, instead of
learning each side from however many games happened to go that way.

Ground ids index a stage's collision lines, so they cannot simply change sign: the mirror of
a line is mined from the data (`ground_mirror_table`): the line whose grounded players stand,
on average, at the opposite x and the same height.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core import game_state as gs
from model.frames import Frames

# Columns whose sign flips in a mirror (player columns without their p1_/p2_ prefix).
NEGATED_PLAYER_COLUMNS = (
    "x",
    "vel_self_x_air",
    "vel_knockback_x",
    "vel_self_x_ground",
    "facing",
    "joystick_x",
    "cstick_x",
)
NEGATED_ITEM_COLUMNS = ("item_x", "item_vel_x")
# Processed-button bits that name a side (Slippi spec, pre-frame buttons): the d-pad's left
# and right, and the stick directions the game derives from the main stick and the c-stick.
SIDE_BIT_PAIRS = ((0x1, 0x2), (0x40000, 0x80000), (0x400000, 0x800000))
# Two lines mirror each other when their players' mean positions match within this many
# world units (the legal stages' platforms are 30+ units apart).
MIRROR_TOLERANCE = 6.0
MIN_GROUNDED_FRAMES = 50  # fewer frames on a line than this: too little to place it


def ground_mirror_table(columns: Frames) -> Tensor:
    """(STAGE_VOCAB, GROUND_VOCAB) long: the mirror of each ground class on each stage, from
    where grounded players stand in `columns` (a dataset's concatenated frames). A line
    without a clear mirror (no line that picks it back, or too few frames to place it) maps
    to itself."""
    table = torch.arange(gs.GROUND_VOCAB).repeat(gs.STAGE_VOCAB, 1)
    stage = columns["stage"].numpy()
    xs, ys, lines, stages = [], [], [], []
    for p in gs.PLAYERS:
        grounded = (columns[f"{p}_airborne"].numpy() == 0) & (
            columns[f"{p}_ground"].numpy() < gs.GROUND_VOCAB - 1
        )
        xs.append(columns[f"{p}_x"].numpy()[grounded])
        ys.append(columns[f"{p}_y"].numpy()[grounded])
        lines.append(columns[f"{p}_ground"].numpy()[grounded])
        stages.append(stage[grounded])
    x, y, line, st = (np.concatenate(a) for a in (xs, ys, lines, stages))
    for s in np.unique(st):
        on_stage = st == s
        ids, counts = np.unique(line[on_stage], return_counts=True)
        ids = ids[counts >= MIN_GROUNDED_FRAMES]
        if len(ids) == 0:
            continue
        centre = np.array(
            [[x[on_stage & (line == i)].mean(), y[on_stage & (line == i)].mean()] for i in ids]
        )  # (lines, 2)
        mirrored = centre * np.array([-1.0, 1.0])
        distance = np.linalg.norm(mirrored[:, None, :] - centre[None, :, :], axis=-1)
        nearest = distance.argmin(1)
        for a, b in enumerate(nearest):
            # Only pairs that pick each other: a line between two candidates keeps its id.
            if distance[a, b] <= MIRROR_TOLERANCE and nearest[b] == a:
                table[int(s), int(ids[a])] = int(ids[b])
    return table


def mirror_windows(frames: Frames, flip: Tensor, ground_table: Tensor) -> Frames:
    """`frames` (B, L, ...) with the windows where `flip` (B,) is True mirrored left to right
    (see the module docstring); the others are returned as they are. New tensors throughout."""
    out = dict(frames)
    lead = flip.view(-1, 1)  # (B, 1): broadcasts over the window's frames
    for p in gs.PLAYERS:
        for name in NEGATED_PLAYER_COLUMNS:
            key = f"{p}_{name}"
            out[key] = torch.where(lead, -frames[key], frames[key])
        ground = frames[f"{p}_ground"]
        classes = ground.clamp(0, gs.GROUND_VOCAB - 1)
        mirrored = ground_table[frames["stage"].long().clamp(0, gs.STAGE_VOCAB - 1), classes]
        mirrored = torch.where(ground >= gs.GROUND_VOCAB - 1, ground, mirrored.to(ground.dtype))
        out[f"{p}_ground"] = torch.where(lead, mirrored, ground)
        buttons = frames[f"{p}_buttons"]
        out[f"{p}_buttons"] = torch.where(lead, _swap_side_bits(buttons), buttons)
    for key in NEGATED_ITEM_COLUMNS:
        out[key] = torch.where(flip.view(-1, 1, 1), -frames[key], frames[key])
    return out


def _swap_side_bits(buttons: Tensor) -> Tensor:
    swapped = buttons.clone()
    for left, right in SIDE_BIT_PAIRS:
        has_left, has_right = (buttons & left) != 0, (buttons & right) != 0
        swapped = swapped & ~(left | right)
        swapped = swapped | torch.where(has_left, right, 0) | torch.where(has_right, left, 0)
    return swapped
