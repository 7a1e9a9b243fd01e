"""Evaluation: teacher-forced metrics, rollouts through the simulation, baselines, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.world_model import WorldModel
from training.dataset import GameDataset
from training.evaluate import _frame_errors, evaluate, main, pick_starts, rollouts, summarise

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


@pytest.fixture(scope="module")
def dataset_dir(dev_dataset_dir):
    return dev_dataset_dir


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, WorldModel(TINY))
    return path


def test_baselines_are_exact_where_they_should_be(dataset_dir):
    data = GameDataset(dataset_dir, "all")
    starts = pick_starts(data, 6, 20, seed=1)
    assert starts == pick_starts(data, 6, 20, seed=1)  # seeded
    per = rollouts(WorldModel(TINY).eval(), data, starts, 20)
    # Persistence is exact at horizon h exactly when the real position did not move; the
    # constant-velocity baseline beats persistence on average over real play.
    pers = summarise(per["persistence"], [1, 5, 10, 20])
    const = summarise(per["constant_velocity"], [1, 5, 10, 20])
    assert const["horizons"]["1"]["position_error"] <= pers["horizons"]["1"]["position_error"]
    assert pers["rc5"] <= pers["rc20"]  # errors grow with the horizon
    assert set(per) == {"model", "persistence", "constant_velocity"}
    assert len(per["model"]) == 6 and len(per["model"][0]) == 20


def test_frame_errors_measure_distance():
    frame = {
        f"{p}_{k}": torch.tensor(0.0)
        for p in ("p1", "p2")
        for k in (
            "x",
            "y",
            "percent",
            "vel_self_x_air",
            "vel_self_y",
            "vel_knockback_x",
            "vel_knockback_y",
            "vel_self_x_ground",
        )
    }
    frame |= {"p1_action": torch.tensor(14), "p2_action": torch.tensor(20)}
    moved = dict(frame, p1_x=torch.tensor(3.0), p1_y=torch.tensor(4.0), p2_action=torch.tensor(21))
    errors = _frame_errors(moved, frame)
    assert errors["position_error"] == pytest.approx(2.5)  # 5 for p1, 0 for p2
    assert errors["action_accuracy"] == 0.5


def test_eval_cli_writes_model_and_baselines(dataset_dir, checkpoint, tmp_path, capsys):
    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    argv = ["--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--json", str(out)]
    run = [*argv, "--starts", "4", "--split", "all", "--plot", str(png), "--probes", "stand_still"]
    assert main(run) == 0
    result = json.loads(out.read_text())
    for method in ("model", "persistence", "constant_velocity"):
        assert set(result[method]["horizons"]) == {"1", "5", "10", "20"}
        assert {"rc5", "rc10", "rc20"} <= set(result[method])
    assert 0 <= result["teacher_forced"]["accuracy"]["action"] <= 1
    assert len(result["teacher_forced"]["worst_actions"]) == 5
    # Copying the previous action is right on most frames of real play.
    assert result["teacher_forced"]["accuracy"]["action_copy_baseline"] > 0.8
    assert set(result["probes"]["per_probe"]) == {"stand_still"}
    assert result["probes"]["total"] == 36  # 6 legal stages x 6 characters
    assert 0 <= result["probes"]["pass_rate"] <= 1
    assert png.read_bytes()[:4] == b"\x89PNG"
    output = capsys.readouterr().out
    assert "RC5" in output and "behaviour probes" in output and "evaluated in" in output
    assert result["seconds"] > 0
    assert main([*argv[:2], "--data", str(tmp_path / "missing"), "--json", str(out)]) == 2


def test_eval_shows_a_bar_per_stage(dataset_dir, checkpoint, capsys):
    evaluate(
        checkpoint, dataset_dir, [1, 5], 2, split="all", max_windows=3, probes=None, progress=True
    )
    bars = capsys.readouterr().err
    assert "rollouts (2 starts)" in bars and "20/20" in bars
    assert "teacher-forced" in bars and "3/3" in bars


def test_compare_tables_runs_against_baselines(dataset_dir, checkpoint, tmp_path, capsys):
    from training.compare import main as compare

    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        argv = ["--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--probes", "none"]
        assert (
            main([*argv, "--json", str(run / "eval.json"), "--starts", "2", "--split", "all"]) == 0
        )
    out = tmp_path / "cmp"
    assert compare([str(tmp_path / "a"), str(tmp_path / "b" / "eval.json"), "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert "RC20 / best baseline" in table and "persistence" in table
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert compare([str(tmp_path / "missing"), "--out", str(out)]) == 2
