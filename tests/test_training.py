"""Training: losses, masks, a short run that learns, exact resume, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint
from training.dataset import GameDataset
from training.losses import compute_losses
from training.train import TrainConfig, Trainer, learning_rate, main, split_window

TINY_MODEL = {"d_model": 32, "n_layers": 2, "d_state": 16, "expand": 2, "headdim": 16}


@pytest.fixture(scope="module")
def dataset_dir(dev_dataset_dir):
    return dev_dataset_dir


@pytest.fixture(scope="module")
def tiny_model_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL}))
    return path


def config(tiny_model_yaml, **overrides) -> TrainConfig:
    values = dict(
        model=str(tiny_model_yaml),
        seq_len=20,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        max_steps=40,
        val_every=20,
        val_windows=8,
        checkpoint_every=6,
        log_every=2,
        val_fraction=0.3,
    )
    return TrainConfig(**(values | overrides))


def test_missing_fields_do_not_count(dataset_dir, tiny_model_yaml, tmp_path):
    data = GameDataset(dataset_dir, "all")
    frames, masks = data.batch(0, 8, 20)
    prev, controls, target = split_window(frames)
    model = Trainer(config(tiny_model_yaml), dataset_dir, tmp_path).model
    preds = model(prev, controls)
    masks = {k: torch.zeros_like(v) for k, v in masks.items()}  # nothing recorded
    _, before = compute_losses(preds, prev, target, masks)
    preds["p1_hitlag"] = preds["p1_hitlag"] + 100.0
    _, after = compute_losses(preds, prev, target, masks)
    assert before["p1_hitlag"] == after["p1_hitlag"] == 0
    assert after["p1_action"] == before["p1_action"] > 0  # recorded by every replay


def test_schedule_warms_up_then_decays():
    c = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert learning_rate(c, 0) == pytest.approx(0.1)
    assert learning_rate(c, 9) == pytest.approx(1.0)
    assert learning_rate(c, 60) == pytest.approx(0.55)
    assert learning_rate(c, 110) == pytest.approx(0.1)


def test_a_short_run_learns(dataset_dir, tiny_model_yaml, tmp_path):
    trainer = Trainer(config(tiny_model_yaml), dataset_dir, tmp_path)
    losses = [trainer.train_step()[0] for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # about 0.7 after 40 steps


def test_resume_continues_exactly(dataset_dir, tiny_model_yaml, tmp_path):
    c = config(tiny_model_yaml, max_steps=12)
    straight = Trainer(c, dataset_dir, tmp_path / "a")
    straight.run(progress=False)
    first = Trainer(c, dataset_dir, tmp_path / "b")
    first.run(max_steps=6, progress=False)  # as if killed after its checkpoint at step 6
    second = Trainer(c, dataset_dir, tmp_path / "b")
    second.resume()
    assert second.step == 6
    second.run(progress=False)
    a, _ = load_checkpoint(tmp_path / "a" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "last.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert (tmp_path / "b" / "best.safetensors").exists()
    assert not list((tmp_path / "b").glob(".*.tmp")), "a temporary file was left behind"


def test_cli_runs_and_refuses_to_overwrite(dataset_dir, tiny_model_yaml, tmp_path, capsys):
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({"train": config(tiny_model_yaml).to_dict()}))
    run = tmp_path / "run"
    argv = ["--config", str(train_yaml), "--data", str(dataset_dir), "--out", str(run)]
    assert main([*argv, "--max-steps", "4"]) == 0
    assert "step 4" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in records) and any("frames_per_s" in r for r in records)
    assert main([*argv, "--max-steps", "8"]) == 2  # a run is there: --resume or another --out
    assert main([*argv, "--max-steps", "8", "--resume"]) == 0
    assert "step 8" in capsys.readouterr().out
    empty = ["--config", str(train_yaml), "--data", str(dataset_dir), "--out", str(tmp_path / "e")]
    assert main([*empty, "--resume"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"learning_rate": 1}}))
    assert (
        main(["--config", str(bad), "--data", str(dataset_dir), "--out", str(tmp_path / "f")]) == 2
    )


def test_perfect_predictions_cost_almost_nothing(dataset_dir):
    from test_world_model import perfect_predictions

    frames, masks = GameDataset(dataset_dir, "all").batch(3, 4, 30)
    prev, _, target = split_window(frames)
    total, _ = compute_losses(perfect_predictions(prev, target), prev, target, masks)
    assert float(total) < 1e-3


def test_scheduled_sampling_mixes_in_predictions(dataset_dir, tiny_model_yaml, tmp_path):
    from training.train import mix_in_predictions, sampling_fraction

    c = config(tiny_model_yaml, sampling_max=0.5, sampling_start=10, sampling_ramp=20)
    assert sampling_fraction(c, 5) == 0 and sampling_fraction(c, 20) == pytest.approx(0.25)
    assert sampling_fraction(c, 1000) == pytest.approx(0.5)
    trainer = Trainer(c, dataset_dir, tmp_path)
    frames, _ = trainer.train_data.batch(0, 4, 20)
    prev, controls, _ = split_window(frames)
    mixed = mix_in_predictions(trainer.model, prev, controls, 0.5, torch.Generator().manual_seed(0))
    replaced = mixed["p1_x"] != prev["p1_x"]
    assert not replaced[:, 0].any() and 0.2 < replaced.float().mean() < 0.6
    assert torch.equal(mixed["p1_character"], prev["p1_character"])  # constants stay
    assert torch.equal(mixed["p1_buttons"], prev["p1_buttons"])  # inputs are the real ones
    trainer.step = 30
    loss, _ = trainer.train_step()
    assert loss == loss and loss > 0  # finite
