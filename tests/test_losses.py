"""The per-head losses (`training.losses`) on real dev replays."""

from __future__ import annotations

import torch

from model.config import ModelConfig
from model.world_model import WorldModel
from training.dataset import GameDataset
from training.losses import LossWeights, compute_losses
from training.windows import split_window

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


def test_motion_heads_learn_even_where_velocities_were_not_recorded(dev_dataset_dir):
    # Positions are decoded from the velocities; in a replay without them (Slippi < 3.5) the
    # dataset fills them in from the moves, so these heads keep their loss there.
    frames, masks = GameDataset(dev_dataset_dir, "all").batch(0, 8, 20)
    prev, controls, target = split_window(frames)
    torch.manual_seed(0)
    preds = WorldModel(TINY)(prev, controls)
    nothing = {k: torch.zeros_like(v) for k, v in masks.items()}
    _, per_head = compute_losses(preds, prev, target, nothing)
    for name in ("x", "y", "vel_self_x_air", "vel_self_y", "vel_knockback_x"):
        assert per_head[f"p1_{name}"] > 0, name
    assert per_head["p1_hitstun"] == 0  # other missing fields stay masked


def test_unchanged_categories_cost_little_at_zero_output(dev_dataset_dir):
    # The copy prior: raw logits of zero already favour last frame's action.
    frames, masks = GameDataset(dev_dataset_dir, "all").batch(1, 8, 20)
    prev, controls, target = split_window(frames)
    torch.manual_seed(0)
    preds = {k: torch.zeros_like(v) for k, v in WorldModel(TINY)(prev, controls).items()}
    _, per_head = compute_losses(preds, prev, target, masks)
    unchanged = (prev["p1_action"] == target["p1_action"]).float().mean()
    assert unchanged > 0.8
    assert per_head["p1_action"] < 0.5 * torch.log(torch.tensor(576.0))


def test_action_onsets_weigh_more_in_the_motion_heads_only(dev_dataset_dir):
    # On a frame where the action changes, Melee sets the action's speed; `onset` weighs the
    # motion heads' loss there, as a weighted mean over the head's frames.
    frames, masks = GameDataset(dev_dataset_dir, "all").batch(2, 8, 60)
    prev, controls, target = split_window(frames)
    torch.manual_seed(0)
    with torch.no_grad():
        preds = WorldModel(TINY)(prev, controls)
    onset = (target["p1_action"] != prev["p1_action"]).float()
    assert 0 < onset.sum() < onset.numel()
    _, plain = compute_losses(preds, prev, target, masks)
    _, weighted = compute_losses(preds, prev, target, masks, LossWeights(onset=10.0))
    for name in ("vel_self_x_ground", "vel_self_y", "x"):
        key = f"p1_{name}"
        assert not torch.isclose(plain[key], weighted[key]), key
        # The same loss per frame, from the plain mean's pieces: the onset frames alone...
        only_onsets = LossWeights(onset=1e9)
        _, onsets = compute_losses(preds, prev, target, masks, only_onsets)
        n, k = onset.numel(), onset.sum()
        expected = (plain[key] * n + 9 * onsets[key] * k) / (n + 9 * k)
        assert torch.isclose(weighted[key], expected, rtol=1e-3), key
    for key in ("p1_action", "p1_percent", "p1_jumps"):
        assert torch.equal(plain[key], weighted[key]), key


def test_imputed_speeds_can_be_left_out_of_the_speed_heads(dev_dataset_dir):
    """`imputed_speeds=0`: the speed heads learn from games that recorded speeds only, the
    position residual and the other heads from every game."""
    picked = {}  # recorded or not -> one window of such a game
    for frames, masks in GameDataset(dev_dataset_dir, "all").windows(60):
        picked.setdefault(bool(masks["p1_vel_self_x_air"][0]), (frames, masks))
    assert set(picked) == {True, False}  # the dev games have both kinds
    frames, masks = (
        {k: torch.cat([picked[True][i][k], picked[False][i][k]]) for k in picked[True][i]}
        for i in (0, 1)
    )
    prev, controls, target = split_window(frames)
    torch.manual_seed(0)
    with torch.no_grad():
        preds = WorldModel(TINY)(prev, controls)
    _, both = compute_losses(preds, prev, target, masks)
    _, recorded_only = compute_losses(preds, prev, target, masks, LossWeights(imputed_speeds=0.0))
    first = {k: v[:1] for k, v in frames.items()}
    prev1, _, target1 = split_window(first)
    _, alone = compute_losses(
        {k: v[:1] for k, v in preds.items()}, prev1, target1, {k: v[:1] for k, v in masks.items()}
    )
    for name in ("vel_self_x_ground", "vel_self_y"):
        key = f"p1_{name}"
        assert torch.isclose(recorded_only[key], alone[key], rtol=1e-4), key
        assert not torch.isclose(recorded_only[key], both[key]), key
    for key in ("p1_x", "p1_action"):
        assert torch.equal(recorded_only[key], both[key]), key
