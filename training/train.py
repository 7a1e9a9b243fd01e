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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core import game_state as gs
from core.atomic_file import atomic_path, remove_stale_temporaries
from core.host_memory import keep_freed_host_memory
from model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_metadata,
    read_weights,
    save_checkpoint,
)
from model.config import ModelConfig, load_config
from model.decoding import decode
from model.frames import Frames, controls_of
from model.heads import MOTION_COLUMNS, PLAYER_WIDTHS, PRIOR_COLUMNS
from model.mamba2 import Mamba2Cache
from model.world_model import WorldModel, WorldModelCache
from training.dataset import GameDataset
from training.losses import LossWeights, compute_losses
from training.mirror import ground_mirror_table, mirror_windows

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mamba2-small"  # a preset name or a model YAML
    seq_len: int = 60  # frames per training window (the old design's context length K)
    batch_size: int = 32  # the global batch: shared out between the ranks under torchrun
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
    # True autoregressive unroll: the last `unroll` positions of every window read the frame
    # decoded from the model's own prediction at the position before, one recurrent step at a
    # time, and their loss counts with the others'. 0 turns it off; at most seq_len - 1.
    unroll: int = 0
    # Left/right mirror augmentation (training/mirror.py): the probability that a window is
    # flipped about the stage's centre line. 0 turns it off.
    mirror: float = 0.0
    # The learning rate of an action-conditioned model's action and age tables, as a multiple
    # of `lr` (they have no weight decay). A table row learns only on the frames of its action,
    # and a roll begins on 1 frame in 7,000: at 1x, Adam moves a rare row a few lr per
    # occurrence, and weight decay pulls it back on every step in between.
    condition_lr_scale: float = 1.0
    # Start from these weights (a checkpoint of the same model preset) instead of random
    # ones; the optimiser and the schedule start fresh. Ignored by --resume.
    init_from: str | None = None
    # Mixed precision on CUDA: "auto" is bf16 where the GPU supports it, else fp16 with a
    # gradient scaler; "bf16", "fp16" and "off" choose. CPU training always runs in fp32.
    amp: str = "auto"
    # Weights & Biases, when the `wandb` package is installed (never required): the same
    # scalars as TensorBoard, from rank 0. `--wandb` on the command line turns it on too.
    wandb: bool = False
    wandb_project: str = "play-the-model"

    def __post_init__(self):
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)} (got {self.amp!r})")
        if not 0 <= self.unroll < self.seq_len:
            raise ValueError(f"unroll must be in 0..seq_len-1 = {self.seq_len - 1}")
        if not 0.0 <= self.mirror <= 1.0:
            raise ValueError(f"mirror is a probability in [0, 1] (got {self.mirror})")

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
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

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


def resolve_amp(
    mode: str, device: torch.device, bf16_supported: bool | None = None
) -> torch.dtype | None:
    """The autocast dtype for `mode` on `device`, or None for fp32 (always on CPU)."""
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            log.warning("amp %s needs CUDA: training in fp32 on %s", mode, device)
        return None
    if mode == "off":
        return None
    if mode == "auto":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        mode = "bf16" if bf16_supported else "fp16"
    return torch.bfloat16 if mode == "bf16" else torch.float16


# ---------------------------------------------------------------------- scheduled sampling
def sampling_fraction(config: TrainConfig, step: int) -> float:
    if config.sampling_max <= 0 or step < config.sampling_start:
        return 0.0
    return config.sampling_max * min(
        1.0, (step - config.sampling_start) / max(1, config.sampling_ramp)
    )


def choose_frames(fraction: float, batch: int, length: int, generator: torch.Generator) -> Tensor:
    """Which input frames scheduled sampling replaces: (B, L) bool, never position 0."""
    chosen = torch.rand(batch, length, generator=generator) < fraction
    chosen[:, 0] = False
    return chosen


def mix_in_predictions(model: WorldModel, prev: Frames, controls: Frames, chosen: Tensor) -> Frames:
    """`prev` with the frames where `chosen` (B, L) is True replaced by the model's own decoded
    prediction of that frame from the previous position."""
    with torch.no_grad():
        predicted = decode(model(prev, controls), prev, controls)  # frame t+1 at position t
    batch, length = prev["frame"].shape
    chosen = chosen.to(prev["frame"].device)
    mixed = {}
    for key, real in prev.items():
        guess = torch.cat([real[:, :1], predicted[key][:, :-1].to(real.dtype)], dim=1)
        mask = chosen.view(batch, length, *([1] * (real.dim() - 2)))
        mixed[key] = torch.where(mask, guess, real)
    return mixed


# ---------------------------------------------------------------------- autoregressive unroll
def unroll(
    model: WorldModel,
    prev: Frames,
    controls: Frames,
    steps: int,
    actions: Tensor | None = None,
) -> tuple[dict[str, Tensor], Frames]:
    """Teacher forcing over positions 0..L-steps-1, then `steps` recurrent steps, each reading
    the frame decoded (argmax, `model.decoding.decode`) from the prediction at the position before.

    Returns the predictions at every position, (B, L, ...), and the frames the positions read:
    the given ones, then the model's own. The decoded frames are inputs, not part of the graph
    (argmax has no gradient, and the continuous fields are cut too, as in scheduled sampling);
    the gradient does flow through the recurrent state across the unrolled steps.
    `actions` (B, L, 2, 2), `teacher_choices` of the targets, condition an action-conditioned
    model's heads.
    """
    batch, length = prev["frame"].shape
    split = length - steps
    assert 1 <= split < length, (steps, length)
    head = {k: v[:, :split] for k, v in prev.items()}
    cache = model.allocate_inference_cache(batch, device=prev["frame"].device)
    first = model(
        head,
        {k: v[:, :split] for k, v in controls.items()},
        cache=cache,
        teacher=None if actions is None else actions[:, :split],
    )
    pred = {k: v[:, -1] for k, v in first.items()}  # (B, ...): predicts frame `split`
    frame = {k: v[:, split - 1] for k, v in prev.items()}
    preds, frames = [], []
    with _differentiable_steps(model):
        for t in range(split, length):
            with torch.no_grad():
                decoded = decode(pred, frame, {k: v[:, t - 1] for k, v in controls.items()})
            frame = {k: decoded[k].to(prev[k].dtype) for k in prev}
            # step() updates its cache in place, which autograd forbids for tensors it saved
            # for the backward pass; every step therefore works on a fresh copy.
            cache = WorldModelCache(
                [Mamba2Cache(c.conv_state.clone(), c.ssm_state.clone()) for c in cache.layers]
            )
            step_controls = {k: v[:, t] for k, v in controls.items()}
            pred = model.step(
                frame, step_controls, cache, None if actions is None else actions[:, t]
            )
            preds.append(pred)
            frames.append(frame)
    all_preds = {k: torch.cat([first[k], torch.stack([p[k] for p in preds], 1)], 1) for k in first}
    inputs = {k: torch.cat([head[k], torch.stack([f[k] for f in frames], 1)], 1) for k in prev}
    return all_preds, inputs


@contextlib.contextmanager
def _differentiable_steps(model: WorldModel):
    """The fused single-step kernels of mamba_ssm (CUDA) have no backward pass: step through
    the pure PyTorch path while unrolling for training."""
    saved = [block.mixer.use_kernels for block in model.blocks]
    for block in model.blocks:
        block.mixer.use_kernels = False
    try:
        yield
    finally:
        for block, value in zip(model.blocks, saved, strict=True):
            block.mixer.use_kernels = value


class WindowLoss(nn.Module):
    """The training loss of a batch of windows, in one module so that DistributedDataParallel
    sees the whole computation (including the unrolled steps) in its forward."""

    def __init__(self, model: WorldModel, weights: LossWeights, unroll_steps: int = 0):
        super().__init__()
        self.model, self.weights, self.unroll_steps = model, weights, unroll_steps

    def forward(
        self,
        prev: Frames,
        controls: Frames,
        target: Frames,
        masks: dict[str, Tensor],
        denominator: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """-> total loss, per-head means, and the loss of the unrolled positions alone (for
        logging; None without an unroll)."""
        if self.unroll_steps == 0:
            preds = self.model(prev, controls, teacher=teacher_choices(target))
            return (*compute_losses(preds, prev, target, masks, self.weights, denominator), None)
        preds, inputs = unroll(
            self.model, prev, controls, self.unroll_steps, teacher_choices(target)
        )
        loss, per_head = compute_losses(preds, inputs, target, masks, self.weights, denominator)
        with torch.no_grad():
            tail = slice(-self.unroll_steps, None)
            unrolled, _ = compute_losses(
                *({k: v[:, tail] for k, v in d.items()} for d in (preds, inputs, target)),
                masks,
                self.weights,
                denominator,
            )
        return loss, per_head, unrolled


# ---------------------------------------------------------------------- optimiser and data
# Config fields a run may add to the model it starts from (`init_from`): they add modules,
# which start as their own initialisation makes them.
ADDED_BY_CONFIG = {
    "action_conditioned": "heads.conditioner.",
    "condition_dim": "",
    "motion_prior": "heads.conditioner.prior.",
}
PRIOR_PREFIX = ADDED_BY_CONFIG["motion_prior"]
SPEED_COLUMN = "p1_vel_self_x_air"  # missing in a game whose replay recorded no speeds


def init_weights(model: WorldModel, path: str | Path) -> None:
    """Load the weights of checkpoint `path` into `model`, which must have its config, but for
    modules it adds (`ADDED_BY_CONFIG`: an unconditioned checkpoint may start a conditioned
    run, whose conditioner starts at zero and so leaves the predictions as they were)."""
    config, tensors, _ = read_weights(path)
    ours, theirs = model.config.to_dict(), config.to_dict()
    differ = [k for k in ours if ours[k] != theirs[k] and k not in ADDED_BY_CONFIG]
    if differ:
        diff = ", ".join(f"{k}: {theirs[k]} (the run's model: {ours[k]})" for k in differ)
        raise CheckpointError(f"{path}: init_from's model config differs: {diff}")
    added = tuple(prefix for prefix in ADDED_BY_CONFIG.values() if prefix)
    # The motion prior is data the run mines again from its own training games.
    tensors = {k: v for k, v in tensors.items() if not k.startswith(PRIOR_PREFIX)}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(not k.startswith(added) for k in missing):
        raise CheckpointError(
            f"{path}: init_from's weights do not fit the run's model "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    if model.config.motion_prior and not config.motion_prior:
        start_speeds_from_prior(model)


def start_speeds_from_prior(model: WorldModel) -> None:
    """Zero what writes the prior's speed columns, so that a model whose speed heads learned
    the speeds themselves starts predicting the prior alone: left as they were, they would add
    what they learned on top of the prior (Marth's dash then ends at 2.4 units a frame, the
    prior's 1.6 and the head's 0.8), and unlearn it only slowly on the rare frames it shows."""
    heads = model.heads
    width = sum(PLAYER_WIDTHS)
    columns = PRIOR_COLUMNS.tolist()
    with torch.no_grad():
        for player in range(2):
            rows = [player * width + c for c in columns]
            heads.player.weight[rows] = 0.0
            heads.player.bias[rows] = 0.0
        heads.conditioner.out.weight[columns] = 0.0
        heads.conditioner.out.bias[columns] = 0.0
        motion = MOTION_COLUMNS.tolist()
        heads.conditioner.onset.weight[:, [motion.index(c) for c in columns]] = 0.0


def make_optimizer(model: WorldModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over two groups (three with action tables); each group's `lr_scale` multiplies
    the scheduled rate."""
    conditioner = model.heads.conditioner
    tables = (
        []
        if conditioner is None
        else [conditioner.action.weight, conditioner.age.weight, conditioner.onset.weight]
    )
    decay, no_decay = [], []
    for parameter in model.parameters():
        if any(parameter is table for table in tables):
            continue
        if getattr(parameter, "_no_weight_decay", False) or parameter.dim() < 2:
            no_decay.append(parameter)  # A_log, D, dt_bias, norms, biases
        else:
            decay.append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if tables:  # only then: a run's saved optimiser state has as many groups as it had
        groups.append(
            {"params": tables, "weight_decay": 0.0, "lr_scale": config.condition_lr_scale}
        )
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def teacher_choices(target: Frames) -> Tensor:
    """Both players' action ids and facings in the predicted frames, (B, T, 2, 2) or (B, 2, 2):
    what an action-conditioned model's heads are conditioned on in training (model.heads)."""
    return torch.stack(
        [
            torch.stack([target[f"{p}_action"], target[f"{p}_facing"].long()], -1)
            for p in gs.PLAYERS
        ],
        -2,
    )


def split_window(frames: dict[str, torch.Tensor]):
    """(B, L+1) windows -> prev (frames 0..L-1), controls and targets (frames 1..L)."""
    prev = {k: v[:, :-1] for k, v in frames.items()}
    target = {k: v[:, 1:] for k, v in frames.items()}
    return prev, controls_of(target), target


# ---------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Distributed:
    """This process's place among the data-parallel ranks (torchrun's RANK, WORLD_SIZE and
    LOCAL_RANK); one process on its own is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        env = os.environ
        return cls(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )

    def shard(self, batch_size: int) -> slice:
        """This rank's rows of a global batch: a contiguous block of batch_size / world_size."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} does not split evenly over {self.world_size} ranks"
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def init_distributed(ranks: Distributed, device: str) -> torch.device:
    """Join the process group torchrun describes (nccl on CUDA, gloo otherwise); returns this
    rank's device (cuda:LOCAL_RANK on CUDA). A single process needs no group."""
    chosen = torch.device(device)
    if ranks.world_size == 1:
        return chosen
    if chosen.type == "cuda":
        chosen = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(chosen)
        dist.init_process_group("nccl", device_id=chosen)
    else:
        dist.init_process_group("gloo")
    log.info("rank %d of %d on %s", ranks.rank, ranks.world_size, chosen)
    return chosen


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
        self.writer = _summary_writer(self.run_dir) if main else None
        self.wandb = _wandb_run(config, self.run_dir) if main and config.wandb else None

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.run_dir / "last.state.pt"

    @property
    def weights_path(self) -> Path:
        return self.run_dir / "last.safetensors"

    def save(self) -> None:
        if not self.ranks.is_main:
            return
        # The weights go into the state file too: it is the one unit --resume reads, replaced
        # by a single rename. With the weights only in last.safetensors, a kill -9 between the
        # two writes would leave step-M weights beside step-N optimiser state, and --resume
        # would train on from the mismatched pair without a word.
        state = {
            "step": self.step,
            "best_val": self.best_val,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)
        self._save_weights()

    def _save_weights(self) -> None:
        provenance = {"step": self.step, "train": self.config.to_dict()}
        save_checkpoint(self.weights_path, self.model, provenance)

    def resume(self) -> None:
        """Continue from `last.state.pt`. Raises CheckpointError, naming the files and the
        steps, when the run folder cannot be resumed exactly."""
        state = self._load_state()
        step = state["step"]
        self.step, self.best_val = step, state["best_val"]
        if "model" in state:
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as e:  # load_state_dict lists missing, unexpected, shapes
                raise CheckpointError(
                    f"{self.state_path}: weights do not match model {self.config.model!r}: {e}"
                ) from e
            weights_step = self._weights_step()
            if weights_step != step:
                log.warning(
                    "%s holds step %s but %s holds step %d (the run was stopped between the "
                    "two writes): resuming from step %d and writing its weights to %s",
                    self.weights_path,
                    "(none)" if weights_step is None else weights_step,
                    self.state_path,
                    step,
                    step,
                    self.weights_path,
                )
                if self.ranks.is_main:
                    self._save_weights()
        else:
            # A run folder written before the state file held the weights: the pair can only
            # be trusted when both name the same step.
            model, meta = load_checkpoint(self.weights_path, self.model_config)
            weights_step = meta.get("provenance", {}).get("step")
            if weights_step != step:
                raise CheckpointError(
                    f"cannot resume {self.run_dir}: {self.weights_path} holds the weights of "
                    f"step {weights_step} but {self.state_path} the optimiser state of step "
                    f"{step} (the run was stopped between the two writes, and this older run "
                    "folder keeps no weights in its state file). Start a new run with "
                    f"`init_from: {self.weights_path}` to keep the weights with a fresh optimiser"
                )
            self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the params
        if state.get("scaler"):  # empty when the scaler is off (and in older runs)
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.ranks.is_main and (stale := remove_stale_temporaries(self.run_dir)):
            log.info("removed %d partial files a killed checkpoint write left", stale)
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _load_state(self) -> dict:
        # weights_only: tensors and plain containers only, never arbitrary objects. The only
        # randomness in a step is torch's (batches are a pure function of seed and step), and
        # it is the same on every rank.
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{self.state_path}: no such file (nothing to resume)") from None
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"{self.state_path}: not a training state file ({e})") from e
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.state_path}: not a training state file")
        missing = [k for k in ("step", "best_val", "optimizer", "torch_rng") if k not in state]
        if missing:
            raise CheckpointError(f"{self.state_path}: training state without {missing}")
        return state

    def _weights_step(self) -> int | None:
        """The step last.safetensors was saved at; None when it is missing or unreadable."""
        try:
            return read_metadata(self.weights_path).get("provenance", {}).get("step")
        except CheckpointError:
            return None

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


def _summary_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _wandb_run(config: TrainConfig, run_dir: Path):
    """A wandb run named after the run folder; a resumed run continues the same wandb run (its
    id is kept in `wandb_id` in the run folder). None when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        log.warning("wandb is enabled but not installed (pip install wandb); not logging to it")
        return None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.exists() else None
    run = wandb.init(
        project=config.wandb_project,
        name=run_dir.name,
        dir=str(run_dir),
        config=config.to_dict(),
        id=run_id,
        resume="allow",
    )
    if run_id is None:
        with atomic_path(id_file) as tmp:
            tmp.write_text(str(run.id), encoding="utf-8")
    return run


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
