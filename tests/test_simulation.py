"""The simulation (`model.simulation`): random matches stay legal, games batched, joining and
leaving, snapshots and restores, seeds, and games started from a replay's frame."""

from __future__ import annotations

import pytest
import torch
from simulation_setup import (
    replay_controls,
    run,
)

from core import game_state as gs
from core.stages import get_stage
from model.decoding import decode
from model.frames import controls_of, index
from model.game_start import GameSetup
from model.packed_frame import PackedFrame
from model.policies import RandomPolicy, controls_for
from model.rules import LIMITS
from model.simulation import Simulation
from model.world_model import WorldModel


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
