"""How the world model reads and predicts each field of `core.game_state`.

A frame, for the model, is a dict of tensors keyed by dataset column names (`p1_x`,
`p2_action`, `stage`, ...) holding game units, shape (B,) or (B, T); item fields are dense,
`item_<name>` of shape (B, ITEM_SLOTS) or (B, T, ITEM_SLOTS), with `item_exists` as the mask
(see `game_state.dense_items`).

Every field the encoder reads has exactly one of these roles (a test checks it):
- a head that predicts it (`PLAYER_HEADS`, `ITEM_HEADS`),
- a rule (`state_age`: +1 while the action stays the same, else 0),
- a constant of the game (`character`, `stage`),
- an external input (the controllers).

Timing convention (Slippi): the pre-frame event of frame t carries the controller state the
game reads for frame t, and the post-frame event carries the state after frame t's update. So
the model's input at position t is the post-frame state of t-1 plus both controllers of t, and
its target is the post-frame state of t. `tests/test_world_model.py` checks this on real
replays (`test_jump_input_acts_in_the_same_frame`): a jump pressed while standing shows up as
the jump-squat action in the same frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from core import game_state as gs


class Head(enum.Enum):
    DISPLACEMENT = "displacement"  # regress the move not explained by the velocities / scale
    DELTA = "delta"  # regress (value_t - value_{t-1}) / scale
    VALUE = "value"  # regress value_t / scale
    BINARY = "binary"  # one logit
    CATEGORICAL = "categorical"  # vocab logits


@dataclass(frozen=True)
class HeadSpec:
    name: str  # head name, also the field it predicts unless `target` says otherwise
    kind: Head
    scale: float = 1.0  # for DELTA / VALUE
    vocab: int = 1  # for CATEGORICAL
    doc: str = ""


# Scales make a typical per-frame change about 1 (percents jump by up to ~20 on a hit,
# velocities change by fractions of a unit). Positions are decoded from the frame's own
# velocities, x_t = x_{t-1} + v_t + residual: on the real replays the move equals the summed
# velocities to 0.01 units on 90% of frames (x) and 94% (y), and the heads learn the rest
# (ledges, walls, landings).
PLAYER_HEADS: tuple[HeadSpec, ...] = (
    HeadSpec("x", Head.DISPLACEMENT, scale=0.5),
    HeadSpec("y", Head.DISPLACEMENT, scale=0.5),
    HeadSpec("percent", Head.DELTA, scale=5.0),
    HeadSpec("shield", Head.DELTA, scale=1.0),
    HeadSpec("vel_self_x_air", Head.DELTA, scale=0.5),
    HeadSpec("vel_self_y", Head.DELTA, scale=0.5),
    HeadSpec("vel_knockback_x", Head.DELTA, scale=0.5),
    HeadSpec("vel_knockback_y", Head.DELTA, scale=0.5),
    HeadSpec("vel_self_x_ground", Head.DELTA, scale=0.5),
    HeadSpec("hitlag", Head.VALUE, scale=10.0),
    HeadSpec("stocks", Head.VALUE, scale=4.0, doc="the rules, not this head, decide stocks"),
    HeadSpec("combo_count", Head.VALUE, scale=10.0),
    HeadSpec("hitstun", Head.VALUE, scale=30.0),
    HeadSpec("facing", Head.BINARY, doc="1 = facing right"),
    HeadSpec("on_ground", Head.BINARY, doc="predicts airborne == 0"),
    HeadSpec("invulnerable", Head.BINARY, doc="hurtbox_state != 0; auxiliary, see hurtbox"),
    HeadSpec("action", Head.CATEGORICAL, vocab=gs.ACTION_VOCAB),
    HeadSpec("jumps", Head.CATEGORICAL, vocab=gs.JUMPS_VOCAB),
    HeadSpec("l_cancel", Head.CATEGORICAL, vocab=3),
    HeadSpec("hurtbox_state", Head.CATEGORICAL, vocab=3),
    HeadSpec("ground", Head.CATEGORICAL, vocab=gs.GROUND_VOCAB),
    HeadSpec("last_attack_landed", Head.CATEGORICAL, vocab=gs.LAST_ATTACK_VOCAB),
)

ITEM_HEADS: tuple[HeadSpec, ...] = (
    HeadSpec("exists", Head.BINARY),
    HeadSpec("type", Head.CATEGORICAL, vocab=gs.ITEM_TYPE_VOCAB),
    HeadSpec("state", Head.CATEGORICAL, vocab=16),
    HeadSpec("owner", Head.CATEGORICAL, vocab=3, doc="class 0 none, 1 p1, 2 p2"),
    HeadSpec("x", Head.VALUE, scale=100.0),
    HeadSpec("y", Head.VALUE, scale=100.0),
    HeadSpec("vel_x", Head.VALUE, scale=3.0),
    HeadSpec("vel_y", Head.VALUE, scale=3.0),
    HeadSpec("timer", Head.VALUE, scale=100.0),
)

# The player field each binary head is computed from.
BINARY_HEAD_SOURCE = {"facing": "facing", "on_ground": "airborne", "invulnerable": "hurtbox_state"}

RULE_FIELDS = ("state_age",)
CONSTANT_FIELDS = ("character", "stage")
EXTERNAL_FIELDS = tuple(f.name for f in gs.CONTROLLER_FIELDS)

# Encoder inputs, by player field name, grouped by how they are encoded.
PLAYER_FLOAT_INPUTS = (
    "x",
    "y",
    "state_age",
    "percent",
    "shield",
    "stocks",
    "combo_count",
    "hitlag",
    "hitstun",
    "vel_self_x_air",
    "vel_self_y",
    "vel_knockback_x",
    "vel_knockback_y",
    "vel_self_x_ground",
)
PLAYER_BINARY_INPUTS = ("facing", "airborne")
PLAYER_CATEGORICAL_INPUTS = (
    "action",
    "jumps",
    "l_cancel",
    "hurtbox_state",
    "ground",
    "last_attack_landed",
    "character",
)
CONTROLLER_FLOAT_INPUTS = (
    "joystick_x",
    "joystick_y",
    "cstick_x",
    "cstick_y",
    "trigger",
    "trigger_l",
    "trigger_r",
)
ITEM_FLOAT_INPUTS = ("exists", "x", "y", "vel_x", "vel_y", "timer")
ITEM_CATEGORICAL_INPUTS = ("type", "state", "owner")
STATE_AGE_CAP = 300.0  # frames; a long idle adds nothing beyond this

PLAYER_FIELD = {f.name: f for f in gs.PLAYER_FIELDS + gs.CONTROLLER_FIELDS}
ITEM_FIELD = {f.name: f for f in gs.ITEM_FIELDS}


def vocab_of(name: str) -> int:
    """Vocabulary of a categorical input, player or item field."""
    if name == "stage":
        return gs.STAGE_VOCAB
    if name == "owner":
        return 3
    field = PLAYER_FIELD.get(name) or ITEM_FIELD[name]
    assert field.vocab is not None, f"{name} is not categorical"
    return field.vocab


def to_class(name: str, values: Tensor) -> Tensor:
    """Game ids -> class indices in [0, vocab) (out-of-range ids fold into the last class)."""
    values = values.long()
    if name == "owner":
        return (values + 1).clamp(0, 2)  # -1 none -> 0, p1 -> 1, p2 -> 2
    return values.clamp(0, vocab_of(name) - 1)  # ground 65535 (airborne) -> 127


def from_class(name: str, classes: Tensor) -> Tensor:
    """Class indices -> game ids (inverse of `to_class` on the ids it keeps)."""
    if name == "owner":
        return classes - 1
    if name == "ground":
        return torch.where(classes == gs.GROUND_VOCAB - 1, gs.GROUND_NONE, classes)
    return classes


def implied_velocity(frame: dict[str, Tensor], player: str, axis: str) -> Tensor:
    """The move a frame's velocities imply: self (air or ground) plus knockback speed."""
    if axis == "x":
        own = torch.where(
            frame[f"{player}_airborne"] != 0,
            frame[f"{player}_vel_self_x_air"].float(),
            frame[f"{player}_vel_self_x_ground"].float(),
        )
        return own + frame[f"{player}_vel_knockback_x"].float()
    return frame[f"{player}_vel_self_y"].float() + frame[f"{player}_vel_knockback_y"].float()


def head_target(spec: HeadSpec, field_values: Tensor) -> Tensor:
    """The binary target of a binary player head from its field's values."""
    if spec.name == "facing":
        return (field_values > 0).float()
    if spec.name == "on_ground":
        return (field_values == 0).float()
    if spec.name == "invulnerable":
        return (field_values != 0).float()
    raise KeyError(spec.name)


# Velocities are recorded from Slippi 3.5; older replays hold 0 there. A move per frame above
# this is a respawn or a teleport, not a velocity (the fastest knockback moves ~15 units/frame).
IMPUTED_SPEED_CAP = 20.0


def impute_missing_velocities(frames: dict[str, Tensor], missing) -> None:
    """In place: for a game whose replay did not record the velocities (`missing` names
    `p1_vel_self_x_air`), set each player's self velocities to the frame's own move (air and
    ground alike, capped at IMPUTED_SPEED_CAP) and knockback to 0, so that
    `implied_velocity(frame) == move` as on recorded frames. Without it the model reads no
    motion at all in such a game (positions are inputs at 1/100 scale) and cannot roll it out.
    Frame t's value uses frames t-1 and t only, so it is as causal as a recorded velocity."""
    for p in gs.PLAYERS:
        if f"{p}_vel_self_x_air" not in missing:
            continue
        for axis, names in (("x", ("vel_self_x_air", "vel_self_x_ground")), ("y", ("vel_self_y",))):
            position = frames[f"{p}_{axis}"].float()
            move = torch.zeros_like(position)
            move[1:] = position[1:] - position[:-1]
            move = torch.where(move.abs() > IMPUTED_SPEED_CAP, 0.0, move)
            for name in names:
                frames[f"{p}_{name}"] = move.to(frames[f"{p}_{name}"].dtype)
        for name in ("vel_knockback_x", "vel_knockback_y"):
            frames[f"{p}_{name}"] = torch.zeros_like(frames[f"{p}_{name}"])


def count_state_age(frames: dict[str, Tensor]) -> None:
    """In place: each player's `state_age` (T,) as the rule counts it (`decoding.decode`: +1
    while the action stays the same, else 0), from the game's first recorded value on.

    Slippi records the animation's frame instead: it stays at -1 through ENTRY_END, stops at
    10 in ENTRY_START, pauses in hitlag and follows animation speed, so it matches the rule on
    only about 80% of same-action frames. A model trained on the recorded values but fed the
    rule's in play reads ages it never saw (an ENTRY 80 frames old, where real ones last 5)
    and never leaves the action; trained on the rule's count, it reads in play what it read
    in training."""
    for p in gs.PLAYERS:
        action = frames[f"{p}_action"]
        if len(action) == 0:
            continue
        position = torch.arange(len(action))
        change = torch.ones_like(action, dtype=torch.bool)
        change[1:] = action[1:] != action[:-1]
        run_start = torch.cummax(torch.where(change, position, 0), 0).values
        age = (position - run_start).to(frames[f"{p}_state_age"].dtype)
        first_run = run_start == 0
        age[first_run] += frames[f"{p}_state_age"][0]  # the first run counts from the record
        frames[f"{p}_state_age"] = age
