"""`playmodel train --config CONFIG --data DIR --out RUN [--resume] [--max-steps N] [--wandb]`.

Trains the world model on a parquet dataset (docs/DATA.md) with teacher forcing: windows of
`seq_len` + 1 real frames, the model reading frames 0..seq_len-1 and both controllers of the
next frame, and predicting frames 1..seq_len at every position. Optionally a fraction of the
input frames are the model's own predictions (scheduled sampling), and the last `unroll`
positions of each window are a true autoregressive rollout through the recurrent step.

AdamW (no weight decay on A_log, D, dt_bias, norms and biases), linear warm-up then cosine
decay, gradient clipping, bf16 / fp16 autocast on CUDA. The run folder holds `config.yaml`,
`last.state.pt` (weights, optimiser, gradient scaler, step and random state; the schedule is a
function of the step) with `last.safetensors` (the same weights, for evaluation and play),
`best.safetensors` (lowest validation loss), `metrics.jsonl` and TensorBoard logs (and wandb,
when installed and enabled). Every write is atomic, and `--resume` continues a killed run
exactly where its last checkpoint left it: it reads only `last.state.pt`, one file written with
one rename, so a kill between two writes cannot pair one step's weights with another's
optimiser; batches are a pure function of (seed, step), so the data position is the step.

Several GPUs (or CPU processes): `torchrun --nproc-per-node=N -m training train ...`. Every rank
draws the same global batch of `batch_size` windows and trains on its own contiguous share of
it under DistributedDataParallel (nccl on CUDA, gloo on CPU); per-head loss means are divided
by the global batch's weights, so the update is the one a single process would make on the
whole batch. Rank 0 alone writes the run folder and shows the progress bar; validation windows
are shared out between the ranks and their losses summed over all of them.

This module holds the `Trainer` loop and the command line; the pieces it puts together live
beside it: run_config (TrainConfig), optim (AdamW, schedule, autocast), window_loss (the loss,
scheduled sampling, the unroll), windows, init_from, run_checkpoint, run_log and distributed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core.atomic_file import atomic_path
from core.host_memory import keep_freed_host_memory
from model.checkpoint import CheckpointError, save_checkpoint
from model.config import ModelConfig, load_config
from model.world_model import WorldModel
from training import run_log
from training.dataset import GameDataset
from training.distributed import Distributed, init_distributed
from training.init_from import init_weights
from training.losses import compute_losses
from training.mirror import ground_mirror_table, mirror_windows
from training.optim import learning_rate, make_optimizer, resolve_amp
from training.run_checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    resume_run_state,
    save_run_state,
)
from training.run_config import TrainConfig
from training.window_loss import WindowLoss, choose_frames, mix_in_predictions, sampling_fraction
from training.windows import split_window, teacher_choices

log = logging.getLogger(__name__)
SPEED_COLUMN = "p1_vel_self_x_air"  # missing in a game whose replay recorded no speeds


# ---------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        data_dir: Path,
        run_dir: Path,
        device: str | torch.device = "cpu",
        ranks: Distributed | None = None,
    ):
        self.config, self.run_dir, self.device = config, Path(run_dir), torch.device(device)
        self.ranks = ranks or Distributed()
        self.rows = self.ranks.shard(config.batch_size)
        if self.device.type == "cpu":  # a step's big temporaries then reuse last step's pages
            keep_freed_host_memory()
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
        self.ground_mirror = (
            ground_mirror_table(self.train_data.columns) if config.mirror > 0 else None
        )
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = WorldModel(self.model_config).to(self.device)
        if config.init_from:
            init_weights(self.model, config.init_from)
            log.info("initial weights from %s", config.init_from)
        prior = self.model.heads.conditioner and self.model.heads.conditioner.prior
        if prior is not None:  # data, not weights: mined from this run's training games
            recorded = torch.tensor(
                [SPEED_COLUMN not in game.missing for game in self.train_data.games]
            )
            cells = prior.fill(self.train_data.columns, self.train_data.starts, recorded)
            log.info(
                "motion prior: %s (character, action, age) cells from the training games",
                f"{cells:,}",
            )
        self.optimizer = make_optimizer(self.model, config)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        # The scaler only acts under fp16 (bf16 has fp32's range); disabled, it is a no-op.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.loss = WindowLoss(self.model, config.loss_weights, config.unroll)
        self.train_module: nn.Module = self.loss
        if self.ranks.world_size > 1:
            self.train_module = DistributedDataParallel(
                self.loss, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = 0
        self.best_val = math.inf
        main = self.ranks.is_main
        self.writer = run_log.summary_writer(self.run_dir) if main else None
        self.wandb = run_log.wandb_run(config, self.run_dir) if main and config.wandb else None

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def weights_path(self) -> Path:
        return self.run_dir / WEIGHTS_FILE

    def save(self) -> None:
        if not self.ranks.is_main:
            return
        save_run_state(
            self.run_dir,
            self.step,
            self.best_val,
            self.model,
            self.optimizer,
            self.scaler,
            self.config,
        )

    def resume(self) -> None:
        """Continue from `last.state.pt`. Raises CheckpointError, naming the files and the
        steps, when the run folder cannot be resumed exactly."""
        self.step, self.best_val = resume_run_state(
            self.run_dir,
            self.model,
            self.optimizer,
            self.scaler,
            self.config,
            self.model_config,
            self.ranks.is_main,
        )

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _global_count(self, count: Tensor) -> Tensor:
        """A head's weight sum over the global batch, divided by the number of ranks: each
        rank's mean divides by it, and DDP averages the ranks' gradients, so the update is
        the global batch's mean even where ranks count different numbers of frames (items,
        fields missing in some games)."""
        count = count.detach().clone()
        dist.all_reduce(count)
        return count.clamp(min=1.0) / self.ranks.world_size

    def train_step(self) -> tuple[float, dict[str, float]]:
        """One optimiser step on the global batch of this step. Returns the loss and the
        scalars to log (`head/<name>` per head, `unroll_loss`), averaged over the ranks."""
        config, rows = self.config, self.rows
        frames, masks = self.train_data.batch(
            self.step, config.batch_size, config.seq_len, config.seed
        )
        if self.ground_mirror is not None:
            # Seeded by (seed, step) like the batch, for the global batch, so that --resume
            # stays exact and every rank flips its rows as one process would.
            generator = torch.Generator().manual_seed(config.seed * 1_000_033 + self.step + 1)
            flip = torch.rand(config.batch_size, generator=generator) < config.mirror
            frames = mirror_windows(frames, flip, self.ground_mirror)
        frames = {k: v[rows].to(self.device) for k, v in frames.items()}
        masks = {k: v[rows].to(self.device) for k, v in masks.items()}
        prev, controls, target = split_window(frames)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, self.step) * group.get("lr_scale", 1.0)
        self.model.train()
        distributed = self.ranks.world_size > 1
        with self._autocast():
            fraction = sampling_fraction(config, self.step)
            if fraction > 0:
                # Seeded by (seed, step) like the batches, so that --resume stays exact; drawn
                # for the global batch, so that every rank mixes its rows as one process would.
                generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.step)
                chosen = choose_frames(fraction, config.batch_size, config.seq_len, generator)
                prev = mix_in_predictions(self.model, prev, controls, chosen[rows])
            loss, per_head, unrolled = self.train_module(
                prev, controls, target, masks, self._global_count if distributed else None
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1

        names = [f"head/{k}" for k in per_head] + (["unroll_loss"] if unrolled is not None else [])
        values = [loss.detach(), *per_head.values()] + ([unrolled] if unrolled is not None else [])
        values = torch.stack([v.float() for v in values])  # one transfer, one reduction
        if distributed:
            dist.all_reduce(values)
            values /= self.ranks.world_size
        total, *rest = values.tolist()
        return total, dict(zip(names, rest, strict=True))

    @torch.no_grad()
    def validate(self) -> float:
        """Mean teacher-forced loss over the first `val_windows` validation windows; under
        torchrun each rank takes every world_size-th window and the sums are all-reduced."""
        self.model.eval()
        total, count = 0.0, 0
        for i, (frames, masks) in enumerate(self.val_data.windows(self.config.seq_len)):
            if i >= self.config.val_windows:
                break
            if i % self.ranks.world_size != self.ranks.rank:
                continue
            frames = {k: v.to(self.device) for k, v in frames.items()}
            masks = {k: v.to(self.device) for k, v in masks.items()}
            prev, controls, target = split_window(frames)
            with self._autocast():
                preds = self.model(prev, controls, teacher=teacher_choices(target))
                loss, _ = compute_losses(preds, prev, target, masks, self.config.loss_weights)
            total, count = total + float(loss), count + 1
        if self.ranks.world_size > 1:
            sums = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            total, count = sums.tolist()
        return total / count if count else math.nan

    def run(self, max_steps: int | None = None, progress: bool | None = None) -> None:
        config = self.config
        end = min(max_steps or config.max_steps, config.max_steps)
        frames_per_step = config.batch_size * config.seq_len  # the global batch
        bar = tqdm(
            total=end,
            initial=self.step,
            unit="step",
            desc="train",
            disable=(None if progress is None else not progress) if self.ranks.is_main else True,
        )
        started, started_step = time.perf_counter(), self.step
        while self.step < end:
            loss, scalars = self.train_step()
            fps = (self.step - started_step) * frames_per_step / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.3f}", frames_s=f"{fps:,.0f}")
            bar.update()
            if self.step % config.log_every == 0:
                record = {
                    "step": self.step,
                    "loss": loss,
                    "frames_per_s": fps,
                    "lr": learning_rate(config, self.step - 1),
                }
                if "unroll_loss" in scalars:
                    record["unroll_loss"] = scalars.pop("unroll_loss")
                self._log(record, scalars)
            if self.step % config.val_every == 0 or self.step == end:
                val = self.validate()  # on every rank: they share the windows
                self._log({"step": self.step, "val_loss": val})
                if val < self.best_val:
                    self.best_val = val
                    if self.ranks.is_main:
                        save_checkpoint(
                            self.run_dir / "best.safetensors",
                            self.model,
                            {"step": self.step, "val_loss": val, "train": config.to_dict()},
                        )
            if self.step % config.checkpoint_every == 0 or self.step == end:
                self.save()
        bar.close()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the loggers (TensorBoard, wandb)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def _log(self, record: dict, scalars: dict[str, float] | None = None) -> None:
        """metrics.jsonl gets `record`; TensorBoard and wandb get it and `scalars`. Rank 0 only."""
        if not self.ranks.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        values = {k: v for k, v in record.items() if k != "step"} | (scalars or {})
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playmodel train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", required=True, help="training YAML (or a name in training/configs)"
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (playmodel parse)")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--max-steps", type=int, help="stop at this step (default: the config's)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu (under torchrun, each rank takes cuda:LOCAL_RANK)",
    )
    parser.add_argument("--wandb", action="store_true", help="also log to wandb (if installed)")
    parser.add_argument("--wandb-project", help="wandb project (default: the config's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ranks = Distributed.from_env()
    logging.basicConfig(
        level=logging.INFO if ranks.is_main else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
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
        if args.wandb:
            config = dataclasses.replace(config, wandb=True)
        if args.wandb_project:
            config = dataclasses.replace(config, wandb_project=args.wandb_project)
        ranks.shard(config.batch_size)  # fails early when the batch does not split
        run_dir.mkdir(parents=True, exist_ok=True)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    device = init_distributed(ranks, args.device)
    try:
        return _train(args, config, run_dir, device, ranks)
    finally:
        if ranks.world_size > 1:
            dist.destroy_process_group()


def _train(args, config: TrainConfig, run_dir: Path, device, ranks: Distributed) -> int:
    try:
        trainer = Trainer(config, args.data, run_dir, device, ranks)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    if args.resume:
        try:
            trainer.resume()
        except CheckpointError as e:
            log.error("%s", e)
            return 2
    elif ranks.is_main:
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump({"train": config.to_dict()}, sort_keys=False))
    log.info(
        "%d training games (%d frames), %d validation games; model %s, %s parameters; "
        "%d rank(s), amp %s",
        len(trainer.train_data),
        trainer.train_data.total_frames,
        len(trainer.val_data),
        config.model,
        f"{trainer.model.num_parameters():,}",
        ranks.world_size,
        trainer.amp_dtype or "off",
    )
    try:
        trainer.run(args.max_steps)
    finally:
        trainer.close()
    if ranks.is_main:
        print(f"step {trainer.step}: best validation loss {trainer.best_val:.4f} -> {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
