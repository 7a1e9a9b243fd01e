"""FrameHeads: d_model features -> predictions for every predicted field (decoding them into
the next frame is `model.decoding`).

Output layout of `FrameHeads.forward`, a dict of tensors:
- `p1_<head>` / `p2_<head>` for every `frame_spec.PLAYER_HEADS` entry: (*lead,) for
  DISPLACEMENT, DELTA, VALUE and BINARY heads (a regression in scaled units, or a logit),
  (*lead, vocab) logits for CATEGORICAL heads;
- `item_<head>` for every `frame_spec.ITEM_HEADS` entry: the same with a slot axis,
  (*lead, ITEM_SLOTS) or (*lead, ITEM_SLOTS, vocab).

The entries are views of two tensors, the players' (*lead, 2, width) and the items' (*lead,
slots, width), which the dict keeps (`Predictions`), so that decoding reads them in a few ops.

`head_targets` computes, from two consecutive frames, the values the heads are trained towards,
so that decoding a perfect prediction reproduces the next frame.

With `ModelConfig.action_conditioned`, every player head but the action's and the facing's is
corrected by an `ActionConditioner` given the action of the predicted frame, its age and the
facing (the x heads' corrections point where the character faces): the real ones in training
(teacher forcing), the heads' own choice when predicting (argmax with the copy prior, or an
action sampled by `pick_action`). The action and facing logits then carry that choice alone,
so that decoding, at any temperature, picks what the other fields were predicted for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from core import game_state as gs
from model import frame_spec as fs
from model.config import ModelConfig
from model.frame_spec import Head
from model.motion_prior import PRIOR_FIELDS, MotionPrior, jump_held

# Copy prior, in logits: categorical and binary fields mostly keep last frame's value (on the
# replays the action is unchanged on 95% of frames, the jumps, ground, hurtbox and last attack
# on more), so their heads predict the change relative to "same as before". A categorical head
# gets log(vocab) + COPY_PRIOR on the previous class, which makes "unchanged" about 88% likely
# while the head's own logits are still near zero; a binary head gets +-COPY_PRIOR.
COPY_PRIOR = 2.0
# Ages past this share one embedding: the speeds an action sets are in its first frames.
CONDITION_AGES = 32
# Logit of the actions a conditioned prediction did not choose (fits bf16 and fp16).
UNCHOSEN_LOGIT = -1e4


def head_width(spec: fs.HeadSpec) -> int:
    """Columns of a head in the heads' output: its vocabulary if categorical, else one."""
    return spec.vocab if spec.kind is Head.CATEGORICAL else 1


PLAYER_WIDTHS = [head_width(s) for s in fs.PLAYER_HEADS]
ITEM_WIDTHS = [head_width(s) for s in fs.ITEM_HEADS]


def _column_of(name: str) -> int:
    """Where a player head starts in a row of the heads' output."""
    start = 0
    for spec in fs.PLAYER_HEADS:
        if spec.name == name:
            return start
        start += head_width(spec)
    raise AssertionError(f"no player head {name}")


def _action_columns() -> slice:
    start = _column_of("action")
    return slice(start, start + gs.ACTION_VOCAB)


ACTION_COLUMNS = _action_columns()
FACING_COLUMN = _column_of("facing")
# The heads whose sign is a direction along x: the position residual and the own speeds.
X_COLUMNS = torch.tensor([False] * sum(PLAYER_WIDTHS))
X_COLUMNS[[_column_of(n) for n in ("x", "vel_self_x_air", "vel_self_x_ground")]] = True

# The first frames of an action have a row of their own in the onset table (ONSET_AGES per
# action), which corrects the motion heads directly.
ONSET_AGES = 4
MOTION_COLUMNS = torch.tensor(
    [_column_of(s.name) for s in fs.PLAYER_HEADS if s.kind is Head.DISPLACEMENT]
    + [_column_of(s.name) for s in fs.PLAYER_HEADS if s.name.startswith("vel_")]
)

# Where the motion prior's speeds sit in a row of the heads' output, and their scales.
PRIOR_COLUMNS = torch.tensor([_column_of(name) for name in PRIOR_FIELDS])
FACING_COLUMNS = torch.tensor([FACING_COLUMN])  # as an index, for index_add
PRIOR_SCALES = torch.tensor(
    [next(s.scale for s in fs.PLAYER_HEADS if s.name == n) for n in PRIOR_FIELDS]
)

# A motion prior cell whose frames turned the character this often turns it when predicting,
# whatever the facing head says: there the turn is the action's script (a forward roll's
# 20th frame, a TURN's), which the head, trained on frames that keep the facing 99.9% of the
# time, learns too slowly. Input-dependent turns (a dash's first frame turns on 40-70% of
# them, as the stick says) stay the head's.
SCRIPTED_TURN = 0.95
# When predicting, a speed head's own correction of the prior smaller than this (game units a
# frame) is dropped: the prior's cell is then exact. A jump's rise follows its script to the
# hundredth (Fox: 3.68, then 0.23 less every frame), and a learned correction of 0.01 a frame,
# noise for a loss, moved every apex by 1-2 units, out of the real range. Corrections the input
# makes (an air drift, a fast fall, the speed an earlier action left) are larger.
PRIOR_SNAP = 0.04

# Action logits (*lead, 2, vocab), copy prior added -> the chosen action classes (*lead, 2).
ActionPicker = Callable[[Tensor], Tensor]


class ActionConditioner(nn.Module):
    """A correction of every player head but the action's, given the frame's action and its
    age (frames since it began, capped): gelu(W h + E[action] + E[age]) -> all head columns,
    plus, on an action's first ONSET_AGES frames, a row of the onset table for that action and
    age added to the motion heads.

    Why the onset table: an action's first frame sets its speed (a roll's 3.41 units), but a
    roll begins on 1 frame in 7,000, and through the shared layers the roll's row learned the
    corrections of its twenty later frames, not the first one's (the smooth L1 loss counts
    each frame's error by its sign). A row of its own, read by nothing else, learns the first
    frame alone. Both output layers start at zero, so that a model trained without them is
    unchanged at first."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.condition_dim
        self.hidden = nn.Linear(config.d_model, 2 * width)
        self.action = nn.Embedding(gs.ACTION_VOCAB, width)
        self.age = nn.Embedding(CONDITION_AGES, width)
        self.out = nn.Linear(width, sum(PLAYER_WIDTHS))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.onset = nn.Embedding(gs.ACTION_VOCAB * ONSET_AGES, len(MOTION_COLUMNS))
        nn.init.zeros_(self.onset.weight)
        keep = torch.ones(sum(PLAYER_WIDTHS))
        keep[ACTION_COLUMNS] = 0  # the action's and facing's own logits are not conditioned
        keep[FACING_COLUMN] = 0
        self.register_buffer("keep", keep, persistent=False)
        self.prior = MotionPrior() if config.motion_prior else None

    def forward(self, h: Tensor, action: Tensor, age: Tensor) -> Tensor:
        """h (*lead, d_model), action and age classes (*lead, 2) -> (*lead, 2, player width)."""
        hidden = self.hidden(h).unflatten(-1, (2, -1)) + self.action(action) + self.age(age)
        out = self.out(torch.nn.functional.gelu(hidden)) * self.keep.to(h.dtype)
        early = (age < ONSET_AGES).to(out.dtype).unsqueeze(-1)
        onset = self.onset(action + gs.ACTION_VOCAB * age.clamp(max=ONSET_AGES - 1)) * early
        return out.index_add(-1, MOTION_COLUMNS.to(out.device), onset.to(out.dtype))


def _with_columns(row: Tensor, pieces: list[tuple[int, Tensor]]) -> Tensor:
    """`row` (*lead, width) with its columns from each piece's start replaced by the piece."""
    parts, at = [], 0
    for start, piece in sorted(pieces, key=lambda p: p[0]):
        parts += [row[..., at:start], piece]
        at = start + piece.shape[-1]
    return torch.cat([*parts, row[..., at:]], -1)


class FrameHeads(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.player = nn.Linear(config.d_model, 2 * sum(PLAYER_WIDTHS))
        # Items: a per-slot hidden vector, then one head shared by all slots.
        self.item_hidden = nn.Linear(config.d_model, gs.ITEM_SLOTS * config.item_head_dim)
        self.item_out = nn.Linear(config.item_head_dim, sum(ITEM_WIDTHS))
        self.conditioner = ActionConditioner(config) if config.action_conditioned else None

    def forward(
        self,
        h: Tensor,
        prev: dict[str, Tensor] | None = None,
        teacher: Tensor | None = None,
        pick_action: ActionPicker | None = None,
    ) -> Predictions:
        """h: (*lead, d_model) -> dict of predictions (see module docstring).

        A conditioned model also reads `prev` (the frame before: its actions, their ages and
        facings) and conditions on `teacher` (*lead, 2, 2), each player's real action id and
        facing (+-1) in the predicted frame, when given (training); else on its own choice:
        `pick_action(action logits with the copy prior)`, argmax by default, and the facing
        its logit with the copy prior gives.
        """
        players = self.player(h).unflatten(-1, (2, -1))  # (*lead, 2, sum widths)
        if self.conditioner is not None:
            players = self._conditioned(h, players, prev, teacher, pick_action)
        slots = self.item_hidden(h).unflatten(-1, (gs.ITEM_SLOTS, -1))  # (*lead, slots, hid)
        items = self.item_out(torch.nn.functional.gelu(slots))  # (*lead, slots, sum widths)
        return split_outputs(players, items)

    def _conditioned(
        self,
        h: Tensor,
        players: Tensor,
        prev: dict[str, Tensor] | None,
        teacher: Tensor | None,
        pick_action: ActionPicker | None,
    ) -> Tensor:
        if prev is None:
            raise ValueError("an action-conditioned model needs the previous frame (prev)")

        def both(name: str) -> Tensor:
            return torch.stack([prev[f"{p}_{name}"] for p in gs.PLAYERS], -1)

        last, last_age = fs.to_class("action", both("action")), both("state_age").long()
        last_facing = torch.where(both("facing") > 0, 1.0, -1.0)
        chosen_here = teacher is None
        if chosen_here:
            logits = players[..., ACTION_COLUMNS]
            bonus = math.log(gs.ACTION_VOCAB) + COPY_PRIOR
            logits = logits + bonus * nn.functional.one_hot(last, gs.ACTION_VOCAB).to(logits.dtype)
            action = logits.argmax(-1) if pick_action is None else pick_action(logits)
        else:
            action = fs.to_class("action", teacher[..., 0])
        age = torch.where(action == last, last_age + 1, torch.zeros_like(last_age))
        prior = self.conditioner.prior
        if prior is not None:
            held = jump_held(both("buttons"), both("joystick_y"))
            cell = prior(both("character").long(), action, age, held)
        else:
            cell = None
        if cell is not None:
            # Where the action's script turns the character, the turn takes the place of the
            # facing's copy prior: +COPY_PRIOR (keep) where no frame turned, -COPY_PRIOR
            # (turn) where all did; the loss adds the copy prior as decoding does.
            turn = -2 * COPY_PRIOR * prior.turn_share(cell) * last_facing
            players = players.index_add(
                -1,
                FACING_COLUMNS.to(h.device),
                turn.unsqueeze(-1).to(players.dtype),
            )
        if chosen_here:
            facing_logit = players[..., FACING_COLUMN].float() + COPY_PRIOR * last_facing
            facing = torch.where(facing_logit > 0, 1.0, -1.0)
            if cell is not None:  # a turn every real frame of the cell made is the script's
                scripted = prior.turn_share(cell) >= SCRIPTED_TURN
                facing = torch.where(scripted, -last_facing, facing)
        else:
            facing = torch.where(teacher[..., 1] > 0, 1.0, -1.0)
        correction = self.conditioner(h, action, age.clamp(0, CONDITION_AGES - 1))
        # A speed an action sets points where the character faces (a roll forward, a dash):
        # the correction of the x heads is learned facing forward, so that one table row
        # serves both sides, which mirrored data would otherwise average to nothing.
        sign = torch.where(X_COLUMNS.to(h.device), facing.unsqueeze(-1), 1.0)
        players = players + (correction * sign.to(correction.dtype)).to(players.dtype)
        if cell is not None:  # the speed heads predict the change relative to the prior's
            scales = PRIOR_SCALES.to(cell.device)
            if chosen_here:
                own = players[..., PRIOR_COLUMNS.to(h.device)]
                small = (own.float() * scales).abs() < PRIOR_SNAP
                players = players.index_add(
                    -1, PRIOR_COLUMNS.to(h.device), torch.where(small, -own, 0.0)
                )
            before = torch.stack([both(name) for name in PRIOR_FIELDS], -1)
            scaled = prior.speed_changes(cell, facing, before) / scales
            players = players.index_add(-1, PRIOR_COLUMNS.to(h.device), scaled.to(players.dtype))
        if chosen_here:  # decoding must pick what the other heads were conditioned on
            chosen = nn.functional.one_hot(action, gs.ACTION_VOCAB).bool()
            unchosen = torch.full_like(players[..., ACTION_COLUMNS], UNCHOSEN_LOGIT)
            logits = torch.where(chosen, torch.zeros_like(unchosen), unchosen)
            facing_logit = (facing * -UNCHOSEN_LOGIT).to(players.dtype).unsqueeze(-1)
            players = _with_columns(
                players, [(ACTION_COLUMNS.start, logits), (FACING_COLUMN, facing_logit)]
            )
        return players


class Predictions(dict):
    """The heads' predictions by name, views of the two tensors they come from, which it keeps
    as `raw` (players, items). Changing an entry drops `raw`, which no longer matches; a copy
    (`dict(preds)`) is a plain dict."""

    raw: tuple[Tensor, Tensor] | None = None


def _drops_raw(method):
    def changed(self, *args, **kwargs):
        self.raw = None
        return method(self, *args, **kwargs)

    return changed


for _name in (
    "__setitem__",
    "__delitem__",
    "__ior__",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "update",
):
    setattr(Predictions, _name, _drops_raw(getattr(dict, _name)))


def split_outputs(players: Tensor, items: Tensor) -> Predictions:
    """The heads' two output tensors as predictions by name: `<player>_<head>` and
    `item_<head>`, (*lead,) or (*lead, vocab) per player head, with a slot axis for items."""
    out = Predictions()
    for index, p in enumerate(gs.PLAYERS):
        chunks = players[..., index, :].split(PLAYER_WIDTHS, dim=-1)
        for spec, chunk in zip(fs.PLAYER_HEADS, chunks, strict=True):
            out[f"{p}_{spec.name}"] = chunk if spec.kind is Head.CATEGORICAL else chunk[..., 0]
    out.update(item_outputs(items))
    out.raw = players, items
    return out


def item_outputs(items: Tensor) -> dict[str, Tensor]:
    """The item heads' tensor (*lead, width) as `item_<head>` views."""
    chunks = items.split(ITEM_WIDTHS, dim=-1)
    return {
        f"item_{spec.name}": chunk if spec.kind is Head.CATEGORICAL else chunk[..., 0]
        for spec, chunk in zip(fs.ITEM_HEADS, chunks, strict=True)
    }


def head_outputs(preds: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The two tensors of `split_outputs` back from predictions by name: kept by `Predictions`,
    else (a dict made some other way) put together again."""
    raw = getattr(preds, "raw", None)
    if raw is not None:
        return raw

    def column(value: Tensor, spec: fs.HeadSpec) -> Tensor:
        return value if spec.kind is Head.CATEGORICAL else value.unsqueeze(-1)

    players = torch.stack(
        [
            torch.cat([column(preds[f"{p}_{s.name}"], s) for s in fs.PLAYER_HEADS], -1)
            for p in gs.PLAYERS
        ],
        -2,
    )
    items = torch.cat([column(preds[f"item_{s.name}"], s) for s in fs.ITEM_HEADS], -1)
    return players, items


def head_targets(prev: dict[str, Tensor], frame: dict[str, Tensor]) -> dict[str, Tensor]:
    """Targets for every head, from frame t-1 (`prev`) and frame t (`frame`): floats for
    DELTA / VALUE / BINARY heads, class indices (long) for CATEGORICAL heads."""
    targets = {}
    for p in gs.PLAYERS:
        for spec in fs.PLAYER_HEADS:
            key = f"{p}_{spec.name}"
            if spec.kind is Head.DISPLACEMENT:
                move = frame[key].float() - prev[key].float()
                implied = fs.implied_velocity(frame, p, spec.name)
                targets[key] = (move - implied) / spec.scale
            elif spec.kind is Head.DELTA:
                targets[key] = (frame[key].float() - prev[key].float()) / spec.scale
            elif spec.kind is Head.VALUE:
                targets[key] = frame[key].float() / spec.scale
            elif spec.kind is Head.BINARY:
                source = frame[f"{p}_{fs.BINARY_HEAD_SOURCE[spec.name]}"]
                targets[key] = fs.head_target(spec, source)
            else:
                targets[key] = fs.to_class(spec.name, frame[key])
    for spec in fs.ITEM_HEADS:
        key = f"item_{spec.name}"
        if spec.kind is Head.VALUE:
            targets[key] = frame[key].float() / spec.scale
        elif spec.kind is Head.BINARY:
            targets[key] = frame[key].float()
        else:
            targets[key] = fs.to_class(spec.name, frame[key])
    return targets
