"""The live step as a trace (`model.traced_step`) and a CUDA graph (`model.cuda_graph`): bit
for bit the eager step and the eager rules, on its inputs' device, with no host data, and
holding its inputs for the call."""

from __future__ import annotations

import copy

import pytest
import torch
from simulation_setup import (
    TINY,
    batch_frame,
)

from model.decoding import decode
from model.frames import cast_to, controls_of, index
from model.game_start import GameSetup, standard_start
from model.packed_frame import PackedFrame, pack
from model.policies import RandomPolicy, controls_for
from model.rules import ZONES, apply_rules
from model.simulation import MAX_GRAPH_BATCH, Simulation, graph_buckets
from model.world_model import WorldModel


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
