"""Starting a run from another checkpoint's weights (`init_from` in the training config):
the model config must match, but for the modules a run may add (`ADDED_BY_CONFIG`)."""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import CheckpointError, read_weights
from model.heads import MOTION_COLUMNS, PLAYER_WIDTHS, PRIOR_COLUMNS
from model.world_model import WorldModel

# Config fields a run may add to the model it starts from (`init_from`): they add modules,
# which start as their own initialisation makes them.
ADDED_BY_CONFIG = {
    "action_conditioned": "heads.conditioner.",
    "condition_dim": "",
    "motion_prior": "heads.conditioner.prior.",
}
PRIOR_PREFIX = ADDED_BY_CONFIG["motion_prior"]


def init_weights(model: WorldModel, path: str | Path) -> None:
    """Load the weights of checkpoint `path` into `model`, which must have its config, but for
    modules it adds (`ADDED_BY_CONFIG`: an unconditioned checkpoint may start a conditioned
    run, whose conditioner starts at zero and so leaves the predictions as they were)."""
    config, tensors, _ = read_weights(path)
    ours, theirs = model.config.to_dict(), config.to_dict()
    differ = [k for k in ours if ours[k] != theirs[k] and k not in ADDED_BY_CONFIG]
    if differ:
        diff = ", ".join(f"{k}: {theirs[k]} (the run's model: {ours[k]})" for k in differ)
        raise CheckpointError(f"{path}: init_from's model config differs: {diff}")
    added = tuple(prefix for prefix in ADDED_BY_CONFIG.values() if prefix)
    # The motion prior is data the run mines again from its own training games.
    tensors = {k: v for k, v in tensors.items() if not k.startswith(PRIOR_PREFIX)}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(not k.startswith(added) for k in missing):
        raise CheckpointError(
            f"{path}: init_from's weights do not fit the run's model "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    if model.config.motion_prior and not config.motion_prior:
        start_speeds_from_prior(model)


def start_speeds_from_prior(model: WorldModel) -> None:
    """Zero what writes the prior's speed columns, so that a model whose speed heads learned
    the speeds themselves starts predicting the prior alone: left as they were, they would add
    what they learned on top of the prior (Marth's dash then ends at 2.4 units a frame, the
    prior's 1.6 and the head's 0.8), and unlearn it only slowly on the rare frames it shows."""
    heads = model.heads
    width = sum(PLAYER_WIDTHS)
    columns = PRIOR_COLUMNS.tolist()
    with torch.no_grad():
        for player in range(2):
            rows = [player * width + c for c in columns]
            heads.player.weight[rows] = 0.0
            heads.player.bias[rows] = 0.0
        heads.conditioner.out.weight[columns] = 0.0
        heads.conditioner.out.bias[columns] = 0.0
        motion = MOTION_COLUMNS.tolist()
        heads.conditioner.onset.weight[:, [motion.index(c) for c in columns]] = 0.0
