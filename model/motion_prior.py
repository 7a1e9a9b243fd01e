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

The change a speed takes also depends on the speed before it: a shield's frames slow a
character that dashed in (friction, 0.08 a frame against the motion) and leave a still one
still, and a jump's air friction only slows a drift there is. So each cell holds one change per
BUCKET of the speed before (backward or down, at rest, forward or up; x forward-signed like the
changes), and a change of friction's size against the motion stops at 0, as Melee's friction
does, instead of pushing the character the other way.

Cells with fewer than MIN_SAMPLES frames take the cell's frames of every bucket, then of both
jump halves, and with fewer still stay at 0: the network alone decides there. Ages at or past
PRIOR_AGES - 1 share the last cell (a long fall's or a long wait's steady state).

Most (character, action) pairs never occur (a character's specials are its own), so the table
keeps a row per pair that does, PRIOR_ROWS of them at most, and an index from the pair to its
row (row 0: the empty one).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn

from core import game_state as gs

log = logging.getLogger(__name__)

# The own speeds the prior covers (the knockback speeds follow a hit, not the action's script).
PRIOR_FIELDS = ("vel_self_x_air", "vel_self_y", "vel_self_x_ground")
X_FIELDS = (True, False, True)  # whose sign is a direction along x
PRIOR_AGES = 32  # a roll, a spot dodge, a jump's rise: the scripted parts end within it
# Internal ids 0-26, the playable characters with Popo and Nana; the rest (Master Hand, the
# wireframes, Giga Bowser, Sandbag) share the last row, which no replay of a real game fills.
PRIOR_CHARACTERS = 27
# (character, action) pairs with a row: the 799 training games of the corpus fill 1,506.
PRIOR_ROWS = 4096
MIN_SAMPLES = 8
# The speed before, per field: below -REST (backward, down), within +-REST, above +REST.
BUCKETS = 3
REST = 0.01
# A change against the motion no larger than this is friction's (Melee's ground frictions are
# 0.02-0.1 a frame, air frictions smaller): it slows the speed to 0 and no further.
FRICTION = 0.12
# A jump's speed is the full hop's if the jump input was still held on the last frame of the
# jump squat, else the short hop's (Fox 3.68 or 2.10, in every one of 9,477 real jumps): the
# cells are split by whether X, Y or the stick up (tap jump) was held on the frame before.
JUMP_BUTTONS = 0x400 | 0x800  # X, Y in the processed button mask (core.game_state)
TAP_JUMP_Y = 0.6
FIELDS = len(PRIOR_FIELDS)
Y = PRIOR_FIELDS.index("vel_self_y")
TURN = BUCKETS * FIELDS  # a looked-up cell's entry: the share of its frames that turned
TERMINAL = TURN + 1  # and its last: the character's terminal fall speed (0: not known)
# A fall speeds up by the character's gravity to its terminal speed and stops there; a fast
# fall holds a faster one. Both show in real games as falls whose speed stays put, in jumps
# and falls: Fox's at 3.4 (fast, 4,263 frames of the validation games) and 2.8 (1,182), Marth's
# at 2.5 and 2.2, in every character two such speeds, the slower the terminal one.
STEADY_FALL_ACTIONS = (25, 26, 29, 30, 31, 32, 33, 34)  # JUMP_F, JUMP_B, FALL*, FALL_AERIAL*
STEADY_FALL_MIN = 0.5  # units a frame: slower "steady" speeds are an apex, not a fall
MIN_STEADY = 20  # frames of a steady speed for it to count as one of the character's two


class MotionPrior(nn.Module):
    """Per (character, action, age, jump held), the median change of each PRIOR_FIELDS speed
    per bucket of the speed before, and the share of frames that turned the character. It is
    data, not weights: `fill` sets it from a dataset's frames (training does, at the start of a
    run), the checkpoint keeps it, and the optimizer never sees it (buffers)."""

    def __init__(self):
        super().__init__()
        self.register_buffer(
            "row_of", torch.zeros(PRIOR_CHARACTERS, gs.ACTION_VOCAB, dtype=torch.int32)
        )
        # fp16 keeps the checkpoint small (5 MB); the changes are within +-20 units.
        shape = (PRIOR_ROWS, PRIOR_AGES, 2, BUCKETS, FIELDS)
        self.register_buffer("speeds", torch.zeros(shape, dtype=torch.float16))
        self.register_buffer("turns", torch.zeros(shape[:3], dtype=torch.float16))
        self.register_buffer("terminal", torch.zeros(PRIOR_CHARACTERS))
        self.register_buffer("x_fields", torch.tensor(X_FIELDS), persistent=False)

    def forward(self, character: Tensor, action: Tensor, age: Tensor, held: Tensor) -> Tensor:
        """Character and action ids, action ages and whether a jump input was held on the
        frame before (`jump_held`), each (*lead, 2) -> their cells (*lead, 2, TERMINAL + 1),
        float32: read them with `speed_changes` and `turn_share`."""
        character = character.clamp(0, PRIOR_CHARACTERS - 1)
        row = self.row_of[character, action.clamp(0, gs.ACTION_VOCAB - 1)].long()
        index = (row, age.clamp(0, PRIOR_AGES - 1), held.long())
        speeds = self.speeds[index].flatten(-2).float()  # (*lead, 2, BUCKETS * FIELDS)
        turn = self.turns[index].float().unsqueeze(-1)
        return torch.cat([speeds, turn, self.terminal[character].unsqueeze(-1)], -1)

    def speed_changes(self, cell: Tensor, facing: Tensor, before: Tensor) -> Tensor:
        """The change of each PRIOR_FIELDS speed in game units (*lead, 2, fields), given the
        speeds of the frame before (*lead, 2, fields), the x ones turned to `facing` (+-1,
        (*lead, 2)): the bucket of each speed before picks its change, friction stops at 0,
        and a fall speeds up to the character's terminal speed and no further (one already
        faster, a fast fall, keeps its speed)."""
        sign = torch.where(self.x_fields, facing.unsqueeze(-1).to(cell.dtype), 1.0)
        forward = before.to(cell.dtype) * sign
        bucket = (forward > REST).long() - (forward < -REST).long() + 1
        changes = cell[..., :TURN].unflatten(-1, (BUCKETS, FIELDS))
        change = changes.gather(-2, bucket.unsqueeze(-2)).squeeze(-2)
        against = (change * forward < 0) & (change.abs() <= FRICTION) & self.x_fields
        change = torch.where(against, change.clamp(-forward.abs(), forward.abs()), change)
        terminal = cell[..., TERMINAL]
        room = torch.clamp(-terminal - forward[..., Y], max=0.0)  # down to the terminal speed
        falling = (terminal > 0) & (change[..., Y] < 0)
        fall = torch.where(falling, torch.maximum(change[..., Y], room), change[..., Y])
        change = torch.cat([change[..., :Y], fall.unsqueeze(-1), change[..., Y + 1 :]], -1)
        return change * sign

    @staticmethod
    def turn_share(cell: Tensor) -> Tensor:
        """The share of the cell's frames on which the character turned, (*lead, 2)."""
        return cell[..., TURN]

    def cells(self, character: int, action: int) -> tuple[Tensor, Tensor]:
        """One (character, action) pair's speed changes (ages, 2, BUCKETS, fields) and turn
        shares (ages, 2), float32: zeros where the pair has no row."""
        row = int(self.row_of[character, action])
        return self.speeds[row].float(), self.turns[row].float()

    @torch.no_grad()
    def fill(
        self, columns: dict[str, Tensor], starts: Tensor, recorded: Tensor | None = None
    ) -> int:
        """Set the table from games' frames: `columns` holds every game's frames one after
        another ((frames,) per column: the players' character, action, state_age as the rules
        count it, facing, buttons, joystick_y and PRIOR_FIELDS speeds), `starts` (games + 1,)
        where each game begins; `recorded` (games,) bool: the games whose replays recorded
        the speeds (the others' are imputed from positions; they are left out). Returns the
        number of (character, action, age) cells set."""
        numpy_columns = {k: columns[k].numpy() for k in _needed()}
        keep = None if recorded is None else recorded.numpy()
        terminal = terminal_speeds(numpy_columns, starts.numpy(), keep)
        dense_speeds, dense_turns = mine_motion_prior(numpy_columns, starts.numpy(), keep, terminal)
        self.set_dense(dense_speeds, dense_turns)
        self.terminal.copy_(torch.from_numpy(terminal))
        filled = np.abs(dense_speeds).sum((3, 4, 5)) + dense_turns.sum(-1)
        return int(np.count_nonzero(filled))

    @torch.no_grad()
    def set_dense(self, speeds: np.ndarray, turns: np.ndarray) -> None:
        """Keep the pairs of a dense table (characters, actions, ages, 2, BUCKETS, fields) and
        turns (characters, actions, ages, 2) with anything in them, as rows."""
        speeds = torch.as_tensor(np.asarray(speeds, dtype=np.float32))
        turns = torch.as_tensor(np.asarray(turns, dtype=np.float32))
        weight = speeds.abs().sum((2, 3, 4, 5)) + turns.sum((2, 3))
        pairs = torch.nonzero(weight > 0)
        if len(pairs) > PRIOR_ROWS - 1:
            log.warning(
                "motion prior: %d (character, action) pairs, room for %d: the rest stay empty",
                len(pairs),
                PRIOR_ROWS - 1,
            )
            order = weight[pairs[:, 0], pairs[:, 1]].argsort(descending=True)
            pairs = pairs[order[: PRIOR_ROWS - 1]]
        self.row_of.zero_()
        self.speeds.zero_()
        self.turns.zero_()
        rows = torch.arange(1, len(pairs) + 1)
        self.row_of[pairs[:, 0], pairs[:, 1]] = rows.int()
        self.speeds[rows] = speeds[pairs[:, 0], pairs[:, 1]].half()
        self.turns[rows] = turns[pairs[:, 0], pairs[:, 1]].half()


def upgrade_prior_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's tensors with a motion prior of an earlier layout in today's: one dense
    `table` (characters, actions, ages, 2, fields + turn), one change per cell whatever the
    speed before, becomes the same change in every bucket; a prior without terminal speeds
    gets none (0: falls as the cells say). The model then predicts as it did."""
    for key in [k for k in tensors if k.endswith("prior.speeds")]:
        # Without a terminal speed (0), falls are as the cells say, as they were.
        tensors.setdefault(key[: -len("speeds")] + "terminal", torch.zeros(PRIOR_CHARACTERS))
    old = [k for k, v in tensors.items() if k.endswith("prior.table") and v.dim() == 5]
    for key in old:
        prefix = key[: -len("table")]
        table = tensors.pop(key).float()
        prior = MotionPrior()
        dense = table[..., :FIELDS].unsqueeze(-2).expand(*table.shape[:-1], BUCKETS, FIELDS)
        prior.set_dense(dense.numpy(), table[..., FIELDS].numpy())
        for name, value in prior.state_dict().items():
            tensors[prefix + name] = value.to(table.device)
    return tensors


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
    columns: dict[str, np.ndarray],
    starts: np.ndarray,
    games: np.ndarray | None = None,
    terminal: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The dense tables `MotionPrior.fill` keeps, from numpy columns (see there): per
    (character, action, min(age, PRIOR_AGES - 1), jump held on the frame before) and per
    bucket of each speed before, the median of each speed's change from the frame before (x
    speeds times the frame's facing) over frames that have a frame before in the same game, in
    the games `games` (bool per game) keeps; and per (character, action, age, held) the share
    of frames whose facing differs from the frame before's. A bucket with fewer than
    MIN_SAMPLES frames takes its cell's frames of every bucket, then a cell with too few takes
    its (character, action, age)'s, held or not. With `terminal` (per character, 0: not
    known), frames that fell at least that fast the frame before are left out of the vertical
    speed's cells: there the terminal speed, not the cell, decides (`speed_changes`).
    float32, (PRIOR_CHARACTERS, actions, PRIOR_AGES, 2, BUCKETS, fields) and
    (PRIOR_CHARACTERS, actions, PRIOR_AGES, 2)."""
    total = int(starts[-1])
    has_before = np.ones(total, dtype=bool)
    has_before[starts[:-1]] = False  # a game's first frame
    if games is not None:
        has_before &= np.repeat(games, np.diff(starts))
    keys, changes, buckets, steady = [], [], [], []
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
        change = np.zeros((total, FIELDS + 1), dtype=np.float32)
        bucket = np.ones((total, FIELDS), dtype=np.int64)
        change[1:, FIELDS] = facing[1:] != facing[:-1]
        for i, (name, along_x) in enumerate(zip(PRIOR_FIELDS, X_FIELDS, strict=True)):
            speed = columns[f"{p}_{name}"].astype(np.float32)
            before = np.zeros(total, dtype=np.float32)
            before[1:] = speed[:-1]
            change[1:, i] = speed[1:] - speed[:-1]
            if along_x:
                change[:, i] *= facing
                before *= facing
            bucket[:, i] = (before > REST).astype(np.int64) - (before < -REST) + 1
        cell = (character * gs.ACTION_VOCAB + action) * PRIOR_AGES + age
        keys.append((cell * 2 + held)[known])
        changes.append(change[known])
        buckets.append(bucket[known])
        fall_before = np.zeros(total, dtype=np.float32)
        fall_before[1:] = -columns[f"{p}_vel_self_y"][:-1]
        limit = (
            np.zeros(total) if terminal is None else terminal[character.clip(0, len(terminal) - 1)]
        )
        steady.append(((limit > 0) & (fall_before >= limit - REST))[known])
    key, change, bucket = np.concatenate(keys), np.concatenate(changes), np.concatenate(buckets)
    at_terminal = np.concatenate(steady)
    cells = PRIOR_CHARACTERS * gs.ACTION_VOCAB * PRIOR_AGES
    speeds = np.zeros((cells * 2, BUCKETS, FIELDS), dtype=np.float32)
    for i in range(FIELDS):
        rows = ~at_terminal if i == Y else slice(None)
        k, b, c = key[rows], bucket[rows, i], change[rows, i]
        # Most specific first: (cell, held, bucket), then (cell, held), then (cell).
        split, split_enough = _medians(k * BUCKETS + b, c, cells * 2 * BUCKETS)
        held_half, held_enough = _medians(k, c, cells * 2)
        either, _ = _medians(k // 2, c, cells)
        value = np.repeat(either, 2)
        value = np.where(held_enough, held_half, value)
        value = np.repeat(value, BUCKETS).reshape(-1, BUCKETS)
        split_enough = split_enough.reshape(-1, BUCKETS)
        speeds[..., i] = np.where(split_enough, split.reshape(-1, BUCKETS), value)
    turn_held, held_enough = _means(key, change[:, FIELDS], cells * 2)
    turn_either, _ = _means(key // 2, change[:, FIELDS], cells)
    turns = np.where(held_enough, turn_held, np.repeat(turn_either, 2))
    shape = (PRIOR_CHARACTERS, gs.ACTION_VOCAB, PRIOR_AGES, 2)
    return speeds.reshape(*shape, BUCKETS, FIELDS), turns.reshape(shape)


def _groups(key: np.ndarray, cells: int) -> tuple[np.ndarray, ...]:
    """Rows sorted by key, and per key with at least MIN_SAMPLES rows: its id, row count and
    first row in that order; and which keys in [0, cells) had enough rows."""
    order = np.argsort(key, kind="stable")
    ids, counts = np.unique(key[order], return_counts=True)
    enough = counts >= MIN_SAMPLES
    kept = np.repeat(enough, counts)
    has = np.zeros(cells, dtype=bool)
    has[ids[enough]] = True
    counts = counts[enough]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return order[kept], ids[enough], counts, first, has


def _medians(key: np.ndarray, value: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key in [0, cells): the median of its values, 0 where it has fewer than MIN_SAMPLES;
    and which keys had enough."""
    rows, ids, counts, first, has = _groups(key, cells)
    out = np.zeros(cells, dtype=np.float32)
    if len(ids):
        group = np.repeat(np.arange(len(ids)), counts)
        # Sorted by key, then value, each key's middle value is its median.
        ranked = value[rows][np.lexsort((value[rows], group))]
        out[ids] = (ranked[first + (counts - 1) // 2] + ranked[first + counts // 2]) / 2
    return out, has


def _means(key: np.ndarray, value: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key in [0, cells): the mean of its values (0 with fewer than MIN_SAMPLES); and
    which keys had enough."""
    rows, ids, counts, first, has = _groups(key, cells)
    out = np.zeros(cells, dtype=np.float32)
    if len(ids):
        out[ids] = np.add.reduceat(value[rows], first) / counts
    return out, has


def terminal_speeds(
    columns: dict[str, np.ndarray], starts: np.ndarray, games: np.ndarray | None = None
) -> np.ndarray:
    """Per character (PRIOR_CHARACTERS,), its terminal fall speed (positive, units a frame; 0
    where the games do not show it): of the speeds at which its falls stay put (jumps and
    falls, STEADY_FALL_ACTIONS, the vertical speed unchanged from the frame before and at
    least STEADY_FALL_MIN), the two most frequent are the terminal and the fast fall's; the
    slower is the terminal one. Columns, starts and games as `mine_motion_prior` reads them."""
    total = int(starts[-1])
    has_before = np.ones(total, dtype=bool)
    has_before[starts[:-1]] = False
    if games is not None:
        has_before &= np.repeat(games, np.diff(starts))
    found_character, found_speed = [], []
    for p in gs.PLAYERS:
        speed = columns[f"{p}_vel_self_y"].astype(np.float32)
        steady = np.zeros(total, dtype=bool)
        steady[1:] = np.abs(speed[1:] - speed[:-1]) < 1e-4
        steady &= has_before & (speed <= -STEADY_FALL_MIN)
        steady &= np.isin(columns[f"{p}_action"], STEADY_FALL_ACTIONS)
        found_character.append(columns[f"{p}_character"][steady].astype(np.int64))
        found_speed.append(np.round(-speed[steady], 3))
    character, speed = np.concatenate(found_character), np.concatenate(found_speed)
    out = np.zeros(PRIOR_CHARACTERS, dtype=np.float32)
    for c in range(PRIOR_CHARACTERS):
        values, counts = np.unique(speed[character == c], return_counts=True)
        common = values[np.argsort(counts)[::-1][:2]]
        common = common[np.sort(counts)[::-1][:2] >= MIN_STEADY]
        if len(common):
            out[c] = common.min()
    return out
