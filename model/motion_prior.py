"""The motion prior: how each character's own speeds change, frame by frame, in each action, as
the real games show it. A conditioned model's speed heads predict the change relative to it.

Melee moves a character by its action's script: Fox's forward roll starts at 3.06 units a
frame and slows by about 0.19 a frame, Falco's dash starts at his own initial dash speed, a
jump's first frame sets the character's jump speed and gravity then takes its own amount off
every frame. A speed head that learns these from data sees them as rare, per-character jumps
in a quantity that is otherwise smooth, and its L1 loss pulls it to what most characters do on
that frame: on a roll's first frame, across characters, the median change is 0 (some start
moving on frame 6), so the model's rolls did not move at all. The prior holds, per
(character, action, frames into the action), the median change of each own speed over the
training games; the heads add it to their output and learn only what it misses (a held
stick's drift, the speed an earlier action left).

Changes along x point where the character faces (the facing of the frame predicted), so that
one cell serves both sides and mirrored games agree. Some actions turn the character on a
frame of their script (a forward roll, on its 20th frame): each cell also holds the share of
its frames on which the facing turned, which takes the place of the facing's copy prior there
(heads.py), since a speed prior that points the new way needs the turn on the right frame.

Cells with fewer than MIN_SAMPLES frames stay at 0: the network alone decides there. Ages at or
past PRIOR_AGES - 1 share the last cell (a long fall's or a long wait's steady state).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from core import game_state as gs

# The own speeds the prior covers (the knockback speeds follow a hit, not the action's script).
PRIOR_FIELDS = ("vel_self_x_air", "vel_self_y", "vel_self_x_ground")
X_FIELDS = (True, False, True)  # whose sign is a direction along x
PRIOR_AGES = 32  # a roll, a spot dodge, a jump's rise: the scripted parts end within it
# Internal ids 0-26, the playable characters with Popo and Nana; the rest (Master Hand, the
# wireframes, Giga Bowser, Sandbag) share the last row, which no replay of a real game fills.
PRIOR_CHARACTERS = 27
MIN_SAMPLES = 8
TURN = len(PRIOR_FIELDS)  # the cell's last entry: the share of its frames that turned
# A jump's speed is the full hop's if the jump input was still held on the last frame of the
# jump squat, else the short hop's (Fox 3.68 or 2.10, in every one of 9,477 real jumps): the
# cells are split by whether X, Y or the stick up (tap jump) was held on the frame before.
JUMP_BUTTONS = 0x400 | 0x800  # X, Y in the processed button mask (core.game_state)
TAP_JUMP_Y = 0.6


class MotionPrior(nn.Module):
    """A (character, action, age, jump held) table of the median change of each PRIOR_FIELDS
    speed and of the share of frames that turned the character. It is data, not weights:
    `fill` sets it from a dataset's frames (training does, at the start of a run), the
    checkpoint keeps it, and the optimizer never sees it (a buffer)."""

    def __init__(self):
        super().__init__()
        shape = (PRIOR_CHARACTERS, gs.ACTION_VOCAB, PRIOR_AGES, 2, TURN + 1)
        # fp16 keeps the checkpoint small (8 MB); the changes are within +-20 units.
        self.register_buffer("table", torch.zeros(shape, dtype=torch.float16))
        self.register_buffer("x_fields", torch.tensor(X_FIELDS), persistent=False)

    def forward(self, character: Tensor, action: Tensor, age: Tensor, held: Tensor) -> Tensor:
        """Character and action ids, action ages and whether a jump input was held on the
        frame before (`jump_held`), each (*lead, 2) -> their cells (*lead, 2, TURN + 1),
        float32: read them with `speed_changes` and `turn_share`."""
        return self.table[
            character.clamp(0, PRIOR_CHARACTERS - 1),
            action.clamp(0, gs.ACTION_VOCAB - 1),
            age.clamp(0, PRIOR_AGES - 1),
            held.long(),
        ].float()

    def speed_changes(self, cell: Tensor, facing: Tensor) -> Tensor:
        """The change of each PRIOR_FIELDS speed in game units (*lead, 2, fields), the x ones
        turned to `facing` (+-1, (*lead, 2))."""
        sign = torch.where(self.x_fields, facing.unsqueeze(-1).to(cell.dtype), 1.0)
        return cell[..., :TURN] * sign

    @staticmethod
    def turn_share(cell: Tensor) -> Tensor:
        """The share of the cell's frames on which the character turned, (*lead, 2)."""
        return cell[..., TURN]

    @torch.no_grad()
    def fill(
        self, columns: dict[str, Tensor], starts: Tensor, recorded: Tensor | None = None
    ) -> int:
        """Set the table from games' frames: `columns` holds every game's frames one after
        another ((frames,) per column: the players' character, action, state_age as the rules
        count it, facing, buttons, joystick_y and PRIOR_FIELDS speeds), `starts` (games + 1,)
        where each game begins; `recorded` (games,) bool: the games whose replays recorded
        the speeds (the others' are imputed from positions; they are left out). Returns the
        number of cells set."""
        numpy_columns = {k: columns[k].numpy() for k in _needed()}
        keep = None if recorded is None else recorded.numpy()
        table = mine_motion_prior(numpy_columns, starts.numpy(), keep)
        self.table.copy_(torch.from_numpy(table))
        return int(np.count_nonzero(np.abs(table.astype(np.float32)).sum(-1)))


def jump_held(buttons: Tensor, joystick_y: Tensor) -> Tensor:
    """Whether X, Y or the stick up (tap jump) is held, from a frame's controller columns."""
    return ((buttons.long() & JUMP_BUTTONS) != 0) | (joystick_y > TAP_JUMP_Y)


def _needed() -> list[str]:
    per_player = (
        "character",
        "action",
        "state_age",
        "facing",
        "buttons",
        "joystick_y",
        *PRIOR_FIELDS,
    )
    return [f"{p}_{name}" for p in gs.PLAYERS for name in per_player]


def mine_motion_prior(
    columns: dict[str, np.ndarray], starts: np.ndarray, games: np.ndarray | None = None
) -> np.ndarray:
    """The table `MotionPrior.fill` sets, from numpy columns (see there): per (character,
    action, min(age, PRIOR_AGES - 1), jump held on the frame before), the median of each
    speed's change from the frame before (x changes times the frame's facing) and the share of
    frames whose facing differs from the frame before's, over frames that have a frame before
    in the same game, in the games `games` (bool per game) keeps. A cell with fewer than
    MIN_SAMPLES frames takes its (character, action, age)'s, held or not, if that has enough.
    float16, (PRIOR_CHARACTERS, actions, PRIOR_AGES, 2, TURN + 1)."""
    total = int(starts[-1])
    has_before = np.ones(total, dtype=bool)
    has_before[starts[:-1]] = False  # a game's first frame
    if games is not None:
        has_before &= np.repeat(games, np.diff(starts))
    keys, changes = [], []
    for p in gs.PLAYERS:
        character = columns[f"{p}_character"].astype(np.int64)
        action = columns[f"{p}_action"].astype(np.int64)
        age = np.minimum(columns[f"{p}_state_age"].astype(np.int64), PRIOR_AGES - 1)
        held = np.zeros(total, dtype=np.int64)
        buttons = torch.from_numpy(columns[f"{p}_buttons"].astype(np.int64))
        stick_y = torch.from_numpy(columns[f"{p}_joystick_y"].astype(np.float32))
        held[1:] = jump_held(buttons, stick_y).numpy()[:-1]
        known = (
            has_before
            & (character >= 0)
            & (character < PRIOR_CHARACTERS)
            & (action >= 0)
            & (action < gs.ACTION_VOCAB)
            & (age >= 0)
        )
        facing = np.where(columns[f"{p}_facing"] > 0, 1.0, -1.0)
        change = np.zeros((total, TURN + 1), dtype=np.float32)
        change[1:, TURN] = facing[1:] != facing[:-1]
        for i, (name, along_x) in enumerate(zip(PRIOR_FIELDS, X_FIELDS, strict=True)):
            speed = columns[f"{p}_{name}"].astype(np.float32)
            change[1:, i] = speed[1:] - speed[:-1]
            if along_x:
                change[:, i] *= facing
        cell = (character * gs.ACTION_VOCAB + action) * PRIOR_AGES + age
        keys.append((cell * 2 + held)[known])
        changes.append(change[known])
    key, change = np.concatenate(keys), np.concatenate(changes)
    cells = PRIOR_CHARACTERS * gs.ACTION_VOCAB * PRIOR_AGES
    split, split_enough = _cell_statistics(key, change, cells * 2)
    either, either_enough = _cell_statistics(key // 2, change, cells)
    fallback = ~split_enough & np.repeat(either_enough, 2)
    split[fallback] = np.repeat(either, 2, axis=0)[fallback]
    shape = (PRIOR_CHARACTERS, gs.ACTION_VOCAB, PRIOR_AGES, 2, TURN + 1)
    return split.reshape(shape).astype(np.float16)


def _cell_statistics(key: np.ndarray, change: np.ndarray, cells: int) -> tuple[np.ndarray, ...]:
    """Per cell id in [0, cells): the median of each speed change and the mean turn over the
    rows of that key, (cells, TURN + 1), 0 where a cell has fewer than MIN_SAMPLES rows; and
    which cells had enough, (cells,)."""
    table = np.zeros((cells, TURN + 1), dtype=np.float32)
    order = np.argsort(key, kind="stable")
    key, change = key[order], change[order]
    ids, counts = np.unique(key, return_counts=True)
    enough = counts >= MIN_SAMPLES
    kept = np.repeat(enough, counts)  # rows of the cells with enough samples, in key order
    ids, counts, change = ids[enough], counts[enough], change[kept]
    group = np.repeat(np.arange(len(ids)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    for i in range(TURN):
        # Sorted by cell, then value, each cell's middle value is its median.
        ranked = change[np.lexsort((change[:, i], group)), i]
        table[ids, i] = (ranked[first + (counts - 1) // 2] + ranked[first + counts // 2]) / 2
    table[ids, TURN] = np.add.reduceat(change[:, TURN], first) / counts
    has = np.zeros(cells, dtype=bool)
    has[ids] = True
    return table, has
