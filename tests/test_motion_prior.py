"""The motion prior (model/motion_prior.py) on the real dev games: what it mines is each
character's median speed change per action frame, pointing where the character faces, and a
conditioned model's speed heads predict relative to it."""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from simulation_setup import TINY as SMALL

from core import game_state as gs
from model.checkpoint import load_checkpoint, save_checkpoint
from model.heads import PRIOR_COLUMNS
from model.motion_prior import (
    BUCKETS,
    FIELDS,
    MIN_SAMPLES,
    PRIOR_AGES,
    PRIOR_FIELDS,
    REST,
    MotionPrior,
    jump_held,
    mine_motion_prior,
    terminal_speeds,
    upgrade_prior_tensors,
)
from model.motion_prior import _needed as prior_columns
from model.world_model import WorldModel
from training.dataset import GameDataset
from training.init_from import init_weights
from training.windows import split_window, teacher_choices

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


@pytest.fixture(scope="module")
def dense(dev):
    """The miner's dense tables: speeds (characters, actions, ages, 2, BUCKETS, fields) and
    turns (characters, actions, ages, 2)."""
    columns = {k: dev.columns[k].numpy() for k in prior_columns()}
    return mine_motion_prior(columns, dev.starts.numpy())


def _bucket(speed: float) -> int:
    return int(speed > REST) - int(speed < -REST) + 1


def _samples(
    dev: GameDataset, character: int, action: int, age: int, field: str = "vel_self_x_ground"
) -> list[tuple]:
    """(change of `field`, forward-signed along x, turned, jump held the frame before, bucket of
    the forward-signed speed before) on frames of (character, action, age), counted frame by
    frame in plain Python: the reference the vectorised miner must agree with."""
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
                    before = float(f[f"{p}_{field}"][t - 1]) * sign
                    out.append((float(change) * sign, turned, held, _bucket(before)))
    return out


def test_a_cell_is_the_median_forward_speed_change_of_its_frames(dev, dense):
    """Each bucket of a cell is the median change of its frames whose speed before was in
    that bucket, and each cell's turn share is its frames'; a bucket with too few frames takes
    its cell's frames of every bucket, a half (jump held or not) with too few takes both."""
    speeds, turns = dense
    moving = np.argwhere(np.abs(speeds[..., GROUND]) > 0.5)  # a dash's first frame, or the like
    turning = np.argwhere(turns > 0.5)  # a turn's first frame, or the like
    assert len(moving) > 0 and len(turning) > 0
    for cell in (moving[0], turning[0], moving[-1], turning[-1]):
        character, action, age, held = (int(v) for v in cell[:4])
        samples = _samples(dev, character, action, age)
        half = [s for s in samples if s[2] == bool(held)]
        used = half if len(half) >= MIN_SAMPLES else samples
        assert len(used) >= MIN_SAMPLES
        changes, turned, _, buckets = zip(*used, strict=True)
        assert turns[character, action, age, held] == pytest.approx(np.mean(turned), abs=1e-3)
        for bucket in range(BUCKETS):
            own = [c for c, b in zip(changes, buckets, strict=True) if b == bucket]
            reference = own if len(own) >= MIN_SAMPLES else changes
            assert speeds[character, action, age, held, bucket, GROUND] == pytest.approx(
                float(np.median(reference)), abs=2e-3
            )


def test_the_buckets_tell_friction_from_a_still_character(dev, dense):
    """A shield slows a character that ran into it (friction against the motion, whichever
    way it went) and leaves a still one still: the cells of the rest bucket are 0, where the
    median of all its frames, mostly dash-ins, would push a still character back."""
    speeds, _ = dense
    shields = (178, 179)  # GUARD_ON, GUARD: the shield raised and held
    still, moving = collections.Counter(), collections.Counter()
    for p in gs.PLAYERS:
        c = {k: dev.columns[f"{p}_{k}"].numpy() for k in ("character", "action", "state_age")}
        ground = dev.columns[f"{p}_vel_self_x_ground"].numpy()
        for t in np.flatnonzero(np.isin(c["action"][1:], shields)) + 1:
            key = (int(c["character"][t]), int(c["action"][t]), min(int(c["state_age"][t]), 31))
            (still if abs(ground[t - 1]) <= REST else moving)[key] += 1
    judged = [k for k in still if still[k] >= 2 * MIN_SAMPLES and moving[k] >= 2 * MIN_SAMPLES]
    assert judged
    slowed = 0
    for character, action, age in judged:
        backward, rest, forward = speeds[character, action, age, 0, :, GROUND]
        assert abs(rest) < REST
        slowed += forward < -REST or backward > REST
    assert slowed


def test_a_held_jump_input_gives_the_full_hop(dev, dense):
    """A jump's first frame: with the jump input held on the frame before (the jump squat's
    last), the cell holds the full hop's speed, else the short hop's, as Melee decides."""
    speeds, _ = dense
    y = PRIOR_FIELDS.index("vel_self_y")
    rest = 1
    checked = 0
    for character in range(27):
        for action in (25, 26):  # JUMPING_FORWARD, JUMPING_BACKWARD
            samples = _samples(dev, character, action, 0, "vel_self_y")
            full = [c for c, _, held, b in samples if held and b == rest]
            short = [c for c, _, held, b in samples if not held and b == rest]
            if min(len(full), len(short)) < MIN_SAMPLES:
                continue
            cell = speeds[character, action, 0, :, rest, y]
            assert cell[1] == pytest.approx(float(np.median(full)), abs=2e-3)
            assert cell[0] == pytest.approx(float(np.median(short)), abs=2e-3)
            assert cell[1] > cell[0] + 0.5
            checked += 1
    assert checked >= 1


def test_cells_with_too_few_frames_stay_empty(dev, dense):
    speeds, turns = dense
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
    assert all(not speeds[k].any() and not turns[k].any() for k in rare)


def test_mirrored_games_mine_the_same_prior(dev, mined):
    """x changes are stored facing forward: the games seen in a mirror give the same table."""
    prior, _ = mined
    columns = dict(dev.columns)
    for p in gs.PLAYERS:
        for name in ("facing", "vel_self_x_ground", "vel_self_x_air"):
            columns[f"{p}_{name}"] = -columns[f"{p}_{name}"]
    mirrored = MotionPrior()
    mirrored.fill(columns, dev.starts)
    for name, table in prior.state_dict().items():
        assert torch.equal(mirrored.state_dict()[name], table), name


def test_the_speed_heads_predict_relative_to_the_prior(dev, mined):
    """With the table's cell for the real action, character and age changed by +1 unit, the
    predicted ground speed moves by 1 unit where the character faces, and nothing else does."""
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    prev, controls, target = split_window(next(iter(dev.windows(40, 4)))[0])
    teacher = teacher_choices(target)
    before = model(prev, controls, teacher=teacher)
    with torch.no_grad():  # every pair on the empty row, which every cell of it now moves
        model.heads.conditioner.prior.speeds[0] += 1
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
        prior = model.heads.conditioner.prior
        prior.row_of[character, action] = 1
        prior.turns[1, age[0, 10]] = 1.0
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
    model.heads.conditioner.prior.load_state_dict(prior.state_dict())
    path = tmp_path / "prior.safetensors"
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path, expect_config=TINY)
    for name, table in prior.state_dict().items():
        assert torch.equal(loaded.heads.conditioner.prior.state_dict()[name], table), name
    # A conditioned checkpoint without the prior starts a run of the model with one.
    older = dataclasses.replace(TINY, motion_prior=False)
    old = tmp_path / "old.safetensors"
    meta = {"model_config": older.to_dict(), "schema_version": gs.SCHEMA_VERSION}
    save_file(WorldModel(older).state_dict(), str(old), metadata={"playmodel": json.dumps(meta)})
    fresh = WorldModel(TINY)
    init_weights(fresh, old)
    assert not fresh.heads.conditioner.prior.speeds.any()


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
    model.heads.conditioner.prior.load_state_dict(prior.state_dict())
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
    speeds_before = torch.stack([prev[f"p1_{name}"] for name in PRIOR_FIELDS], -1)
    expected = prior.speed_changes(cell, facing, speeds_before)
    for i, name in enumerate(PRIOR_FIELDS):
        assert torch.allclose(out[f"p1_{name}"] * 0.5, expected[..., i], atol=1e-5), name
    assert torch.allclose(out["p1_percent"], before["p1_percent"])


def test_friction_stops_at_rest_and_a_script_turns_the_speed_around():
    """A change of friction's size against the motion stops the speed at 0 (Melee's friction
    never reverses a character); a larger one, a dash turned back, reverses it."""
    prior = MotionPrior()
    dense = np.zeros((27, gs.ACTION_VOCAB, PRIOR_AGES, 2, BUCKETS, FIELDS), np.float32)
    dense[1, 179, :, :, 2, GROUND] = -0.08  # Fox's shield, moving forward: friction
    dense[1, 20, :, :, 0, GROUND] = 3.0  # Fox's dash, moving backward: the script's speed
    prior.set_dense(dense, np.zeros(dense.shape[:4], np.float32))

    def change(action: int, speed: float, facing: float = 1.0) -> float:
        cell = prior(
            torch.tensor([1]), torch.tensor([action]), torch.tensor([3]), torch.tensor([0])
        )
        before = torch.zeros(1, FIELDS)
        before[0, GROUND] = speed
        return float(prior.speed_changes(cell, torch.tensor([facing]), before)[0, GROUND])

    assert change(179, 1.0) == pytest.approx(-0.08, abs=1e-3)
    assert change(179, 0.05) == pytest.approx(-0.05, abs=1e-3)  # stops at 0, not at -0.03
    assert change(179, 0.0) == 0.0
    assert change(179, -0.05, facing=-1.0) == pytest.approx(0.05, abs=1e-3)  # the same, facing left
    assert change(20, -1.0) == pytest.approx(3.0, abs=1e-3)  # through 0, to the dash's speed


def test_predicting_the_prior_s_cell_is_exact_unless_the_heads_correct_it_clearly(dev):
    """Predicting, a speed head's own correction under PRIOR_SNAP is dropped, so that a script
    the prior knows (a jump's rise) is followed to the hundredth; a larger one is kept.
    Teacher-forced, the loss sees every correction."""
    from model.heads import PRIOR_SNAP

    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    prev, controls, _ = split_window(next(iter(dev.windows(40, 4)))[0])
    player = model.heads.player
    width = player.out_features // 2
    with torch.no_grad():
        model.heads.conditioner.prior.speeds[0] = 0.5  # every cell: +0.5 units a frame
        rows = [p * width + int(c) for p in range(2) for c in PRIOR_COLUMNS]
        player.weight[rows] = 0.0
        for correction, kept in ((PRIOR_SNAP / 2, False), (PRIOR_SNAP * 2, True)):
            player.bias[rows] = correction / 0.5  # in the heads' scale
            out = model(prev, controls)
            y = out["p1_vel_self_y"] * 0.5
            expected = 0.5 + (correction if kept else 0.0)
            assert torch.allclose(y, torch.full_like(y, expected), atol=1e-5), correction


def test_a_checkpoint_of_the_first_layout_loads_and_predicts_as_before(dense):
    """A checkpoint whose prior is one dense table (one change per cell whatever the speed
    before: prior5's) loads, with that change in every bucket."""
    speeds, turns = dense
    table = np.concatenate([speeds[..., 1, :], turns[..., None]], -1)  # the rest bucket
    key = "heads.conditioner.prior.table"
    upgraded = upgrade_prior_tensors({key: torch.from_numpy(table).half(), "other": torch.ones(1)})
    assert key not in upgraded and torch.equal(upgraded["other"], torch.ones(1))
    prior = MotionPrior()
    prior.load_state_dict(
        {k.removeprefix("heads.conditioner.prior."): v for k, v in upgraded.items() if k != "other"}
    )
    character, action = np.argwhere(np.abs(table[..., :FIELDS]).sum((2, 3, 4)) > 0)[0]
    cell_speeds, cell_turns = prior.cells(int(character), int(action))
    for bucket in range(BUCKETS):
        expected = torch.from_numpy(table[character, action, ..., :FIELDS]).half().float()
        assert torch.equal(cell_speeds[..., bucket, :], expected)
    assert torch.equal(
        cell_turns, torch.from_numpy(table[character, action, ..., FIELDS]).half().float()
    )


# Terminal fall speeds in Melee's own data (libmelee's characterdata.csv, TerminalVelocity).
MELEE_TERMINAL = {1: 2.8, 2: 2.9, 7: 2.13, 9: 1.5, 15: 1.3, 18: 2.2, 22: 3.1, 25: 2.0}


def test_each_character_s_terminal_fall_speed_is_mined_from_its_steady_falls(dev):
    """The slower of the two speeds at which a character's real falls stay put is Melee's
    terminal speed for it (the faster is the fast fall's)."""
    columns = {k: dev.columns[k].numpy() for k in prior_columns()}
    terminal = terminal_speeds(columns, dev.starts.numpy())
    known = [c for c in MELEE_TERMINAL if terminal[c] > 0]
    assert known
    for character in known:
        assert terminal[character] == pytest.approx(MELEE_TERMINAL[character], abs=1e-3)


def test_a_fall_speeds_up_to_the_terminal_speed_and_a_fast_fall_keeps_its_own():
    prior = MotionPrior()
    dense = np.zeros((27, gs.ACTION_VOCAB, PRIOR_AGES, 2, BUCKETS, FIELDS), np.float32)
    y = PRIOR_FIELDS.index("vel_self_y")
    dense[1, 29, :, :, :, y] = -0.23  # Fox's FALL: his gravity, whatever the speed before
    prior.set_dense(dense, np.zeros(dense.shape[:4], np.float32))
    prior.terminal[1] = 2.8

    def change(speed: float) -> float:
        cell = prior(torch.tensor([1]), torch.tensor([29]), torch.tensor([5]), torch.tensor([0]))
        before = torch.zeros(1, FIELDS)
        before[0, y] = speed
        return float(prior.speed_changes(cell, torch.tensor([1.0]), before)[0, y])

    assert change(1.0) == pytest.approx(-0.23, abs=1e-3)  # still rising
    assert change(-1.0) == pytest.approx(-0.23, abs=1e-3)
    assert change(-2.7) == pytest.approx(-0.1, abs=1e-3)  # reaches 2.8, not 2.93
    assert change(-2.8) == 0.0
    assert change(-3.4) == 0.0  # a fast fall keeps its speed
    prior.terminal[1] = 0.0  # not known: the cell alone
    assert change(-3.4) == pytest.approx(-0.23, abs=1e-3)
