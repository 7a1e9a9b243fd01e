"""Per-head losses of the world model, weighted by group, masked where data is missing.

Regression heads (deltas and values, in the scaled units of `model.frame_spec`) use the smooth
L1 loss, which stays linear for the rare huge knockback frames; binary heads binary cross
entropy; categorical heads cross entropy. Item heads other than `exists` count only in slots
that hold an item. A field that a game's Slippi version did not record (`masks`) contributes
nothing for that game, rather than teaching the model the default value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core import game_state as gs
from model import frame_spec as fs
from model.decoding import with_copy_prior
from model.frame_spec import Head
from model.heads import head_outputs, head_targets, item_outputs

# Smooth L1's quadratic zone, in scaled units, for the heads that positions are decoded from
# (displacement residuals and velocity deltas). Most of their targets are exactly 0 or a
# constant (gravity, friction, knockback decay), and a rollout's position error is the sum of
# their errors; with smooth L1's default beta of 1 an error of 0.1 unit (0.2 scaled) got a
# fifth of the gradient and the heads stayed noisier than the constant-velocity baseline.
# A small beta makes the loss L1 beyond it, which pulls them to the exact median.
MOTION_BETA = 0.05


@dataclass(frozen=True)
class LossWeights:
    """Defaults from the original design; `items` is ours (see below)."""

    continuous: float = 1.0  # position, percent, shield (deltas)
    velocity: float = 0.5  # the five velocities (deltas)
    dynamics: float = 0.5  # hitlag, stocks, combo count, hitstun
    binary: float = 0.5  # facing, on ground, invulnerable
    action: float = 2.0
    jumps: float = 0.5
    l_cancel: float = 0.3
    hurtbox: float = 0.3
    ground: float = 0.3
    last_attack: float = 0.3
    # Items: each item head (exists, type, state, owner, position, velocity, timer) at 0.3, as
    # much as the minor categorical heads: projectiles matter to the game but fill few frames,
    # and a heavier weight let them crowd out the players' heads in our short CPU runs.
    items: float = 0.3
    # A multiplier of the motion heads' loss (velocities, position residuals) on the frames
    # where a player's action changes. Melee sets a roll's, a dash's or a jump's speed on the
    # action's first frame and every later frame carries it on, so an error there lasts the
    # whole action in play; those frames are 5% of the data (a roll's first frame 1 in
    # 7,000), and at weight 1 the action-conditioned heads did not learn them in 500 steps.
    onset: float = 1.0
    # A multiplier of the speed heads' loss in games whose replays did not record the speeds
    # (Slippi < 3.5, 31% of the corpus's games), whose speeds are imputed from positions
    # (`frame_spec.impute_missing_velocities`): there a dash's or a roll's speed appears a
    # frame late, which taught the heads a mixture of two onsets. 0: learn speeds from
    # recorded games only (the position residual still learns every game).
    imputed_speeds: float = 1.0


MOTION_HEADS = frozenset(
    s.name for s in fs.PLAYER_HEADS if s.kind is Head.DISPLACEMENT or s.name.startswith("vel_")
)

GROUP_OF_HEAD = {
    "x": "continuous",
    "y": "continuous",
    "percent": "continuous",
    "shield": "continuous",
    "hitlag": "dynamics",
    "stocks": "dynamics",
    "combo_count": "dynamics",
    "hitstun": "dynamics",
    "facing": "binary",
    "on_ground": "binary",
    "invulnerable": "binary",
    "action": "action",
    "jumps": "jumps",
    "l_cancel": "l_cancel",
    "hurtbox_state": "hurtbox",
    "ground": "ground",
    "last_attack_landed": "last_attack",
}


def head_group(name: str) -> str:
    return "velocity" if name.startswith("vel_") else GROUP_OF_HEAD[name]


def source_column(key: str) -> str:
    """The dataset column a head's target comes from (for the missing-field masks)."""
    if key == "item_exists":
        return "item_slot"  # items appear with Slippi 3.0; `exists` is derived from the slots
    if key.startswith("item_"):
        return key  # item_owner is recorded only from 3.6
    player, name = key.split("_", 1)
    return f"{player}_{fs.BINARY_HEAD_SOURCE.get(name, name)}"


def _elementwise(spec: fs.HeadSpec, pred: Tensor, target: Tensor, motion: bool) -> Tensor:
    if spec.kind in (Head.DISPLACEMENT, Head.DELTA, Head.VALUE):
        beta = MOTION_BETA if motion else 1.0
        return F.smooth_l1_loss(pred.float(), target, reduction="none", beta=beta)
    if spec.kind is Head.BINARY:
        return F.binary_cross_entropy_with_logits(pred.float(), target, reduction="none")
    # Classes on the last dim, rows flattened: cross_entropy's classes-on-dim-1 layout would
    # copy the logits into it first.
    logits = pred.float().reshape(-1, pred.shape[-1])
    return F.cross_entropy(logits, target.reshape(-1), reduction="none").view(target.shape)


def compute_losses(
    preds: dict[str, Tensor],
    prev: dict[str, Tensor],
    target: dict[str, Tensor],
    masks: dict[str, Tensor] | None = None,
    weights: LossWeights | None = None,
    denominator: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total weighted loss and the mean loss of every head (for logging).

    preds: the model's output over (B, T); prev / target: frames t-1 and t, (B, T, ...);
    masks: {column: (B,) bool, True where recorded}, for columns missing in some games;
    denominator: maps a head's weight sum in this batch to what its mean divides by (default:
    the sum itself, at least 1); data-parallel training passes one that sums it over the ranks
    (training/train.py), so that the ranks' losses add up to the global batch's.
    """
    weights = weights or LossWeights()
    masks = masks or {}
    _, items = head_outputs(preds)  # the item heads but `exists` have no copy prior
    preds = with_copy_prior(preds, prev)
    targets = head_targets(prev, target)
    exists = target["item_exists"]  # (B, T, slots)
    # The item heads but `exists` are scored only where a slot holds an item (0.4% of the dev
    # data's slots): on those rows alone, rather than everywhere with a weight of zero.
    present = exists.flatten().nonzero().squeeze(1)

    def present_rows(values: Tensor) -> Tensor:
        return values.flatten(0, exists.dim() - 1)[present]

    present_items = item_outputs(present_rows(items))  # one gather for every item head

    onsets = {p: (target[f"{p}_action"] != prev[f"{p}_action"]).float() for p in gs.PLAYERS}
    total = torch.zeros((), device=target["frame"].device)
    per_head: dict[str, Tensor] = {}
    specs = [(f"{p}_{s.name}", s) for p in gs.PLAYERS for s in fs.PLAYER_HEADS]
    specs += [(f"item_{s.name}", s) for s in fs.ITEM_HEADS]
    for key, spec in specs:
        motion = not key.startswith("item_") and spec.name in MOTION_HEADS
        pred, goal = preds[key], targets[key]
        only_present = key.startswith("item_") and spec.name != "exists"
        if only_present:
            pred, goal = present_items[key], present_rows(goal)
        loss = _elementwise(spec, pred, goal, motion)  # (B, T), (B, T, slots) or (present,)
        weight = torch.ones_like(loss)
        if motion and weights.onset != 1.0:
            weight = weight + (weights.onset - 1.0) * onsets[key.split("_", 1)[0]]
        speed_recorded = masks.get(source_column(key)) if spec.kind is Head.DELTA else None
        if motion and speed_recorded is not None and weights.imputed_speeds != 1.0:
            per_game = torch.where(speed_recorded, 1.0, weights.imputed_speeds)  # (B,)
            weight = weight * per_game.view(-1, *([1] * (loss.dim() - 1)))
        # Positions are decoded as the previous position plus the predicted velocities plus
        # the displacement residual, so they are never masked: in a game without velocities
        # (Slippi < 3.5, a fifth of the demo data) the velocity heads learn to keep them at
        # the recorded 0 and the residual learns the whole move, which decodes consistently.
        recorded = None if motion else masks.get(source_column(key))
        if recorded is not None:
            recorded = recorded.float()  # (B,): per game
            if only_present:
                weight = weight * present_rows(recorded.view(-1, 1, 1).expand(exists.shape))
            else:
                weight = weight * recorded.view(-1, *([1] * (loss.dim() - 1)))
        count = weight.sum()
        count = count.clamp(min=1.0) if denominator is None else denominator(count)
        mean = (loss * weight).sum() / count
        per_head[key] = mean.detach()
        group = "items" if key.startswith("item_") else head_group(spec.name)
        total = total + getattr(weights, group) * mean
    return total, per_head
