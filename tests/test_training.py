"""Training: losses, masks, a short run that learns, exact resume, the CLI, scheduled
sampling, the autoregressive unroll, mixed precision (on CUDA) and wandb."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import types

import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from model.decoding import decode
from training import run_log
from training.dataset import GameDataset
from training.distributed import Distributed
from training.losses import compute_losses
from training.optim import learning_rate, resolve_amp
from training.run_config import TrainConfig
from training.train import Trainer, main
from training.window_loss import unroll
from training.windows import split_window

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


@pytest.mark.parametrize("mirror", [0.0, 0.5])
def test_resume_continues_exactly(dataset_dir, tiny_model_yaml, tmp_path, mirror):
    c = config(tiny_model_yaml, max_steps=12, mirror=mirror)
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


def assert_same_weights(a_path, b_path):
    a, _ = load_checkpoint(a_path)
    b, _ = load_checkpoint(b_path)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("newer", ["weights", "state"])
def test_resume_after_a_kill_between_the_checkpoint_writes(
    dataset_dir, tiny_model_yaml, tmp_path, caplog, newer
):
    c = config(tiny_model_yaml, max_steps=12)
    Trainer(c, dataset_dir, tmp_path / "a").run(progress=False)
    run = tmp_path / "b"
    first = Trainer(c, dataset_dir, run)
    first.run(max_steps=6, progress=False)  # a complete checkpoint at step 6
    if newer == "weights":  # killed after writing step 10's weights, before its state
        for _ in range(4):
            first.train_step()
        save_checkpoint(run / "last.safetensors", first.model, {"step": 10})
    else:  # killed after writing step 10's state, before its weights
        step_6_weights = (run / "last.safetensors").read_bytes()
        first.run(max_steps=10, progress=False)
        (run / "last.safetensors").write_bytes(step_6_weights)
    (run / ".last.state.pt.killed.tmp").write_bytes(b"half a state file")
    expected = 6 if newer == "weights" else 10

    second = Trainer(c, dataset_dir, run)
    with caplog.at_level(logging.WARNING, logger="training.run_checkpoint"):
        second.resume()
    assert second.step == expected
    stale = 10 if newer == "weights" else 6
    warning = f"holds step {stale} but {run / 'last.state.pt'} holds step {expected}"
    assert warning in caplog.text and str(run / "last.safetensors") in caplog.text
    assert read_metadata(run / "last.safetensors")["provenance"]["step"] == expected
    assert not list(run.glob(".*.tmp")), "the killed write's temporary file was left behind"
    second.run(progress=False)
    assert_same_weights(tmp_path / "a" / "last.safetensors", run / "last.safetensors")


def test_resume_refuses_a_torn_pair_of_an_older_run_folder(
    dataset_dir, tiny_model_yaml, tmp_path, caplog
):
    """Run folders written before the state file held the weights: both files carry a step,
    and a mismatch is refused with both files and both steps named."""
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({"train": config(tiny_model_yaml).to_dict()}))
    run = tmp_path / "run"
    argv = ["--config", str(train_yaml), "--data", str(dataset_dir), "--out", str(run)]
    assert main([*argv, "--max-steps", "6"]) == 0
    state = torch.load(run / "last.state.pt", weights_only=True)
    del state["model"]
    torch.save(state, run / "last.state.pt")
    model, meta = load_checkpoint(run / "last.safetensors")
    save_checkpoint(run / "last.safetensors", model, meta["provenance"] | {"step": 10})

    with caplog.at_level(logging.ERROR, logger="training.train"):
        assert main([*argv, "--max-steps", "12", "--resume"]) == 2
    assert f"{run / 'last.safetensors'} holds the weights of step 10" in caplog.text
    assert f"{run / 'last.state.pt'} the optimiser state of step 6" in caplog.text
    assert read_metadata(run / "last.safetensors")["provenance"]["step"] == 10  # untouched


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
    from training.window_loss import choose_frames, mix_in_predictions, sampling_fraction

    c = config(tiny_model_yaml, sampling_max=0.5, sampling_start=10, sampling_ramp=20)
    assert sampling_fraction(c, 5) == 0 and sampling_fraction(c, 20) == pytest.approx(0.25)
    assert sampling_fraction(c, 1000) == pytest.approx(0.5)
    trainer = Trainer(c, dataset_dir, tmp_path)
    frames, _ = trainer.train_data.batch(0, 4, 20)
    prev, controls, _ = split_window(frames)
    chosen = choose_frames(0.5, 4, 20, torch.Generator().manual_seed(0))
    mixed = mix_in_predictions(trainer.model, prev, controls, chosen)
    replaced = mixed["p1_x"] != prev["p1_x"]
    assert not replaced[:, 0].any() and 0.2 < replaced.float().mean() < 0.6
    assert torch.equal(mixed["p1_character"], prev["p1_character"])  # constants stay
    assert torch.equal(mixed["p1_buttons"], prev["p1_buttons"])  # inputs are the real ones
    trainer.step = 30
    loss, _ = trainer.train_step()
    assert loss == loss and loss > 0  # finite


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().items(), b.state_dict().items(), strict=True)
    return all(name == other and torch.equal(x, y) for (name, x), (other, y) in pairs)


def test_unroll_feeds_back_the_models_own_frames(dataset_dir, tiny_model_yaml, tmp_path):
    model = Trainer(config(tiny_model_yaml), dataset_dir, tmp_path).model
    frames, _ = GameDataset(dataset_dir, "all").batch(0, 4, 20)
    prev, controls, _ = split_window(frames)
    preds, inputs = unroll(model, prev, controls, 5)
    teacher = model(prev, controls)
    for key in ("p1_x", "p2_action", "item_exists"):  # real frames up to the unroll
        assert torch.equal(inputs[key][:, :15], prev[key][:, :15])
        torch.testing.assert_close(preds[key][:, :15], teacher[key][:, :15])
    # The first unrolled position reads the frame decoded from the prediction before it...
    at = {k: v[:, 14] for k, v in prev.items()}
    expected = decode(
        {k: v[:, 14] for k, v in teacher.items()}, at, {k: v[:, 14] for k, v in controls.items()}
    )
    torch.testing.assert_close(inputs["p1_x"][:, 15], expected["p1_x"])
    assert torch.equal(inputs["p1_action"][:, 15], expected["p1_action"])
    # ...the unrolled frames are the model's, not the real ones, and the inputs stay real.
    assert not torch.equal(inputs["p1_x"][:, 15:], prev["p1_x"][:, 15:])
    assert torch.equal(inputs["p1_buttons"], prev["p1_buttons"])
    assert {k: v.dtype for k, v in inputs.items()} == {k: v.dtype for k, v in prev.items()}


def test_unroll_backpropagates_through_the_recurrent_state(dataset_dir, tiny_model_yaml, tmp_path):
    model = Trainer(config(tiny_model_yaml), dataset_dir, tmp_path).model
    frames, _ = GameDataset(dataset_dir, "all").batch(1, 2, 20)
    prev, controls, _ = split_window(frames)
    encoded = []

    def keep(module, args, out):
        out.retain_grad()
        encoded.append(out)

    handle = model.encoder.register_forward_hook(keep)
    preds, _ = unroll(model, prev, controls, 3)
    handle.remove()
    preds["p1_x"][:, -1].sum().backward()  # the last unrolled position only
    assert encoded[0].shape[1] == 17  # the teacher-forced positions, in one forward
    assert encoded[0].grad[:, :17].abs().sum() > 0  # reached through the steps' state


def test_unroll_changes_the_loss_and_resumes_exactly(dataset_dir, tiny_model_yaml, tmp_path):
    plain = Trainer(config(tiny_model_yaml), dataset_dir, tmp_path / "plain")
    c = config(tiny_model_yaml, unroll=5, max_steps=4, checkpoint_every=2, val_every=2)
    unrolled = Trainer(c, dataset_dir, tmp_path / "straight")
    assert same_weights(plain.model, unrolled.model)  # the same start, the same batch
    loss, scalars = unrolled.train_step()
    assert math.isfinite(loss) and loss != plain.train_step()[0]
    assert math.isfinite(scalars["unroll_loss"]) and scalars["unroll_loss"] > 0
    unrolled.run(progress=False)
    first = Trainer(c, dataset_dir, tmp_path / "resumed")
    first.run(max_steps=2, progress=False)
    second = Trainer(c, dataset_dir, tmp_path / "resumed")
    second.resume()
    second.run(progress=False)
    assert second.step == 4 and same_weights(unrolled.model, second.model)
    records = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert any("unroll_loss" in json.loads(line) for line in records)


def test_config_checks_amp_and_unroll():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="unroll"):
        TrainConfig(seq_len=20, unroll=20)
    with pytest.raises(ValueError, match="unroll"):
        TrainConfig.from_dict({"unroll": -1}, "test.yaml")


def test_amp_is_bf16_where_supported_fp16_otherwise_and_off_on_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_amp("auto", cuda, bf16_supported=True) is torch.bfloat16
    assert resolve_amp("auto", cuda, bf16_supported=False) is torch.float16
    assert resolve_amp("fp16", cuda, bf16_supported=True) is torch.float16
    assert resolve_amp("off", cuda) is None
    for mode in ("auto", "bf16", "fp16", "off"):
        assert resolve_amp(mode, cpu) is None


def test_batch_shards_are_disjoint_and_cover_the_batch():
    rows = [Distributed(rank, 4).shard(32) for rank in range(4)]
    assert [list(range(32))[r] for r in rows] == [list(range(i, i + 8)) for i in (0, 8, 16, 24)]
    with pytest.raises(ValueError, match="split evenly"):
        Distributed(0, 3).shard(32)


class FakeWandbRun:
    id = "fake-run-id"

    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, values: dict, step: int) -> None:
        self.logged.extend((step, key, value) for key, value in values.items())

    def finish(self) -> None:
        self.finished = True


class FakeSummaryWriter:
    def __init__(self):
        self.logged = []

    def add_scalar(self, key, value, step):
        self.logged.append((step, key, value))

    def flush(self):
        pass

    def close(self):
        pass


def test_wandb_logs_what_tensorboard_logs(dataset_dir, tiny_model_yaml, tmp_path, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: runs.append(FakeWandbRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writer = FakeSummaryWriter()
    monkeypatch.setattr(run_log, "summary_writer", lambda run_dir: writer)
    c = config(tiny_model_yaml, max_steps=4, val_every=4, val_windows=2, wandb=True)
    c = dataclasses.replace(c, batch_size=4, wandb_project="melee")
    trainer = Trainer(c, dataset_dir, tmp_path)
    trainer.run(progress=False)
    trainer.close()
    (run,) = runs
    assert run.kwargs["project"] == "melee" and run.kwargs["config"]["wandb"] and run.finished
    assert run.logged == writer.logged
    keys = {key for _, key, _ in run.logged}
    assert {"loss", "lr", "frames_per_s", "val_loss", "head/p1_action"} <= keys
    assert {step for step, _, _ in run.logged} == {2, 4}
    assert (tmp_path / "wandb_id").read_text() == "fake-run-id"  # a resume continues it


def test_wandb_is_optional(dataset_dir, tiny_model_yaml, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    trainer = Trainer(config(tiny_model_yaml, wandb=True), dataset_dir, tmp_path)
    assert trainer.wandb is None and "wandb is enabled but not installed" in caplog.text
    assert main(["--config", "nope", "--data", "x", "--out", str(tmp_path / "r"), "--wandb"]) == 2


# ---------------------------------------------------------------------- CUDA only
def cuda_trainer(tiny_model_yaml, dataset_dir, run_dir, **overrides) -> Trainer:
    return Trainer(config(tiny_model_yaml, **overrides), dataset_dir, run_dir, device="cuda")


@pytest.mark.gpu
def test_bf16_autocast_keeps_weights_and_ssm_parameters_fp32(
    dataset_dir, tiny_model_yaml, tmp_path
):
    trainer = cuda_trainer(tiny_model_yaml, dataset_dir, tmp_path, amp="auto", unroll=4)
    assert trainer.amp_dtype is (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    )
    losses = [trainer.train_step()[0] for _ in range(3)]
    assert all(math.isfinite(x) for x in losses)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    cache = trainer.model.allocate_inference_cache(2, device="cuda")
    assert all(layer.ssm_state.dtype == torch.float32 for layer in cache.layers)
    assert math.isfinite(trainer.validate())


@pytest.mark.gpu
def test_fp16_scales_the_loss_and_resumes_the_scaler(dataset_dir, tiny_model_yaml, tmp_path):
    trainer = cuda_trainer(tiny_model_yaml, dataset_dir, tmp_path, amp="fp16", max_steps=4)
    assert trainer.amp_dtype is torch.float16 and trainer.scaler.is_enabled()
    trainer.run(progress=False)
    scale = trainer.scaler.get_scale()
    resumed = cuda_trainer(tiny_model_yaml, dataset_dir, tmp_path, amp="fp16", max_steps=4)
    resumed.resume()
    assert resumed.step == 4 and resumed.scaler.get_scale() == scale
    assert math.isfinite(resumed.train_step()[0])


def test_init_from_starts_from_a_checkpoints_weights(dataset_dir, tiny_model_yaml, tmp_path):
    source = Trainer(config(tiny_model_yaml, seed=1), dataset_dir, tmp_path / "source")
    source.run(max_steps=2, progress=False)
    init = str(tmp_path / "source" / "last.safetensors")
    warm = Trainer(config(tiny_model_yaml, init_from=init), dataset_dir, tmp_path / "warm")
    assert same_weights(warm.model, source.model)
    cold = Trainer(config(tiny_model_yaml), dataset_dir, tmp_path / "cold")
    assert not same_weights(cold.model, source.model)


def test_mirror_is_a_probability():
    with pytest.raises(ValueError, match="mirror"):
        TrainConfig(mirror=1.5)
