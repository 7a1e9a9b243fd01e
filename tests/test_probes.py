"""Behaviour probes (training/probes.py, probe_inputs.py, probe_metrics.py,
probe_expectations.py, probe_run.py), the mirror augmentation, the counted state_age, and
controllers processed as Melee reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from core.controller import Controller
from core.stages import get_stage
from model.config import load_config
from model.frame_spec import count_state_age
from model.frames import frames_from_table
from model.world_model import WorldModel
from training import probe_expectations as pe
from training import probes as pr
from training.dataset import GameDataset
from training.mirror import ground_mirror_table, mirror_windows
from training.probe_inputs import (
    BACK,
    DOWN,
    FORWARD,
    JUMP,
    NEUTRAL,
    OTHER_STICK,
    SHIELD,
    UP,
    A,
    Z,
    button_classes,
    stick_classes,
)
from training.probe_run import expected, main, run_probes, within

TINY_MODEL = {"d_model": 32, "n_layers": 2, "d_state": 16, "expand": 2, "headdim": 16}


@pytest.fixture(scope="module")
def mined(dev_dataset_dir):
    return pe.mine(dev_dataset_dir, progress=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from model.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.yaml").write_text(yaml.safe_dump({"model": TINY_MODEL}))
    torch.manual_seed(0)
    model = WorldModel(load_config(str(folder / "tiny.yaml")))
    save_checkpoint(folder / "tiny.safetensors", model, {"step": 0})
    return folder / "tiny.safetensors"


# ---------------------------------------------------------------------- input classes
def test_stick_classes_are_relative_to_facing():
    x = np.array([0.0, 1.0, -1.0, 1.0, 0.0, 0.0, 0.5])
    y = np.array([0.0, 0.0, 0.0, 0.0, 1.0, -0.9, 0.0])
    facing = np.array([1, 1, 1, -1, 1, 1, 1])
    classes = stick_classes(x, y, facing).tolist()
    assert classes == [NEUTRAL, FORWARD, BACK, BACK, UP, DOWN, OTHER_STICK]


def test_button_classes_read_z_as_melee_records_it():
    # As the corpus records them: Z is 0x110 with an analog 0.35; R is 0x20 with 1.0.
    buttons = np.array([0x110, 0x20, 0x400, 0x800, 0x100, 0])
    trigger = np.array([0.35, 1.0, 0.0, 0.0, 0.0, 0.5])
    classes = button_classes(buttons, trigger).tolist()
    assert classes == [Z, SHIELD, JUMP, JUMP, A, SHIELD]


def test_scripted_controllers_are_processed_like_the_replays():
    z = Controller(buttons=frozenset({"Z"})).columns(0)
    assert z["p1_buttons"] == 0x110 and z["p1_trigger"] == pytest.approx(0.35)
    assert z["p1_buttons_physical"] == 0x10
    r = Controller(buttons=frozenset({"R"})).columns(1)
    assert r["p2_buttons"] == 0x20 and r["p2_trigger"] == 1.0
    # A probe's script, for a player facing left: forward is left.
    dash = pr.PROBES_BY_NAME["dash_forward"].controllers(-1)
    assert (dash[0].stick_x, dash[0].stick_y) == (-1.0, 0.0) and len(dash) == 20
    shield = pr.PROBES_BY_NAME["shield"].controllers(1)[0].columns(0)
    assert button_classes(np.array([shield["p1_buttons"]]), np.array([1.0]))[0] == SHIELD


# ---------------------------------------------------------------------- mining
def test_mined_windows_meet_the_situation_and_the_script(dev_dataset_dir):
    probe = pr.PROBES_BY_NAME["dash_forward"]
    found = 0
    for path in pe.game_files(dev_dataset_dir):
        game = pe.read_game(path)
        for player in (0, 1):
            for _, window, matched, where in pe.windows_in_game(game, probe, player):
                found += 1
                assert window.action[0] == pr.STANDING and window.airborne[0] == 0
                assert 2 <= matched <= probe.length
                main_y = get_stage(int(game["stage"][0])).main.y
                assert (where == "platform") == (window.y[0] > main_y + 1.0)
    assert found > 0


def test_real_games_say_what_melee_does(mined):
    """On the 8 dev games: standing still stays put on the ground; X starts a jump squat on
    the next frame; a held stick starts a dash that carries the player forward."""
    stand = mined["probes"]["stand_still"]["all"]
    assert stand["drift"]["n"] > 50 and stand["drift"]["p50"] == 0.0
    assert stand["grounded"]["p5"] == 1.0
    hop = mined["probes"]["full_hop"]["all"]
    assert hop["knee_bend"]["n"] > 20 and hop["knee_bend"]["p50"] == 1.0
    dash = mined["probes"]["dash_forward"]["all"]
    assert dash["dash"]["p50"] == 1.0
    if "moved_forward" in dash:
        assert dash["moved_forward"]["p5"] > 5.0


def test_mining_refuses_a_folder_without_a_manifest(tmp_path):
    assert pe.main(["--data", str(tmp_path), "--out", str(tmp_path / "e.json")]) == 2


def test_the_bundled_expectations_cover_every_probe():
    data = json.loads(pe.DEFAULT_EXPECTATIONS.read_text())
    assert set(data["probes"]) == set(pr.PROBES_BY_NAME)
    judged = [n for n, e in data["probes"].items() if any(m["n"] >= 20 for m in e["all"].values())]
    assert len(judged) >= 12, judged


# ---------------------------------------------------------------------- judging
def test_expectations_fall_back_to_all_characters():
    expectations = {
        "probes": {
            "jab": {
                "all": {"duration": {"p5": 10, "p50": 15, "p95": 20, "n": 100}},
                "by_character": {"1": {"duration": {"p5": 14, "p50": 15, "p95": 16, "n": 30}}},
            }
        }
    }
    assert expected(expectations, "jab", "duration", 1)["p95"] == 16
    assert expected(expectations, "jab", "duration", 2)["of"] == "all"
    assert expected(expectations, "jab", "grounded", 1) is None
    # On a platform only the platform's windows count: there are none here.
    assert expected(expectations, "jab", "duration", 1, "platform") is None
    expectations["probes"]["jab"]["on_platform"] = {
        "all": {"duration": {"p5": 3, "p50": 4, "p95": 5, "n": 40}},
        "by_character": {},
    }
    assert expected(expectations, "jab", "duration", 1, "platform")["p95"] == 5
    real = {"p5": 14, "p95": 16}
    assert within("duration", 17, real) and not within("duration", 18, real)  # a frame's slack
    assert within("drift", 0.9, {"p5": 0.0, "p95": 0.0}) and not within("grounded", 0.9, real)


def test_probes_run_on_a_model_and_report(tiny_checkpoint, mined):
    from model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    report = run_probes(model, [32], [1], ["stand_still", "dash_forward"], mined, progress=False)
    assert report["stages"] == ["FINAL_DESTINATION"] and report["characters"] == ["FOX"]
    assert 0.0 <= report["pass_rate"] <= 1.0 and report["total"] == 2
    run = report["probes"]["dash_forward"]["runs"][0]
    assert set(run["metrics"]) == set(pr.PROBES_BY_NAME["dash_forward"].metrics)
    assert "real_p5" in run["metrics"]["dash"] and isinstance(run["passed"], bool)


def test_probe_cli_shows_progress_and_ends_with_a_summary(tiny_checkpoint, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint), "--stages", "fd", "--characters", "fox"]
    assert main([*argv, "--probes", "stand_still"]) == 0
    out = capsys.readouterr().out
    assert "stand_still" in out and "1 probe games played in" in out
    from model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    run_probes(model, [32], [1], ["stand_still"], progress=True)
    bar = capsys.readouterr().err
    assert "probes (1 games)" in bar and "frame/s" in bar


def test_probe_cli_fails_clearly(tiny_checkpoint, tmp_path, caplog):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(bad)]) == 2
    assert "broken.safetensors" in caplog.text
    assert main(["--checkpoint", str(tiny_checkpoint), "--stages", "hyrule"]) == 2
    assert "unknown stage 'hyrule'" in caplog.text
    assert main(["--checkpoint", str(tiny_checkpoint), "--characters", "waluigi"]) == 2
    assert "unknown character 'waluigi'" in caplog.text
    assert main(["--checkpoint", str(tiny_checkpoint), "--probes", "moonwalk"]) == 2
    assert "moonwalk" in caplog.text


# ---------------------------------------------------------------------- training inputs
def test_mirror_flips_a_window_and_back(dev_dataset_dir):
    data = GameDataset(dev_dataset_dir, "all")
    table = ground_mirror_table(data.columns)
    battlefield = table[31]
    assert torch.equal(battlefield[battlefield], torch.arange(128))  # pairs, both ways
    frames, _ = data.batch(0, 4, 30)
    flip = torch.tensor([True, False, True, False])
    mirrored = mirror_windows(frames, flip, table)
    assert torch.equal(mirrored["p1_x"][0], -frames["p1_x"][0])
    assert torch.equal(mirrored["p1_x"][1], frames["p1_x"][1])
    assert torch.equal(mirrored["p2_facing"][2], -frames["p2_facing"][2])
    assert torch.equal(mirrored["p1_action"], frames["p1_action"])
    back = mirror_windows(mirrored, flip, table)
    for key in frames:
        assert torch.equal(back[key], frames[key]), key


def test_state_age_is_counted_as_the_simulation_counts_it(dev_dataset_dir):
    import pyarrow.parquet as pq

    path = pe.game_files(dev_dataset_dir)[0]
    frames = frames_from_table(pq.read_table(path))
    count_state_age(frames)
    action, age = frames["p1_action"], frames["p1_state_age"]
    same = action[1:] == action[:-1]
    assert torch.equal(age[1:][same], age[:-1][same] + 1)
    assert (age[1:][~same] == 0).all()
