"""The motion prior (model/motion_prior.py) on the real dev games: what it mines is each
character's median speed change per action frame, pointing where the character faces, and a
conditioned model's speed heads predict relative to it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from simulation_setup import TINY as SMALL

from core import game_state as gs
from model.checkpoint import load_checkpoint, save_checkpoint
from model.motion_prior import (
    MIN_SAMPLES,
    PRIOR_AGES,
    PRIOR_FIELDS,
    TURN,
    MotionPrior,
    jump_held,
)
from model.world_model import WorldModel
from training.dataset import GameDataset
from training.train import init_weights, split_window, teacher_choices

TINY = dataclasses.replace(SMALL, action_conditioned=True, condition_dim=16, motion_prior=True)
GROUND = PRIOR_FIELDS.index("vel_self_x_ground")


@pytest.fixture(scope="module")
def dev(dev_dataset_dir):
    return GameDataset(dev_dataset_dir, "all")


@pytest.fixture(scope="module")
def mined(dev):
    prior = MotionPrior()
    cells = prior.fill(dev.columns, dev.starts)
    return prior, cells


def _samples(
    dev: GameDataset, character: int, action: int, age: int, field: str = "vel_self_x_ground"
) -> list[tuple]:
    """(change of `field`, forward-signed along x, turned, jump held the frame before) on frames of
    (character, action, age), counted frame by frame in plain Python: the reference the
    vectorised miner must agree with."""
    out = []
    for game in dev.games:
        f = {k: v.numpy() for k, v in game.frames.items()}
        for p in gs.PLAYERS:
            for t in range(1, len(f["frame"])):
                if (
                    f[f"{p}_character"][t] == character
                    and f[f"{p}_action"][t] == action
                    and min(f[f"{p}_state_age"][t], PRIOR_AGES - 1) == age
                ):
                    change = f[f"{p}_{field}"][t] - f[f"{p}_{field}"][t - 1]
                    facing = f[f"{p}_facing"][t] > 0
                    sign = 1.0 if facing or field == "vel_self_y" else -1.0
                    turned = facing != (f[f"{p}_facing"][t - 1] > 0)
                    held = bool(int(f[f"{p}_buttons"][t - 1]) & (0x400 | 0x800)) or bool(
                        f[f"{p}_joystick_y"][t - 1] > 0.6
                    )
                    out.append((float(change) * sign, turned, held))
    return out


def test_a_cell_is_the_median_forward_speed_change_of_its_frames(dev, mined):
    """Each cell is its own frames' median change and turn share; a half (jump held or not)
    with too few frames takes the cell's frames of both halves."""
    prior, cells = mined
    assert cells > 100
    table = prior.table.float()
    moving = torch.nonzero(table[..., GROUND].abs() > 0.5)  # a dash's first frame, or the like
    turning = torch.nonzero(table[..., TURN] > 0.5)  # a turn's first frame, or the like
    assert len(moving) > 0 and len(turning) > 0
    for cell in (moving[0], turning[0], moving[-1], turning[-1]):
        character, action, age, held = (int(v) for v in cell)
        samples = _samples(dev, character, action, age)
        half = [s for s in samples if s[2] == bool(held)]
        used = half if len(half) >= MIN_SAMPLES else samples
        assert len(used) >= MIN_SAMPLES
        changes, turns, _ = zip(*used, strict=True)
        assert float(table[character, action, age, held, GROUND]) == pytest.approx(
            float(np.median(changes)), abs=2e-3
        )
        assert float(table[character, action, age, held, TURN]) == pytest.approx(
            float(np.mean(turns)), abs=1e-3
        )


def test_a_held_jump_input_gives_the_full_hop(dev, mined):
    """A jump's first frame: with the jump input held on the frame before (the jump squat's
    last), the cell holds the full hop's speed, else the short hop's, as Melee decides."""
    prior, _ = mined
    y = PRIOR_FIELDS.index("vel_self_y")
    checked = 0
    for character in range(27):
        for action in (25, 26):  # JUMPING_FORWARD, JUMPING_BACKWARD
            samples = _samples(dev, character, action, 0, "vel_self_y")
            full = [c for c, _, held in samples if held]
            short = [c for c, _, held in samples if not held]
            if min(len(full), len(short)) < MIN_SAMPLES:
                continue
            cell = prior.table[character, action, 0].float()
            assert float(cell[1, y]) == pytest.approx(float(np.median(full)), abs=2e-3)
            assert float(cell[0, y]) == pytest.approx(float(np.median(short)), abs=2e-3)
            assert cell[1, y] > cell[0, y] + 0.5
            checked += 1
    assert checked >= 1


def test_cells_with_too_few_frames_stay_empty(dev, mined):
    prior, _ = mined
    counts = {}
    for game in dev.games:
        for p in gs.PLAYERS:
            keys = zip(
                game.frames[f"{p}_character"][1:].tolist(),
                game.frames[f"{p}_action"][1:].tolist(),
                game.frames[f"{p}_state_age"][1:].clamp(max=PRIOR_AGES - 1).tolist(),
                strict=True,
            )
            for key in keys:
                key = tuple(int(v) for v in key)
                counts[key] = counts.get(key, 0) + 1
    rare = [k for k, n in counts.items() if n < MIN_SAMPLES]
    assert rare
    assert all(not prior.table[k].any() for k in rare)


def test_mirrored_games_mine_the_same_prior(dev, mined):
    """x changes are stored facing forward: the games seen in a mirror give the same table."""
    prior, _ = mined
    columns = dict(dev.columns)
    for p in gs.PLAYERS:
        for name in ("facing", "vel_self_x_ground", "vel_self_x_air"):
            columns[f"{p}_{name}"] = -columns[f"{p}_{name}"]
    mirrored = MotionPrior()
    mirrored.fill(columns, dev.starts)
    assert torch.equal(mirrored.table, prior.table)


def test_the_speed_heads_predict_relative_to_the_prior(dev, mined):
    """With the table's cell for the real action, character and age changed by +1 unit, the
    predicted ground speed moves by 1 unit where the character faces, and nothing else does."""
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    prev, controls, target = split_window(next(iter(dev.windows(40, 4)))[0])
    teacher = teacher_choices(target)
    before = model(prev, controls, teacher=teacher)
    action = teacher[..., 0, 0].long()  # P1's real action, (B, T)
    age = torch.where(prev["p1_action"] == action, prev["p1_state_age"].long() + 1, 0)
    character = prev["p1_character"].long()
    with torch.no_grad():
        held = jump_held(prev["p1_buttons"], prev["p1_joystick_y"]).long()
        cells = (character, action, age.clamp(max=PRIOR_AGES - 1), held)
        model.heads.conditioner.prior.table[(*cells, slice(0, TURN))] += 1
    after = model(prev, controls, teacher=teacher)
    scale = 0.5  # frame_spec: the speed heads' scale
    facing = torch.where(teacher[..., 0, 1] > 0, 1.0, -1.0)
    moved = (after["p1_vel_self_x_ground"] - before["p1_vel_self_x_ground"]) * scale
    assert torch.allclose(moved, facing, atol=1e-3)
    assert torch.allclose(
        (after["p1_vel_self_y"] - before["p1_vel_self_y"]) * scale, torch.ones_like(moved)
    )
    assert torch.equal(after["p1_percent"], before["p1_percent"])


def test_where_the_script_turns_the_character_the_model_turns_it(dev, mined):
    """A cell whose frames all turned replaces the facing's copy prior with a turn: predicting
    on its own (no teacher), an untrained model then turns on exactly those frames."""
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    prev, controls, _ = split_window(next(iter(dev.windows(40, 4)))[0])
    with torch.no_grad():
        plain = model(prev, controls)
        kept = plain["p1_facing"] * torch.where(prev["p1_facing"] > 0, 1.0, -1.0) > 0
        assert kept.all()  # the copy prior keeps the facing everywhere
        # The action it chose on the first window's 10th frame: make that cell a turn.
        chosen = plain["p1_action"].argmax(-1)
        action, character = chosen[0, 10], prev["p1_character"][0, 10].long()
        age = torch.where(prev["p1_action"] == chosen, prev["p1_state_age"].long() + 1, 0)
        model.heads.conditioner.prior.table[character, action, age[0, 10], :, TURN] = 1.0
        turned = model(prev, controls)
    same_cell = (
        (chosen == action)
        & (prev["p1_character"].long() == character)
        & (age.clamp(max=PRIOR_AGES - 1) == age[0, 10])
    )
    flipped = turned["p1_facing"] * torch.where(prev["p1_facing"] > 0, 1.0, -1.0) < 0
    assert torch.equal(flipped, same_cell)


def test_the_checkpoint_keeps_the_prior_and_an_older_one_starts_a_run(mined, tmp_path):
    prior, _ = mined
    model = WorldModel(TINY)
    model.heads.conditioner.prior.table.copy_(prior.table)
    path = tmp_path / "prior.safetensors"
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path, expect_config=TINY)
    assert torch.equal(loaded.heads.conditioner.prior.table, prior.table)
    # A conditioned checkpoint without the prior starts a run of the model with one.
    older = dataclasses.replace(TINY, motion_prior=False)
    old = tmp_path / "old.safetensors"
    meta = {"model_config": older.to_dict(), "schema_version": gs.SCHEMA_VERSION}
    save_file(WorldModel(older).state_dict(), str(old), metadata={"playmodel": json.dumps(meta)})
    fresh = WorldModel(TINY)
    init_weights(fresh, old)
    assert not fresh.heads.conditioner.prior.table.any()


def test_a_run_that_adds_the_prior_starts_its_speeds_from_it(dev, mined, tmp_path):
    """From a checkpoint without the prior, the speed heads start at zero, so that the first
    predicted speed changes are the prior's cells exactly; the other heads keep their weights."""
    prior, _ = mined
    torch.manual_seed(0)
    older = dataclasses.replace(TINY, motion_prior=False)
    trained = WorldModel(older)
    with torch.no_grad():  # as if trained: every output layer has weights
        for parameter in trained.heads.parameters():
            parameter.normal_(0, 0.1)
    old = tmp_path / "old.safetensors"
    meta = {"model_config": older.to_dict(), "schema_version": gs.SCHEMA_VERSION}
    save_file(trained.state_dict(), str(old), metadata={"playmodel": json.dumps(meta)})
    model = WorldModel(TINY).eval()
    init_weights(model, old)
    model.heads.conditioner.prior.table.copy_(prior.table)
    prev, controls, target = split_window(next(iter(dev.windows(40, 4)))[0])
    teacher = teacher_choices(target)
    with torch.no_grad():
        out = model(prev, controls, teacher=teacher)
        before = trained.eval()(prev, controls, teacher=teacher)
    action = teacher[..., 0, 0].long()
    age = torch.where(prev["p1_action"] == action, prev["p1_state_age"].long() + 1, 0)
    held = jump_held(prev["p1_buttons"], prev["p1_joystick_y"])
    cell = prior(prev["p1_character"].long(), action, age, held)
    facing = torch.where(teacher[..., 0, 1] > 0, 1.0, -1.0)
    expected = prior.speed_changes(cell, facing)
    for i, name in enumerate(PRIOR_FIELDS):
        assert torch.allclose(out[f"p1_{name}"] * 0.5, expected[..., i], atol=1e-5), name
    assert torch.allclose(out["p1_percent"], before["p1_percent"])
