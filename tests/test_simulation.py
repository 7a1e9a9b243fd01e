"""The simulation core: rules (KO, respawn, stocks, game end), batching, snapshots, starts."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from core import game_state as gs
from core.actions import ON_HALO_WAIT
from core.replay_reader import read_replay
from core.stages import get_stage, legal_stage_ids
from model.config import ModelConfig
from model.decoding import decode
from model.frames import cast_to, controls_of, frames_from_table, index, stack
from model.packed_frame import PackedFrame, pack
from model.policies import RandomPolicy, controls_for
from model.rules import LIMITS, RESPAWN_INVULNERABLE_FRAMES, ZONES, RuleState, apply_rules
from model.simulation import (
    FIRST_FRAME,
    MAX_GRAPH_BATCH,
    GameSetup,
    Simulation,
    graph_buckets,
    standard_start,
)
from model.world_model import WorldModel

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WorldModel(TINY).eval()


@pytest.fixture(scope="module")
def replay_frames(replays):
    return frames_from_table(read_replay(replays / "dev" / "slippi-js__slp__techTester.slp").table)


def batch_frame(stage_id: int, stocks=(4, 4)):
    frame = {k: v.unsqueeze(0) for k, v in standard_start(GameSetup(stage=stage_id)).items()}
    frame["frame"] = torch.tensor([100])
    frame["p1_stocks"] = torch.tensor([stocks[0]])
    frame["p2_stocks"] = torch.tensor([stocks[1]])
    return frame, RuleState.new(get_stage(stage_id), stocks)


def beyond(stage, zone):
    """A point 5 units past a blast zone, level with the stage centre."""
    return {
        "left": (stage.blast_left - 5, 20.0),
        "right": (stage.blast_right + 5, 20.0),
        "bottom": (0.0, stage.blast_bottom - 5),
        "top": (0.0, stage.blast_top + 5),
    }[zone]


def after_frames(frame, rules, count: int, controls=None, drift: bool = True) -> list:
    """Apply the rules `count` more times to a model that keeps predicting the same thing
    (with `drift`, a player 30 units right of the stage centre); returns the events."""
    events = []
    for _ in range(count):
        if drift:
            frame["p1_x"][0], frame["p1_y"][0], frame["p1_action"][0] = 30.0, 5.0, 14
            frame["p1_hurtbox_state"][0] = 0
        events += apply_rules(frame, rules, controls=controls)[0]
    return events


@pytest.mark.parametrize("stage_id", legal_stage_ids())
@pytest.mark.parametrize("zone", ["left", "right", "bottom", "top"])
def test_ko_through_each_blast_zone_then_death_descent_and_platform(stage_id, zone):
    from model.rules import DEAD_ACTIONS, DEAD_FRAMES, DESCENT_FRAMES, ON_HALO_DESCENT

    stage = get_stage(stage_id)
    frame, rules = batch_frame(stage_id)
    crossing = beyond(stage, zone)
    frame["p1_x"][0], frame["p1_y"][0] = crossing
    frame["p1_percent"][0] = 140.0
    frame["p1_vel_knockback_x"][0] = 9.0
    events = apply_rules(frame, rules)[0]
    assert [e.type for e in events] == ["ko"]
    assert events[0].player == 0 and events[0].detail["zone"] == zone
    assert rules.stocks[0].tolist() == [3, 4] and int(frame["p1_stocks"][0]) == 3
    # Held where they crossed, in the KO animation, for DEAD_FRAMES, whatever the model says.
    events = after_frames(frame, rules, DEAD_FRAMES - 1)
    assert events == []
    assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx(crossing)
    assert int(frame["p1_action"][0]) == DEAD_ACTIONS[zone]
    assert float(frame["p1_vel_knockback_x"][0]) == 0.0
    assert int(frame["p1_hurtbox_state"][0]) == 1
    # Then back on the revival platform, at its top, 0%, descending linearly.
    events = after_frames(frame, rules, 1)
    assert [e.type for e in events] == ["respawn"]
    x_rest, y_rest = stage.respawns[0]
    assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx(
        (x_rest, stage.respawn_top_y)
    )
    assert float(frame["p1_percent"][0]) == 0.0
    assert int(frame["p1_action"][0]) == ON_HALO_DESCENT
    after_frames(frame, rules, DESCENT_FRAMES // 2)
    assert float(frame["p1_y"][0]) == pytest.approx((y_rest + stage.respawn_top_y) / 2, abs=0.01)
    after_frames(frame, rules, DESCENT_FRAMES // 2)
    assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx((x_rest, y_rest))
    assert int(frame["p1_action"][0]) == ON_HALO_WAIT
    assert int(frame["p1_hurtbox_state"][0]) == 1  # invulnerable
    assert int(frame["p2_stocks"][0]) == 4  # the other player is untouched


def test_respawned_player_waits_on_the_platform_then_is_invulnerable_for_its_period():
    from model.rules import DEAD_FRAMES, DESCENT_FRAMES, HALO_MAX_FRAMES

    frame, rules = batch_frame(31)
    frame["p1_y"][0] = get_stage(31).blast_bottom - 1
    apply_rules(frame, rules)
    after_frames(frame, rules, DEAD_FRAMES + DESCENT_FRAMES)
    on_platform, protected = 0, 0
    x_rest, y_rest = get_stage(31).respawns[0]
    for _ in range(HALO_MAX_FRAMES + RESPAWN_INVULNERABLE_FRAMES + 10):
        after_frames(frame, rules, 1)  # the model keeps predicting a drift and no hurtbox
        if int(frame["p1_action"][0]) == ON_HALO_WAIT:
            on_platform += 1
            assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx(
                (x_rest, y_rest)
            )
        protected += int(frame["p1_hurtbox_state"][0]) == 1
    assert HALO_MAX_FRAMES - 3 <= on_platform <= HALO_MAX_FRAMES
    assert on_platform + RESPAWN_INVULNERABLE_FRAMES <= protected <= on_platform + 125


def test_touching_the_controller_leaves_the_platform_falling():
    from model.rules import DEAD_FRAMES, DESCENT_FRAMES, FALL_ACTION

    frame, rules = batch_frame(31)
    frame["p1_y"][0] = get_stage(31).blast_bottom - 1
    apply_rules(frame, rules)
    idle = {f"p1_{k}": torch.zeros(1) for k in ("joystick_x", "joystick_y")}
    idle["p1_buttons"] = torch.zeros(1, dtype=torch.long)
    after_frames(frame, rules, DEAD_FRAMES + DESCENT_FRAMES + 10, controls=idle, drift=False)
    assert int(frame["p1_action"][0]) == ON_HALO_WAIT
    tilt = dict(idle, p1_joystick_x=torch.tensor([0.2]))  # inside Melee's deadzone
    apply_rules(frame, rules, controls=tilt)
    assert int(frame["p1_action"][0]) == ON_HALO_WAIT
    push = dict(idle, p1_joystick_x=torch.tensor([0.8]))
    apply_rules(frame, rules, controls=push)
    assert int(frame["p1_action"][0]) == FALL_ACTION
    assert int(rules.halo[0, 0]) == 0
    frame["p1_x"][0] = 50.0
    apply_rules(frame, rules, controls=idle)  # gone: the model moves the player again
    assert float(frame["p1_x"][0]) == 50.0


def test_the_entry_plays_as_in_real_games(dev_dataset_dir):
    """The rules' entry animation has the real games' actions on nearly all of its frames
    (some real entries run 5 or 10 frames late), and leaves the players where real ones
    stand at GO."""
    import pyarrow.parquet as pq

    from model.rules import ENTRY_PHASES, GO_FRAME, hold_entry

    matched = []
    for path in sorted(dev_dataset_dir.glob("*.parquet")):
        real = frames_from_table(pq.read_table(path))
        stage = int(real["stage"][0])
        if stage not in legal_stage_ids() or int(real["frame"][0]) != -123:
            continue
        rules = RuleState.new(get_stage(stage), (4, 4))
        frame = {k: v[:1].clone() for k, v in real.items()}
        same, animation = 0, range(1, ENTRY_PHASES[-1][0] + 124)  # frames -122 .. -60
        for row in range(1, GO_FRAME + 124):
            prev, frame = frame, {k: v[row : row + 1].clone() for k, v in real.items()}
            frame["p1_action"][0] = 0  # whatever the model says
            hold_entry(frame, prev, rules)
            same += row in animation and int(frame["p1_action"][0] == real["p1_action"][row])
        matched.append(same / len(animation))
        for slot, p in enumerate(("p1", "p2")):
            start = get_stage(stage).starts[slot]
            spawn_x = float(real[f"{p}_x"][animation[-1]])  # the entry falls straight down
            assert float(frame[f"{p}_x"][0]) == pytest.approx(spawn_x, abs=1)
            assert float(frame[f"{p}_y"][0]) == pytest.approx(start[1], abs=0.01)
    assert len(matched) >= 3 and min(matched) > 0.6, matched
    assert sorted(matched)[len(matched) // 2] > 0.95, matched


def test_at_go_players_stand_at_the_start_points_whatever_the_model_says():
    from model.rules import GO_FRAME, STANDING_ACTION, hold_entry

    prev, rules = batch_frame(31)
    prev["frame"] = torch.tensor([GO_FRAME - 1])
    frame = {k: v.clone() for k, v in prev.items()}  # both players still in ENTRY
    frame["frame"] = torch.tensor([GO_FRAME])
    frame["p2_action"][0] = 29  # the model has p2 falling
    frame["p2_y"][0] = 90.0
    hold_entry(frame, prev, rules)
    for slot, p in enumerate(("p1", "p2")):
        x, y, ground = get_stage(31).starts[slot]
        assert int(frame[f"{p}_action"][0]) == STANDING_ACTION
        assert int(frame[f"{p}_airborne"][0]) == 0 and int(frame[f"{p}_ground"][0]) == ground
        assert float(frame[f"{p}_x"][0]) == pytest.approx(x, abs=1e-4)  # the spawn's x
        assert float(frame[f"{p}_y"][0]) == pytest.approx(y, abs=1e-4)
    frame["frame"] = torch.tensor([GO_FRAME + 1])  # after GO the model moves them
    frame["p1_action"][0] = 20
    hold_entry(frame, prev, rules)
    assert int(frame["p1_action"][0]) == 20


def test_a_game_set_up_on_the_main_stage_starts_there_on_every_legal_stage(model):
    """The probes' start: at GO both players stand on the main stage's flat part (its height
    and ground id), not on the side platforms where Melee puts them."""
    from model.rules import GO_FRAME

    sim = Simulation(model)
    stages = legal_stage_ids()
    ids = [sim.new_game(GameSetup(stage=s, on_main_stage=True)) for s in stages]
    for _ in range(GO_FRAME - FIRST_FRAME):
        sim.step({})
    frame = sim.batch_frame
    assert int(frame["frame"][0]) == GO_FRAME
    for row, stage_id in enumerate(stages):
        stage = get_stage(stage_id)
        for p in ("p1", "p2"):
            assert float(frame[f"{p}_y"][row]) == pytest.approx(stage.main.y, abs=1e-4)
            assert int(frame[f"{p}_ground"][row]) == stage.main_ground
            assert int(frame[f"{p}_airborne"][row]) == 0
            assert abs(float(frame[f"{p}_x"][row])) <= stage.main_flat_x
    assert len(ids) == len(stages)


def test_the_entry_hold_stops_a_drifting_model():
    from model.rules import hold_entry

    prev, rules = batch_frame(31)
    prev["frame"] = torch.tensor([-100])
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = torch.tensor([-99])
    frame["p1_x"][0] += 3.0
    frame["p1_y"][0] -= 2.0
    hold_entry(frame, prev, rules)
    assert float(frame["p1_x"][0]) == float(prev["p1_x"][0])
    assert float(frame["p1_y"][0]) == float(prev["p1_y"][0])


def test_stocks_change_only_by_kos():
    frame, rules = batch_frame(32)
    frame["p1_stocks"][0] = 0  # the model predicting a lost stock decides nothing
    frame["p2_stocks"][0] = 7
    assert apply_rules(frame, rules) == [[]]
    assert int(frame["p1_stocks"][0]) == 4 and int(frame["p2_stocks"][0]) == 4


def test_last_stock_ends_the_game():
    frame, rules = batch_frame(8, stocks=(1, 2))
    frame["p1_x"][0] = get_stage(8).blast_right + 1
    events = apply_rules(frame, rules)[0]
    assert [e.type for e in events] == ["ko", "game_end"]
    assert events[-1].player == 1 and events[-1].detail["method"] == "stocks"
    assert bool(rules.over[0])


def test_timer_ends_the_game(model):
    sim = Simulation(model)
    game = sim.new_game(GameSetup(stage=31, timer_frames=-100))
    ends = []
    for _ in range(30):
        ends += [e for e in sim.step({})[game].events if e.type == "game_end"]
    assert len(ends) == 1 and ends[0].detail["method"] == "time" and ends[0].frame == -100
    assert sim.is_over(game)
    assert int(sim.frame(game)["frame"]) == -100  # a finished game stays on its last frame


def test_clamping_keeps_every_field_legal():
    frame, rules = batch_frame(2)
    frame["p1_percent"][0] = 1e6
    frame["p1_shield"][0] = -5
    frame["p1_vel_self_y"][0] = -1e4
    frame["p2_x"][0] = 1e9
    frame["item_vel_x"][0, 3] = 1e5
    apply_rules(frame, rules)
    assert float(frame["p1_percent"][0]) == 999.0 and float(frame["p1_shield"][0]) == 0.0
    assert float(frame["p1_vel_self_y"][0]) == LIMITS["vel_self_y"][0]
    assert math.isfinite(float(frame["p2_x"][0]))
    assert float(frame["item_vel_x"][0, 3]) == 30.0


def check_legal(frame, stage):
    for key, value in frame.items():
        assert torch.isfinite(value.float()).all(), key
    for p in gs.PLAYERS:
        for name, (low, high) in LIMITS.items():
            value = float(frame[f"{p}_{name}"])
            assert low <= value <= high, (p, name, value)
        assert stage.blast_left - 20 <= float(frame[f"{p}_x"]) <= stage.blast_right + 20
        assert stage.blast_bottom - 20 <= float(frame[f"{p}_y"]) <= stage.blast_top + 20
        assert 0 <= int(frame[f"{p}_action"]) < 65536


DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets/checkpoints/demo.safetensors"


@pytest.fixture(scope="module", params=["untrained", "demo checkpoint"])
def any_model(request, model):
    if request.param == "untrained":
        return model
    from model.checkpoint import load_checkpoint

    assert DEMO_CHECKPOINT.exists(), "the demo checkpoint is part of the repository"
    return load_checkpoint(DEMO_CHECKPOINT)[0]


def random_match_stays_legal(model: WorldModel, frames: int) -> int:
    """`frames` frames of random inputs: every field in range, no NaN; stocks fall only with
    a KO. Finished games are replaced by new ones. Returns the number of KOs."""
    sim = Simulation(model)
    policies = (RandomPolicy(1), RandomPolicy(2))
    game, stage = sim.new_game(GameSetup(stage=31, timer_frames=40_000)), get_stage(31)
    stocks, kos, games = sim.stocks(game), 0, 1
    for step in range(frames):
        result = sim.step({game: controls_for(policies, sim.batch_frame, 0)})[game]
        if step % 10 == 0:
            check_legal(result.frame, stage)
        new_stocks = sim.stocks(game)
        ko = [e.player for e in result.events if e.type == "ko"]
        kos += len(ko)
        for player in (0, 1):
            assert new_stocks[player] == stocks[player] - ko.count(player)
        stocks = new_stocks
        if result.over:
            sim.remove_game(game)
            game, games = sim.new_game(GameSetup(stage=31, seed=games)), games + 1
            stocks = sim.stocks(game)
    return kos


def test_random_match_stays_legal(any_model):
    """3,000 frames (50 s) of random inputs, on an untrained model and on the trained demo
    checkpoint, in the default suite; the ten-minute match below runs under -m slow."""
    assert random_match_stays_legal(any_model, 3_000) > 0  # the rules caught a KO


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 36,000 steps: minutes on a busy 2-core machine
def test_ten_minute_random_match_stays_legal(any_model):
    """36,000 frames (10 minutes) of random inputs, on both models."""
    assert random_match_stays_legal(any_model, 36_000) > 0  # the rules caught a KO


def run(sim, games, frames, controls_of_frame):
    out = {g: [] for g in games}
    for t in range(frames):
        results = sim.step({g: controls_of_frame(g, t) for g in games})
        for g in games:
            out[g].append(results[g].frame)
    return {g: stack(v) for g, v in out.items()}


def replay_controls(replay_frames, offset):
    controls = controls_of(replay_frames)
    return lambda g, t: index(controls, 500 + 97 * offset[g] + t)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_games_equal_games_stepped_alone(model, replay_frames, temperature):
    setups = [GameSetup(stage=s, seed=i) for i, s in enumerate((31, 32, 8))]
    together = Simulation(model, temperature)
    ids = [together.new_game(s) for s in setups]
    batched = run(
        together, ids, 60, replay_controls(replay_frames, {g: i for i, g in enumerate(ids)})
    )
    for i, setup in enumerate(setups):
        alone = Simulation(model, temperature)
        g = alone.new_game(setup)
        single = run(alone, [g], 60, replay_controls(replay_frames, {g: i}))[g]
        for key in single:
            assert torch.allclose(single[key].float(), batched[ids[i]][key].float(), atol=1e-4), key


def test_games_join_and_leave_without_disturbing_others(model, replay_frames):
    alone = Simulation(model)
    a = alone.new_game(GameSetup(stage=2))
    reference = run(alone, [a], 40, replay_controls(replay_frames, {a: 0}))[a]
    shared = Simulation(model)
    a2 = shared.new_game(GameSetup(stage=2))
    first = run(shared, [a2], 10, replay_controls(replay_frames, {a2: 0}))[a2]
    b = shared.new_game(GameSetup(stage=28, seed=5))
    controls = replay_controls(replay_frames, {a2: 0, b: 3})
    middle = run(
        shared, [a2, b], 20, lambda g, t: controls(g, t + 10) if g == a2 else controls(g, t)
    )
    shared.remove_game(b)
    last = run(shared, [a2], 10, lambda g, t: controls(g, t + 30))[a2]
    joined = {k: torch.cat([first[k], middle[a2][k], last[k]]) for k in first}
    for key in reference:
        assert torch.allclose(reference[key].float(), joined[key].float(), atol=1e-4), key


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_snapshot_then_restore_reproduces_frames(model, replay_frames, temperature):
    sim = Simulation(model, temperature)
    g = sim.new_game(GameSetup(stage=3, seed=9))
    controls = replay_controls(replay_frames, {g: 2})
    run(sim, [g], 30, controls)
    snapshot = sim.snapshot(g)
    assert snapshot.nbytes > 0
    first = run(sim, [g], 25, lambda g, t: controls(g, t + 30))[g]
    sim.restore(g, snapshot)
    second = run(sim, [g], 25, lambda g, t: controls(g, t + 30))[g]
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_a_packed_batch_snapshots_and_restores_one_games_row(model, replay_frames):
    """After a traced step the batch frame is packed, and snapshot/restore copy a group of
    fields at a time: only the game's own row is read and written."""
    sim = Simulation(model)
    a, b, c = (sim.new_game(GameSetup(stage=3, seed=s)) for s in range(3))
    controls = replay_controls(replay_frames, {a: 0, b: 1, c: 2})
    run(sim, [a, b, c], 10, controls)
    assert isinstance(sim.batch_frame, PackedFrame) and not sim.batch_frame.replaced
    snapshot = sim.snapshot(b)
    assert torch.equal(snapshot.tensors["frame.p1_x"], sim.frame(b)["p1_x"])
    first = run(sim, [a, b, c], 15, lambda g, t: controls(g, t + 10))
    others = {g: sim.frame(g) for g in (a, c)}
    sim.restore(b, snapshot)
    assert isinstance(sim.batch_frame, PackedFrame)
    for g in (a, c):
        for key, value in others[g].items():
            assert torch.equal(sim.frame(g)[key], value), (g, key)
    second = run(sim, [b], 15, lambda g, t: controls(g, t + 10))  # b alone: same frames
    for key in first[b]:
        assert torch.allclose(first[b][key].float(), second[b][key].float(), atol=1e-4), key


def test_games_leave_and_join_together_as_they_do_one_by_one(model, replay_frames):
    """`remove_games` and `add_from_snapshots` (a server parking and resuming many sessions
    in one tick) give the batch, and the frames after, that one game at a time gives; a
    packed batch frame stays packed, so the live step need not pack it again."""
    sims = [Simulation(model), Simulation(model)]
    ids = [[sim.new_game(GameSetup(stage=3, seed=s)) for s in range(4)] for sim in sims]
    controls = {
        i: replay_controls(replay_frames, dict(zip(game_ids, range(4), strict=True)))
        for i, game_ids in enumerate(ids)
    }
    for i, sim in enumerate(sims):
        run(sim, ids[i], 8, controls[i])
    (a1, b1, c1, d1), (_, b2, _, d2) = ids
    together, one_by_one = sims
    saved = [together.snapshot(g) for g in (b1, d1)]
    together.remove_games([b1, d1])
    assert isinstance(together.batch_frame, PackedFrame) and together.game_ids == [a1, c1]
    for g in (b2, d2):
        saved_alone = one_by_one.snapshot(g)
        one_by_one.remove_game(g)
        one_by_one.add_from_snapshot(saved_alone)
    b1, d1 = together.add_from_snapshots(saved)
    assert isinstance(together.batch_frame, PackedFrame)
    assert together.game_ids == [a1, c1, b1, d1]
    for key, value in together.batch_frame.items():
        assert torch.equal(value, one_by_one.batch_frame[key]), key
    # Then ten steps on: game for game, the same frames.
    after = [run(sim, sim.game_ids, 10, lambda g, t: {}) for sim in sims]
    for g1, g2 in zip(together.game_ids, one_by_one.game_ids, strict=True):
        for key, value in after[0][g1].items():
            assert torch.allclose(value.float(), after[1][g2][key].float(), atol=1e-4), key


def test_snapshots_and_restores_of_many_games_at_once(model, replay_frames):
    """`snapshots` and `restore_many` (a server's tick with many resets, or many games
    stepped without their inputs) put each game back exactly, the others untouched."""
    sim = Simulation(model)
    a, b, c = (sim.new_game(GameSetup(stage=3, seed=s)) for s in range(3))
    controls = replay_controls(replay_frames, {a: 0, b: 1, c: 2})
    run(sim, [a, b, c], 6, controls)
    saved = sim.snapshots([c, a])
    assert [s.setup.seed for s in saved] == [2, 0]
    first = run(sim, [a, b, c], 12, lambda g, t: controls(g, t + 6))
    b_now = sim.frame(b)
    sim.restore_many([(a, saved[1]), (c, saved[0])])
    assert all(torch.equal(sim.frame(b)[k], v) for k, v in b_now.items())
    second = run(sim, [a, b, c], 12, lambda g, t: controls(g, t + 6))
    for g in (a, c):
        for key in first[g]:
            assert torch.allclose(first[g][key].float(), second[g][key].float(), atol=1e-4), key


def test_snapshot_size_is_the_cache_plus_a_frame(model):
    sim = Simulation(model)
    g = sim.new_game()
    cache_bytes = sum(
        t[0].numel() * t.element_size()
        for t in model.allocate_inference_cache(1).tensors().values()
    )
    assert cache_bytes < sim.snapshot(g).nbytes < cache_bytes + 10_000


def test_same_seed_and_inputs_give_identical_games(model, replay_frames):
    games = []
    for _ in range(2):
        sim = Simulation(model, temperature=1.0)
        g = sim.new_game(GameSetup(seed=42))
        games.append(run(sim, [g], 40, replay_controls(replay_frames, {g: 1}))[g])
    assert all(torch.equal(games[0][k], games[1][k]) for k in games[0])


def test_game_from_a_replay_frame_continues_that_game(model, replay_frames):
    start = 3000
    sim = Simulation(model)
    g = sim.new_game(replay=replay_frames, start_frame=start)
    taken_over = sim.frame(g)
    for key, value in index(replay_frames, start).items():
        assert torch.equal(taken_over[key].to(value.dtype), value), key
    # The first step equals the model's teacher-forced prediction after the real prefix.
    nxt = index(replay_frames, start + 1)
    result = sim.step({g: controls_of(nxt)})[g]
    prev = {k: v[: start + 1].unsqueeze(0) for k, v in replay_frames.items()}
    ctrl = controls_of({k: v[1 : start + 2].unsqueeze(0) for k, v in replay_frames.items()})
    with torch.no_grad():
        preds = model(prev, ctrl)
    expected = decode(index(preds, (0, start)), index(replay_frames, start), controls_of(nxt))
    assert int(result.frame["frame"]) == int(replay_frames["frame"][start + 1])
    for key in ("p1_x", "p2_y", "p1_action", "p2_percent"):
        assert torch.allclose(result.frame[key].float(), expected[key].float(), atol=1e-3), key
    assert sim.stocks(g) == (
        int(replay_frames["p1_stocks"][start]),
        int(replay_frames["p2_stocks"][start]),
    )


def test_traced_steps_equal_eager_steps_bit_for_bit_as_the_batch_changes(any_model):
    eager = Simulation(any_model, trace=False)
    traced = Simulation(any_model)
    assert traced.trace and not eager.trace
    pairs, policies = [], {}

    def join(seed):
        setup = GameSetup(stage=(31, 32, 2)[seed % 3], seed=seed)
        pair = eager.new_game(setup), traced.new_game(setup)
        pairs.append(pair)
        policies[pair] = (RandomPolicy(seed), RandomPolicy(seed + 10))

    join(0)  # the trace is made at batch size 1, then serves sizes 3 and 2
    for t in range(90):
        if t == 20:
            join(1), join(2)
        if t == 60:
            a, b = pairs.pop(1)
            eager.remove_game(a), traced.remove_game(b)
        controls_e, controls_t = {}, {}
        for a, b in pairs:
            columns = controls_for(policies[a, b], eager.batch_frame, eager.game_ids.index(a))
            controls_e[a], controls_t[b] = columns, columns
        eager.step(controls_e)
        traced.step(controls_t)
        assert traced.trace, "tracing fell back to eager"
        for key, value in eager.batch_frame.items():
            assert torch.equal(value, traced.batch_frame[key]), (t, key)
            assert value.dtype == traced.batch_frame[key].dtype, key


def play_through_kos_respawns_and_a_game_end(first: Simulation, second: Simulation, same_frames):
    """Three games in each simulation: one player KO'd on the first frame, one on their last
    stock, one left alone. Both simulations must give the same events and game ends, game by
    game in a shared batch, and frames that `same_frames(a, b)` accepts."""
    pairs, policies = [], {}
    for seed, (stocks, pushed) in enumerate([(4, "p1"), (1, "p2"), (4, None)]):
        setup = GameSetup(stage=31, stocks=stocks, seed=seed)
        pair = []
        for sim in (first, second):
            game = sim.new_game(setup)
            if pushed:  # below the bottom blast zone: KO'd on the first frame
                snapshot = sim.snapshot(game)
                snapshot.tensors[f"frame.{pushed}_y"] = torch.tensor(-500.0)
                sim.restore(game, snapshot)
            pair.append(game)
        pairs.append(tuple(pair))
        policies[pairs[-1]] = (RandomPolicy(seed), RandomPolicy(seed + 10))
    seen = set()
    for t in range(200):
        controls_1, controls_2 = {}, {}
        for a, b in pairs:
            columns = controls_for(policies[a, b], first.batch_frame, first.game_ids.index(a))
            controls_1[a], controls_2[b] = columns, columns
        results_1, results_2 = first.step(controls_1), second.step(controls_2)
        for key, value in first.batch_frame.items():
            assert same_frames(value, second.batch_frame[key]), (t, key)
        for a, b in list(pairs):
            assert results_1[a].events == results_2[b].events, t
            assert results_1[a].over == results_2[b].over, t
            seen |= {e.type for e in results_1[a].events}
            if results_1[a].over and t > 5:  # a finished game leaves both batches
                first.remove_game(a), second.remove_game(b)
                pairs.remove((a, b))
    assert seen == {"ko", "respawn", "game_end"}


def test_traced_rules_equal_eager_rules_through_kos_respawns_and_a_game_end(model):
    """The live trace runs the rules too: its KOs, respawns, platform waits and game ends,
    frames and events, are the eager rules' own, bit for bit."""
    eager, traced = Simulation(model, trace=False), Simulation(model)
    play_through_kos_respawns_and_a_game_end(eager, traced, torch.equal)
    assert traced.trace


def test_the_step_and_the_rules_make_every_tensor_on_their_inputs_device(model):
    """On CUDA the live step is replayed from a captured graph, which refuses copies from the
    host, and the rules run beside it on the device. A tensor made on the default device and
    then moved breaks both. With the default device set to `meta`, such a tensor has no data
    and the step fails here, on a CPU."""
    frame, rules = batch_frame(31)
    frame["p1_y"] = torch.tensor([-500.0])  # a KO, so every branch of the rules has work
    controls = controls_of(frame)
    cache = model.allocate_inference_cache(1)
    dtypes = {k: v.dtype for k, v in frame.items()}
    with torch.inference_mode(), torch.device("meta"):
        out = cast_to(decode(model.step(frame, controls, cache), frame, controls), dtypes)
        events = apply_rules(out, rules, frame, controls)
    assert {v.device.type for v in out.values()} == {"cpu"}
    assert [e.type for e in events[0]] == ["ko"]


def test_the_live_step_makes_no_tensor_from_host_data_once_warm(model, monkeypatch):
    """A CUDA graph capture refuses a copy from the host: once the step's constants exist
    (made once per device), the live step, rules included, makes no tensor from Python data."""
    from model.traced_step import LiveStep

    frame, rules = batch_frame(31)
    frame["p1_y"] = torch.tensor([-500.0])  # a KO, so every branch of the rules has work
    controls = controls_of(frame)
    live = LiveStep(model, [], [], [])

    def step():
        cache = model.allocate_inference_cache(1)
        conv = [layer.conv_state for layer in cache.layers]
        ssm = [layer.ssm_state for layer in cache.layers]
        state = {k: v.clone() for k, v in rules.tensors().items()}
        with torch.inference_mode():
            return live.frame(frame, controls, conv, ssm, state)

    step()

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor made from host data during the step")

    monkeypatch.setattr(torch, "tensor", refuse)
    monkeypatch.setattr(torch, "as_tensor", refuse)
    monkeypatch.setattr(torch.Tensor, "new_tensor", refuse)
    _, codes = step()
    bottom = ZONES.index("bottom") + 1  # a KO's code: its zone, counted from 1
    assert codes[0].tolist() == [0, 0, bottom, 0, 0]  # p1 KO'd, nobody respawned, no end


def test_graphed_live_step_pads_buckets_and_plays_like_the_eager_step(model, monkeypatch):
    """The CUDA tick's bucketed graph, run without capturing (the same copies, padding and
    state copied back, on a CPU): games joining and leaving, KOs, respawns and game ends give
    the eager step's frames and events."""
    import functools

    from model import simulation
    from model.cuda_graph import GraphedLiveStep

    monkeypatch.setattr(
        simulation, "GraphedLiveStep", functools.partial(GraphedLiveStep, capture=False)
    )
    eager, graphed = Simulation(model, trace=False), Simulation(model, trace=False)
    graphed.cuda_graphs = True  # as on CUDA
    play_through_kos_respawns_and_a_game_end(
        eager, graphed, lambda a, b: torch.allclose(a.float(), b.float(), atol=1e-4)
    )
    assert graphed.cuda_graphs and graphed._graphed is not None
    assert sorted(graphed._graphed.graphs) == [2, 4]  # 3 games, then fewer as games end


def test_warm_up_traces_the_step_and_leaves_no_game(model):
    sim = Simulation(model)
    sim.warm_up(max_batch=5)  # on CPU: one game (the trace serves every batch size)
    assert sim.game_ids == [] and sim.trace
    game = sim.new_game(GameSetup(seed=1))
    assert sim.step({})[game].frame["frame"] == standard_start(GameSetup())["frame"] + 1


def test_graph_buckets_cover_every_batch_up_to_the_largest():
    assert graph_buckets(1) == [1]
    assert graph_buckets(5) == [1, 2, 4, 8]
    assert graph_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert graph_buckets(10_000)[-1] == MAX_GRAPH_BATCH


@pytest.mark.gpu
def test_warm_up_captures_every_bucket_on_cuda(model):
    sim = Simulation(copy.deepcopy(model).cuda(), device="cuda", cuda_graphs=True)
    sim.warm_up(max_batch=5)
    assert sim.cuda_graphs and sorted(sim._graphed.graphs) == [1, 2, 4, 8]
    assert sim.game_ids == []


@pytest.mark.gpu
def test_rules_run_on_cuda_and_graphs_replay_them(model):
    """On CUDA the rules' state lives beside the frames; graph replay gives the eager step's
    KOs, respawns and game end."""
    cuda_model = copy.deepcopy(model).cuda()
    eager = Simulation(cuda_model, device="cuda")
    graphed = Simulation(cuda_model, device="cuda", cuda_graphs=True)
    play_through_kos_respawns_and_a_game_end(
        eager, graphed, lambda a, b: torch.allclose(a.float(), b.float(), atol=1e-3)
    )
    assert graphed.cuda_graphs, "capture fell back to eager"
    assert eager.batch_frame["p1_x"].is_cuda


def test_frames_with_other_columns_get_their_own_trace(model, replay_frames):
    from model.traced_step import traced_step

    prev = index(replay_frames, torch.tensor([500, 900]))
    controls = index(controls_of(replay_frames), torch.tensor([501, 901]))
    without_frame = {k: v for k, v in prev.items() if k != "frame"}
    with torch.inference_mode():
        cache = model.allocate_inference_cache(2)
        first = traced_step(model, prev, controls, cache)
        assert traced_step(model, prev, controls, cache) is first
        second = traced_step(model, without_frame, controls, cache)
        assert second is not None and second is not first
        eager = decode(model.step(without_frame, controls, cache), without_frame, controls)
        cache = model.allocate_inference_cache(2)
        traced = second(without_frame, controls, cache)
    assert "frame" not in traced and traced.keys() == eager.keys()
    for key, value in eager.items():
        assert torch.equal(value, traced[key]), key


def test_a_trace_fed_its_own_frame_back_sees_the_changes_made_to_it(model):
    """The live trace returns its frame packed and takes it back as the next input without
    packing it again; a field changed in place or replaced since must be seen."""
    eager, traced = Simulation(model, trace=False), Simulation(model)
    for sim in (eager, traced):
        for seed in range(2):
            sim.new_game(GameSetup(seed=seed))
    for t in range(6):
        eager.step({}), traced.step({})
        packed = traced.batch_frame
        assert isinstance(packed, PackedFrame) and not packed.replaced
        assert pack(packed, traced._traced.layouts[0]) is packed.packed, "packed again"
        for sim in (eager, traced):
            frame = sim.batch_frame
            if t % 2:
                frame["p1_x"] = frame["p1_x"] + 30.0  # replaced
            else:
                with torch.inference_mode():  # as the simulation made it
                    frame["p2_y"][1] += 7.0  # changed in place
        for key, value in eager.batch_frame.items():
            assert torch.equal(value, traced.batch_frame[key]), (t, key)
    eager.step({}), traced.step({})
    for key, value in eager.batch_frame.items():
        assert torch.equal(value, traced.batch_frame[key]), key


@pytest.mark.gpu
def test_cuda_graph_buckets_match_eager_steps_as_games_join_and_leave():
    torch.manual_seed(0)
    model = WorldModel(TINY).cuda().eval()
    eager = Simulation(model, device="cuda")
    graphed = Simulation(model, device="cuda", cuda_graphs=True)
    policies = {}
    for seed in range(3):  # 3 games: padded to the bucket of 4
        setup = GameSetup(stage=31, seed=seed)
        policies[eager.new_game(setup), graphed.new_game(setup)] = (
            RandomPolicy(seed),
            RandomPolicy(seed + 10),
        )
    for t in range(60):
        if t == 30:  # one game leaves: bucket of 2
            (a, b), _ = next(iter(policies.items()))
            eager.remove_game(a)
            graphed.remove_game(b)
            del policies[(a, b)]
        controls_e, controls_g = {}, {}
        for (a, b), pair in policies.items():
            columns = controls_for(pair, eager.batch_frame, eager.game_ids.index(a))
            controls_e[a], controls_g[b] = columns, columns
        eager.step(controls_e)
        graphed.step(controls_g)
        assert graphed.cuda_graphs, "capture fell back to eager"
        for key, value in eager.batch_frame.items():
            other = graphed.batch_frame[key]
            assert torch.allclose(value.float(), other.float(), atol=1e-3), (t, key)


@pytest.mark.parametrize("stage_id", legal_stage_ids())
def test_nobody_falls_through_the_main_stage_from_above(stage_id):
    from model.rules import FLOOR_TOLERANCE

    stage = get_stage(stage_id)
    prev, rules = batch_frame(stage_id)
    prev["p1_x"][0], prev["p1_y"][0] = 10.0, stage.main.y + 2.0
    prev["p2_x"][0], prev["p2_y"][0] = stage.main.right_x + 20.0, stage.main.y - 30.0  # recovering
    frame = {k: v.clone() for k, v in prev.items()}
    frame["p1_y"][0] = stage.main.y - FLOOR_TOLERANCE - 5.0  # sinks through
    frame["p1_vel_self_y"][0] = -3.0
    frame["p2_y"][0] = stage.main.y - 31.0  # below the stage, off to the side: untouched
    apply_rules(frame, rules, prev)
    assert float(frame["p1_y"][0]) == pytest.approx(stage.main.y)
    assert float(frame["p1_vel_self_y"][0]) == 0.0
    assert float(frame["p2_y"][0]) == pytest.approx(stage.main.y - 31.0)


def test_the_solid_stage_rule_never_moves_a_real_player(dev_dataset_dir):
    """On real games the rules of the solid stage must be invisible: apply them to every frame
    given the one before."""
    import pyarrow.parquet as pq

    from model.rules import keep_above_main_stage

    paths = sorted(dev_dataset_dir.glob("*.parquet"))
    assert len(paths) == 8
    for path in paths:
        frames = frames_from_table(pq.read_table(path))
        stage = get_stage(int(frames["stage"][0]))
        n = len(frames["frame"]) - 1
        rules = RuleState.new(stage, (4, 4))
        rules = RuleState.from_tensors(
            {k: v.expand(n, *v.shape[1:]).clone() for k, v in rules.tensors().items()}
        )
        prev = {k: v[:-1] for k, v in frames.items()}
        new = {k: v[1:].clone() for k, v in frames.items()}
        before = {k: new[k].clone() for k in ("p1_y", "p2_y")}
        keep_above_main_stage(new, prev, rules)
        for key, value in before.items():
            # Standing players are put at the surface's height as assets/stages.json has
            # it, which may differ from a replay's by a few thousandths of a unit.
            moved = (new[key] - value).abs().max()
            assert moved < 0.01, f"{path.name}: the rule moved {key} by {moved}"


def test_pinning_holds_one_more_reference_to_every_input_of_the_trace(model):
    """What keeps the trace from taking the GIL back per input (`_pin_for_the_call`); how
    often it does take it back against a busy thread is measured by bench/gil_handback.py,
    since that needs a machine with a core to spare."""
    from model.traced_step import _pin_for_the_call

    sim = Simulation(model)
    sim.new_game()
    inputs = [[layer.conv_state for layer in sim._cache.layers], [sim._prev["p1_x"]]]
    rules = sim._rules.tensors()
    tensors = [t for group in inputs for t in group] + list(rules.values())
    before = [t._use_count() for t in tensors]
    pin = _pin_for_the_call(inputs, rules)
    assert [t._use_count() for t in tensors] == [n + 1 for n in before]
    del pin
    assert [t._use_count() for t in tensors] == before


@pytest.mark.parametrize("falling, landed", [(25, 42), (65, 70), (35, 43)])
def test_a_player_falling_through_the_stage_lands_on_it(falling, landed):
    """Melee's collision: a jump, an aerial or a helpless fall that the model carries through
    the stage's surface lands there, in the landing that action lands in."""
    prev, rules = batch_frame(32)
    stage = get_stage(32)
    for frame_ in (prev,):
        frame_["p1_action"][0], frame_["p1_airborne"][0], frame_["p1_y"][0] = falling, 1, 3.0
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    frame["p1_y"][0] = stage.main.y - 9.0  # through the surface, still in the air
    frame["p1_vel_self_y"][0] = -3.0
    apply_rules(frame, rules, prev)
    assert int(frame["p1_action"][0]) == landed and int(frame["p1_airborne"][0]) == 0
    assert float(frame["p1_y"][0]) == pytest.approx(stage.main.y)
    assert float(frame["p1_vel_self_y"][0]) == 0.0
