"""`playmodel train --config CONFIG --data DIR --out RUN [--resume] [--max-steps N]`.

Trains the world model on a parquet dataset (docs/DATA.md) with teacher forcing: windows of
`seq_len` + 1 real frames, the model reading frames 0..seq_len-1 and both controllers of the
next frame, and predicting frames 1..seq_len at every position.

AdamW (no weight decay on A_log, D, dt_bias, norms and biases), linear warm-up then cosine
decay, gradient clipping. The run folder holds `config.yaml`, `last.safetensors` (the model)
with `last.state.pt` (optimiser, step and random state; the schedule is a function of the
step), `best.safetensors` (lowest validation loss), `metrics.jsonl` and TensorBoard logs.
Every write is atomic, and `--resume` continues a killed run exactly where its last
checkpoint left it: batches are a pure function of (seed, step), so the data position is the
step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from model.atomic_file import atomic_path
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig, load_config
from model.frames import controls_of
from model.heads import decode
from model.world_model import WorldModel
from training.dataset import GameDataset
from training.losses import LossWeights, compute_losses

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mamba2-small"  # a preset name or a model YAML
    seq_len: int = 60  # frames per training window (the old design's context length K)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    max_steps: int = 2000
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    val_every: int = 250
    val_windows: int = 64  # validation windows per evaluation (seq_len + 1 frames each)
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0
    val_fraction: float = 0.1
    stages: tuple[int, ...] | None = None
    characters: tuple[int, ...] | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    # Scheduled sampling: a fraction of the input frames is replaced by the model's own
    # predictions from a first, gradient-free pass, so that it learns to continue from its own
    # (imperfect) frames as in live play. The fraction rises linearly from 0 at
    # `sampling_start` to `sampling_max` over `sampling_ramp` steps. 0 turns it off.
    sampling_max: float = 0.0
    sampling_start: int = 0
    sampling_ramp: int = 1000

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
            path = CONFIG_DIR / f"{path}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"no training config {str(path)!r}")
        body = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls.from_dict(body.get("train", body), source=str(path))

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training fields: {', '.join(unknown)}")
        values = dict(values)
        if "loss_weights" in values:
            values["loss_weights"] = LossWeights(**values["loss_weights"])
        for name in ("betas", "stages", "characters"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(
        1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    )
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def sampling_fraction(config: TrainConfig, step: int) -> float:
    if config.sampling_max <= 0 or step < config.sampling_start:
        return 0.0
    return config.sampling_max * min(
        1.0, (step - config.sampling_start) / max(1, config.sampling_ramp)
    )


def mix_in_predictions(
    model: WorldModel, prev: dict, controls: dict, fraction: float, generator: torch.Generator
) -> dict:
    """`prev` with a `fraction` of its frames (positions 1.., never the first) replaced by
    the model's own decoded prediction of that frame from the previous position."""
    with torch.no_grad():
        predicted = decode(model(prev, controls), prev, controls)  # frame t+1 at position t
    batch, length = prev["frame"].shape
    chosen = torch.rand(batch, length, generator=generator) < fraction
    chosen[:, 0] = False
    chosen = chosen.to(prev["frame"].device)
    mixed = {}
    for key, real in prev.items():
        guess = torch.cat([real[:, :1], predicted[key][:, :-1].to(real.dtype)], dim=1)
        mask = chosen.view(batch, length, *([1] * (real.dim() - 2)))
        mixed[key] = torch.where(mask, guess, real)
    return mixed


def make_optimizer(model: WorldModel, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if getattr(parameter, "_no_weight_decay", False) or parameter.dim() < 2:
            no_decay.append(parameter)  # A_log, D, dt_bias, norms, biases
        else:
            decay.append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def split_window(frames: dict[str, torch.Tensor]):
    """(B, L+1) windows -> prev (frames 0..L-1), controls and targets (frames 1..L)."""
    prev = {k: v[:, :-1] for k, v in frames.items()}
    target = {k: v[:, 1:] for k, v in frames.items()}
    return prev, controls_of(target), target


class Trainer:
    def __init__(self, config: TrainConfig, data_dir: Path, run_dir: Path, device: str = "cpu"):
        self.config, self.run_dir, self.device = config, Path(run_dir), torch.device(device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model_config: ModelConfig = load_config(config.model)
        kwargs = dict(stages=config.stages, characters=config.characters)
        self.train_data = GameDataset(data_dir, "train", config.val_fraction, **kwargs)
        try:
            self.val_data = GameDataset(data_dir, "val", config.val_fraction, **kwargs)
        except ValueError:
            log.warning(
                "no validation games (val_fraction %s); validating on training games",
                config.val_fraction,
            )
            self.val_data = self.train_data
        torch.manual_seed(config.seed)
        self.model = WorldModel(self.model_config).to(self.device)
        self.optimizer = make_optimizer(self.model, config)
        self.step = 0
        self.best_val = math.inf
        self.writer = _summary_writer(self.run_dir)

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        provenance = {"step": self.step, "train": self.config.to_dict()}
        save_checkpoint(self.run_dir / "last.safetensors", self.model, provenance)
        state = {
            "step": self.step,
            "best_val": self.best_val,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(self.run_dir / "last.state.pt") as tmp:
            torch.save(state, tmp)

    def resume(self) -> None:
        model, _ = load_checkpoint(self.run_dir / "last.safetensors", self.model_config)
        self.model.load_state_dict(model.state_dict())
        # weights_only: tensors and plain containers only, never arbitrary objects. The only
        # randomness in a step is torch's (batches are a pure function of seed and step).
        state = torch.load(self.run_dir / "last.state.pt", weights_only=True)
        self.step, self.best_val = state["step"], state["best_val"]
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at step %d", self.run_dir, self.step)

    # ------------------------------------------------------------------ training
    def train_step(self) -> tuple[float, dict[str, float]]:
        config = self.config
        frames, masks = self.train_data.batch(
            self.step, config.batch_size, config.seq_len, config.seed
        )
        frames = {k: v.to(self.device) for k, v in frames.items()}
        masks = {k: v.to(self.device) for k, v in masks.items()}
        prev, controls, target = split_window(frames)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, self.step)
        self.model.train()
        fraction = sampling_fraction(config, self.step)
        if fraction > 0:
            # Seeded by (seed, step) like the batches, so that --resume stays exact.
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.step)
            prev = mix_in_predictions(self.model, prev, controls, fraction, generator)
        preds = self.model(prev, controls)
        loss, per_head = compute_losses(preds, prev, target, masks, config.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach()), {k: float(v) for k, v in per_head.items()}

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        losses = []
        for i, (frames, masks) in enumerate(self.val_data.windows(self.config.seq_len)):
            if i >= self.config.val_windows:
                break
            frames = {k: v.to(self.device) for k, v in frames.items()}
            prev, controls, target = split_window(frames)
            loss, _ = compute_losses(
                self.model(prev, controls), prev, target, masks, self.config.loss_weights
            )
            losses.append(float(loss))
        return float(np.mean(losses)) if losses else math.nan

    def run(self, max_steps: int | None = None, progress: bool | None = None) -> None:
        config = self.config
        end = min(max_steps or config.max_steps, config.max_steps)
        frames_per_step = config.batch_size * config.seq_len
        bar = tqdm(
            total=end,
            initial=self.step,
            unit="step",
            desc="train",
            disable=None if progress is None else not progress,
        )
        started, started_step = time.perf_counter(), self.step
        while self.step < end:
            loss, per_head = self.train_step()
            fps = (self.step - started_step) * frames_per_step / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.3f}", frames_s=f"{fps:,.0f}")
            bar.update()
            if self.step % config.log_every == 0:
                self._log(
                    {
                        "step": self.step,
                        "loss": loss,
                        "frames_per_s": fps,
                        "lr": learning_rate(config, self.step - 1),
                    },
                    per_head,
                )
            if self.step % config.val_every == 0 or self.step == end:
                val = self.validate()
                self._log({"step": self.step, "val_loss": val})
                if val < self.best_val:
                    self.best_val = val
                    save_checkpoint(
                        self.run_dir / "best.safetensors",
                        self.model,
                        {"step": self.step, "val_loss": val, "train": config.to_dict()},
                    )
            if self.step % config.checkpoint_every == 0 or self.step == end:
                self.save()
        bar.close()

    def _log(self, record: dict, per_head: dict[str, float] | None = None) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step":
                    self.writer.add_scalar(key, value, step)
            for key, value in (per_head or {}).items():
                self.writer.add_scalar(f"head/{key}", value, step)


def _summary_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playmodel train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", required=True, help="training YAML (or a name in training/configs)"
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (playmodel parse)")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--max-steps", type=int, help="stop at this step (default: the config's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = TrainConfig.load(args.config)
        run_dir: Path = args.out
        saved = run_dir / "config.yaml"
        if args.resume:
            if not (run_dir / "last.state.pt").exists():
                raise ValueError(f"--resume: {run_dir} has no checkpoint to resume")
            config = TrainConfig.from_dict(yaml.safe_load(saved.read_text())["train"], str(saved))
        elif (run_dir / "last.state.pt").exists():
            raise ValueError(f"{run_dir} already holds a run: pass --resume, or another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(config, args.data, run_dir, args.device)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    if args.resume:
        trainer.resume()
    else:
        with atomic_path(saved) as tmp:
            tmp.write_text(yaml.safe_dump({"train": config.to_dict()}, sort_keys=False))
    log.info(
        "%d training games (%d frames), %d validation games; model %s, %s parameters",
        len(trainer.train_data),
        trainer.train_data.total_frames,
        len(trainer.val_data),
        config.model,
        f"{trainer.model.num_parameters():,}",
    )
    trainer.run(args.max_steps)
    print(f"step {trainer.step}: best validation loss {trainer.best_val:.4f} -> {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
