"""Action-conditioned heads (ModelConfig.action_conditioned) on real frames: the speeds follow
the action the frame is predicted for, training conditions on the real one, prediction on the
model's own choice, which decoding then keeps; old checkpoints start such a model unchanged."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from core import game_state as gs
from core.controller import Controller
from core.replay_reader import read_replay
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import ModelConfig, load_config
from model.decoding import decode
from model.frames import frames_from_table
from model.game_start import GameSetup
from model.heads import ACTION_COLUMNS
from model.quantize import quantize_int8
from model.simulation import Simulation
from model.world_model import WorldModel
from training.init_from import init_weights
from training.losses import compute_losses
from training.optim import make_optimizer
from training.run_config import TrainConfig
from training.windows import split_window, teacher_choices

TINY = ModelConfig(
    d_model=32,
    n_layers=2,
    d_state=16,
    expand=2,
    headdim=16,
    chunk_size=16,
    action_conditioned=True,
    condition_dim=16,
)
VELOCITIES = ("p1_vel_self_x_ground", "p1_vel_self_x_air", "p1_vel_self_y")


@pytest.fixture(scope="module")
def model():
    """A tiny conditioned model whose conditioner is not at its zero start, so that it acts."""
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    with torch.no_grad():
        for parameter in model.heads.conditioner.out.parameters():
            parameter.normal_(0, 0.5)
        model.heads.conditioner.onset.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def windows(replays):
    """Four 40-frame windows of a real game, as (prev, controls, target), batch first."""
    frames = frames_from_table(
        read_replay(replays / "dev" / "slippi-js__slp__techTester.slp").table
    )
    starts = (300, 900, 1500, 2100)
    batch = {k: torch.stack([v[s : s + 41] for s in starts]) for k, v in frames.items()}
    return split_window(batch)


def test_an_unconditioned_checkpoint_starts_a_conditioned_run_unchanged(windows, tmp_path):
    torch.manual_seed(0)
    base = WorldModel(load_config("mamba2-small")).eval()
    with torch.no_grad():  # as if trained: the heads' output layers are not at their start
        for parameter in base.heads.parameters():
            parameter.normal_(0, 0.05)
    path = tmp_path / "unconditioned.safetensors"
    save_checkpoint(path, base)
    conditioned = WorldModel(load_config("mamba2-small-conditioned"))
    init_weights(conditioned, path)
    prev, controls, target = windows
    with torch.no_grad():
        before = base(prev, controls)
        taught = conditioned(prev, controls, teacher=teacher_choices(target))
        free = conditioned(prev, controls)
    for key in before:
        if key.endswith(("_action", "_facing")):  # masked to the choice (test below)
            continue
        assert torch.allclose(before[key], taught[key], atol=1e-5), key
        assert torch.allclose(before[key], free[key], atol=1e-5), key
    a, b = decode(before, prev, controls), decode(free, prev, controls)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_a_checkpoint_of_another_model_names_the_field(model, tmp_path):
    path = tmp_path / "other.safetensors"
    save_checkpoint(path, WorldModel(dataclasses.replace(TINY, action_conditioned=False)))
    with pytest.raises(CheckpointError, match="d_model: 32"):
        init_weights(WorldModel(load_config("mamba2-small-conditioned")), path)


def test_the_speeds_follow_the_action_they_are_predicted_for(model, windows):
    prev, controls, target = windows
    real = teacher_choices(target)
    other = real.clone()
    other[..., 0] = 233  # ROLL_FORWARD, wherever the real action is not
    with torch.no_grad():
        taught = model(prev, controls, teacher=real)
        rolled = model(prev, controls, teacher=other)
    for key in VELOCITIES:
        assert not torch.allclose(taught[key], rolled[key]), key
    # The action's own logits do not depend on the action they choose.
    assert torch.equal(taught["p1_action"], rolled["p1_action"])


def test_an_actions_x_speeds_point_where_the_character_faces(model, windows):
    prev, controls, target = windows
    right, left = teacher_choices(target), teacher_choices(target)
    right[..., 1], left[..., 1] = 1, -1
    uncorrected = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in uncorrected.heads.conditioner.out.parameters():
            parameter.zero_()
        uncorrected.heads.conditioner.onset.weight.zero_()
        base = uncorrected(prev, controls, teacher=right)
        faces_right = model(prev, controls, teacher=right)
        faces_left = model(prev, controls, teacher=left)
    for key in ("p1_vel_self_x_ground", "p1_vel_self_x_air", "p1_x"):
        towards_right = faces_right[key] - base[key]
        assert towards_right.abs().max() > 0, key
        assert torch.allclose(faces_left[key] - base[key], -towards_right, atol=1e-5), key
    for key in ("p1_vel_self_y", "p1_vel_knockback_x"):  # not a direction along x
        assert torch.allclose(faces_right[key], faces_left[key]), key


def test_prediction_conditions_on_its_own_choice_and_decoding_keeps_it(model, windows):
    prev, controls, _ = windows
    with torch.no_grad():
        free = model(prev, controls)
        chosen = free["p1_action"].argmax(-1), free["p2_action"].argmax(-1)
        facing = (
            torch.where(free["p1_facing"] > 0, 1, -1),
            torch.where(free["p2_facing"] > 0, 1, -1),
        )
        own = torch.stack([torch.stack(chosen, -1), torch.stack(facing, -1)], -1)
        taught = model(prev, controls, teacher=own)
    for key in VELOCITIES:
        assert torch.allclose(free[key], taught[key], atol=1e-6), key
    for seed in (1, 2):  # a sample at any temperature picks the conditioned-on choice
        generator = torch.Generator().manual_seed(seed)
        frame = decode(free, prev, controls, temperature=1.5, generator=generator)
        assert torch.equal(frame["p1_action"], chosen[0])
        assert torch.equal(frame["p2_action"], chosen[1])
        assert torch.equal(frame["p1_facing"], facing[0])


def test_training_teaches_the_conditioner_from_the_real_next_action(model, windows):
    prev, controls, target = windows
    trained = WorldModel(TINY)
    trained.load_state_dict(model.state_dict())
    loss, _ = compute_losses(trained(prev, controls, teacher=teacher_choices(target)), prev, target)
    loss.backward()
    conditioner = trained.heads.conditioner
    assert conditioner.action.weight.grad.abs().sum() > 0
    assert conditioner.out.weight.grad.abs().sum() > 0
    # Only the actions that occur are embedded, so only their rows learn.
    used = torch.unique(teacher_choices(target)[..., 0].clamp(max=gs.ACTION_VOCAB - 1))
    learned = conditioner.action.weight.grad.abs().sum(-1).nonzero().squeeze(-1)
    assert set(learned.tolist()) <= set(used.tolist())


def run(sim: Simulation, frames: int, seed: int = 0) -> list[dict]:
    game = sim.new_game(GameSetup(stage=31, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(frames):
        pressed = torch.rand(3, generator=generator) < 0.3
        stick = (torch.rand(2, generator=generator) * 2 - 1).tolist()
        buttons = frozenset(b for b, on in zip("AXR", pressed.tolist(), strict=True) if on)
        controls = Controller(stick_x=stick[0], stick_y=stick[1], buttons=buttons).columns(0)
        out.append(dict(sim.step({game: controls})[game].frame))
    return out


def test_the_traced_live_step_equals_the_eager_one(model):
    eager, traced = Simulation(model, trace=False), Simulation(model)
    assert traced.trace
    for a, b in zip(run(eager, 40), run(traced, 40), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampled_games_are_reproducible_and_differ_by_seed(model):
    first, again = run(Simulation(model, 1.0), 30), run(Simulation(model, 1.0), 30)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again, strict=True) for k in a)
    other = run(Simulation(model, 1.0), 30, seed=5)
    assert any(not torch.equal(a[k], b[k]) for a, b in zip(first, other, strict=True) for k in a)


def test_checkpoint_round_trip_and_int8(model, windows, tmp_path):
    path = tmp_path / "conditioned.safetensors"
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path, expect_config=TINY)
    prev, controls, _ = windows
    one = {k: v[:, 0] for k, v in prev.items()}, {k: v[:, 0] for k, v in controls.items()}
    with torch.no_grad():
        a = model.step(*one, model.allocate_inference_cache(4))
        b = loaded.eval().step(*one, loaded.allocate_inference_cache(4))
        int8 = quantize_int8(model)
        c = int8.step(*one, int8.allocate_inference_cache(4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert c["p1_action"].shape[-1] == ACTION_COLUMNS.stop - ACTION_COLUMNS.start
    assert torch.isfinite(c["p1_vel_self_y"]).all()


def test_the_action_tables_learn_at_their_own_rate_without_decay(model):
    config = TrainConfig(lr=1e-3, weight_decay=0.1, condition_lr_scale=10.0)
    groups = make_optimizer(model, config).param_groups
    tables = groups[-1]
    conditioner = model.heads.conditioner
    assert {id(p) for p in tables["params"]} == {
        id(conditioner.action.weight),
        id(conditioner.age.weight),
        id(conditioner.onset.weight),
    }
    assert (tables["weight_decay"], tables["lr_scale"]) == (0.0, 10.0)
    # An unconditioned model keeps the two groups its saved optimiser states have.
    plain = WorldModel(dataclasses.replace(TINY, action_conditioned=False))
    assert len(make_optimizer(plain, config).param_groups) == 2


def test_an_actions_first_frames_read_their_own_onset_rows(model, windows):
    """The onset table's row of (action, age) corrects the motion heads on the action's first
    frames only: a row changed moves those frames' speeds and nothing on later frames."""
    prev, controls, target = windows
    teacher = teacher_choices(target)
    changed = copy.deepcopy(model)
    action = 233  # ROLL_FORWARD, given as every frame's action
    teacher[..., 0] = action
    # The first two windows are rolling already (for 6 frames), the others begin rolling.
    prev = dict(prev)
    prev["p1_action"], prev["p1_state_age"] = (
        prev["p1_action"].clone(),
        prev["p1_state_age"].clone(),
    )
    prev["p1_action"][:2], prev["p1_state_age"][:2] = action, 5
    ages = torch.where(prev["p1_action"] == action, prev["p1_state_age"] + 1, 0)
    with torch.no_grad():
        changed.heads.conditioner.onset.weight[action] += 1.0  # (ROLL_FORWARD, age 0)
        before = model(prev, controls, teacher=teacher)
        after = changed(prev, controls, teacher=teacher)
    first = ages == 0
    assert first.any() and (~first).any()
    for key in ("p1_vel_self_x_ground", "p1_vel_self_y", "p1_y"):
        moved = (after[key] - before[key]).abs() > 0.5
        assert torch.equal(moved, first), key
    assert torch.equal(after["p1_percent"], before["p1_percent"])


def test_a_checkpoint_from_before_the_onset_table_starts_a_run(model, tmp_path):
    """A conditioned checkpoint saved without the onset table initialises today's model, the
    table at zero; one missing more than added modules is refused."""
    path, broken = tmp_path / "old.safetensors", tmp_path / "broken.safetensors"
    state = {k: v for k, v in model.state_dict().items() if "onset" not in k}
    meta = {"model_config": TINY.to_dict(), "schema_version": gs.SCHEMA_VERSION}
    save_file(state, str(path), metadata={"playmodel": json.dumps(meta)})
    fresh = WorldModel(TINY)
    init_weights(fresh, path)
    assert torch.equal(
        fresh.heads.conditioner.onset.weight, torch.zeros_like(fresh.heads.conditioner.onset.weight)
    )
    assert torch.equal(fresh.heads.player.weight, model.heads.player.weight)
    del state["heads.player.weight"]
    save_file(state, str(broken), metadata={"playmodel": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"heads\.player\.weight"):
        init_weights(WorldModel(TINY), broken)
