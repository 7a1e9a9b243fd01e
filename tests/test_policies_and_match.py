"""Scripted policies and `playmodel match` end to end."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from core import game_state as gs
from core.controller import BUTTON_BITS, Controller
from core.replay_reader import read_replay
from model.checkpoint import load_model
from model.frames import frames_from_table, index
from model.game_start import GameSetup, standard_start
from model.policies import (
    ApproachAndAttack,
    FrameView,
    RandomPolicy,
    ReplayFollower,
    hold,
    load_policy,
    make_policy,
    noop,
)
from model.simulation import Simulation
from server.match import (
    main,
    parse_character,
    parse_stage,
    run_match,
    summary_lines,
)


@pytest.fixture(scope="module")
def replay_frames(replays):
    return frames_from_table(read_replay(replays / "dev" / "slippi-js__slp__techTester.slp").table)


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    tiny = {"d_model": 32, "n_layers": 2, "d_state": 16, "expand": 2, "headdim": 16}
    path.write_text(yaml.safe_dump({"model": tiny}))
    return path


def start_view(stage=31):
    return FrameView(standard_start(GameSetup(stage=stage)))


def test_builtin_policies():
    view = start_view()
    assert noop(view, 0) == Controller()
    held = hold("left")(view, 0)
    assert (held.stick_x, held.stick_y) == (-1.0, 0.0)
    a, b = RandomPolicy(3), RandomPolicy(3)
    assert [a(view, 0) for _ in range(50)] == [b(view, 0) for _ in range(50)]
    assert RandomPolicy(3)(view, 0).stick_x != RandomPolicy(4)(view, 0).stick_x
    # p1 spawns left of p2, so approaching means pushing right, and p2 pushes left.
    assert ApproachAndAttack()(view, 0).stick_x == 1.0
    assert ApproachAndAttack()(view, 1).stick_x == -1.0


def test_replay_follower_plays_the_recorded_inputs(replay_frames):
    follower = ReplayFollower(replay_frames, start=1000)
    view = FrameView(index(replay_frames, 1000))
    for row in range(1001, 1100):
        columns = follower(view, 1).columns(1)
        assert columns["p2_joystick_x"] == pytest.approx(float(replay_frames["p2_joystick_x"][row]))
        mask = sum(BUTTON_BITS.values())
        assert columns["p2_buttons"] == int(replay_frames["p2_buttons"][row]) & mask


def test_policy_specs_and_user_paths():
    assert make_policy("noop") is noop
    assert isinstance(make_policy("random:7"), RandomPolicy)
    assert load_policy("model.policies:noop") is noop
    assert isinstance(load_policy("model.policies:RandomPolicy"), RandomPolicy)
    with pytest.raises(ValueError, match="cannot import module"):
        load_policy("no_such_module_xyz:policy")
    with pytest.raises(ValueError, match="has no 'nope'"):
        load_policy("model.policies:nope")
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("sideways")
    with pytest.raises(ValueError, match="unknown direction"):
        make_policy("hold:sideways")


def test_stage_and_character_names():
    assert parse_stage("battlefield") == 31 and parse_stage("FD") == 32 and parse_stage("8") == 8
    assert parse_character("marth") == 18 and parse_character("FOX") == 1
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stage("hyrule temple")
    with pytest.raises(ValueError, match="unknown character"):
        parse_character("waluigi")


def test_match_writes_a_trajectory_in_the_dataset_schema(tiny_config, tmp_path, capsys):
    out = tmp_path / "match.parquet"
    argv = ["--p1", "approach", "--p2", "random:1", "--stage", "yoshis_story"]
    argv += ["--characters", "marth,fox", "--frames", "300", "--config", str(tiny_config)]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "KO'd p2" in printed and "KO'd p1" in printed
    assert "p1 marth (approach)" in printed and "p2 fox (random:1)" in printed
    table = pq.read_table(out)
    assert table.schema.remove_metadata().equals(gs.arrow_schema())
    frames = table.column("frame").to_numpy()
    assert frames[0] == -123 and (frames[1:] - frames[:-1] == 1).all()
    assert set(table.column("p1_character").to_numpy()) == {18}
    info = json.loads(table.schema.metadata[b"match_info"])
    assert info["summary"]["frames"] == len(frames) - 1 <= 300
    assert info["p1"] == "approach"


def test_match_summary_says_who_kod_whom():
    # `kos[i]` counts the stocks player i lost: each is a KO by the other player.
    summary = {"winner": 0, "end": "stocks", "stocks": [2, 0], "percents": [45.0, 88.5]}
    summary |= {"kos": [2, 4], "frames": 10_234, "frames_per_second": 512}
    lines = summary_lines(summary, (1, 22), ("approach", "random"))
    assert lines[0] == "p1 wins (stocks) after 10,234 frames"
    assert lines[1] == "  p1 fox (approach): 2 stocks left, 45%, KO'd p2 4 times"
    assert lines[2] == "  p2 falco (random): 0 stocks left, 88.5%, KO'd p1 2 times"
    summary |= {"end": None, "winner": None, "kos": [0, 1]}
    lines = summary_lines(summary, (1, 22), ("approach", "random"))
    assert lines[0].startswith("no winner: the frame limit was reached")
    assert lines[1].endswith("KO'd p2 1 time") and lines[2].endswith("KO'd p1 0 times")


def test_match_shows_a_progress_bar(tiny_config, capsys):
    model, _ = load_model(None, str(tiny_config), "cpu")
    sim = Simulation(model)
    game = sim.new_game(GameSetup(stage=31))
    result = run_match(sim, game, (make_policy("noop"), make_policy("noop")), 40, progress=True)
    bar = capsys.readouterr().err
    assert len(result.frames["frame"]) == 41
    assert "match" in bar and "40/40" in bar and "frame/s" in bar


def test_match_can_take_over_a_real_game(tiny_config, tmp_path, replays):
    out = tmp_path / "takeover.parquet"
    replay = replays / "dev" / "slippi-js__slp__techTester.slp"
    argv = ["--start", f"{replay}:2000", "--frames", "50", "--config", str(tiny_config)]
    assert main([*argv, "--p1", f"replay:{replay}:2000", "--out", str(out)]) == 0
    frames = frames_from_table(pq.read_table(out))
    real = frames_from_table(read_replay(replay).table)
    assert int(frames["frame"][0]) == int(real["frame"][2000])
    assert torch.equal(frames["p1_x"][0], real["p1_x"][2000])


def test_match_reports_bad_arguments(tiny_config, tmp_path):
    out = str(tmp_path / "x.parquet")
    assert main(["--stage", "hyrule", "--config", str(tiny_config), "--out", out]) == 2
    assert main(["--p1", "bogus", "--config", str(tiny_config), "--out", out]) == 2
    assert main(["--config", "no-such-config", "--out", out]) == 2
