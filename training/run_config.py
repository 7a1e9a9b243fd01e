"""The training run's configuration: `TrainConfig`, every field with a default, read from a
YAML file (or a preset name in training/configs) and saved into every run folder and
checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.losses import LossWeights

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
