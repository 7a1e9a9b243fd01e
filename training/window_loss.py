"""The training loss of a batch of windows: teacher forcing, optionally with scheduled
sampling (a fraction of the input frames replaced by the model's own predictions) and a true
autoregressive unroll of the last positions through the recurrent step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from model.decoding import decode
from model.frames import Frames
from model.mamba2 import Mamba2Cache
from model.world_model import WorldModel, WorldModelCache
from training.losses import LossWeights, compute_losses
from training.run_config import TrainConfig
from training.windows import teacher_choices


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
