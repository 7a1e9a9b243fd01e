"""The optimiser, its learning-rate schedule and the mixed-precision choice of a training run:
AdamW (no weight decay on A_log, D, dt_bias, norms and biases; an action-conditioned model's
tables in a group of their own), linear warm-up then cosine decay, bf16 / fp16 autocast on
CUDA."""

from __future__ import annotations

import logging
import math

import torch

from model.world_model import WorldModel
from training.run_config import TrainConfig

log = logging.getLogger(__name__)


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
