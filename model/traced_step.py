"""One live step (model.step + argmax decode) run from a TorchScript trace: the CPU fast path.

On a CPU, a step of the small model at 60 Hz is bound by per-op overhead, not arithmetic:
about a thousand small tensor ops, each paying Python and dispatcher costs. Replaying a trace
runs the same aten ops from TorchScript's interpreter instead of Python, which makes the step
1.4-1.7 times faster (the small model: 3.3 instead of 5.5 ms at batch 1, 8.2 instead of 11.4
at batch 32; BENCHMARKS.md, "Live step latency") and the frames bitwise the same, since no op
is changed, fused or reordered (a test checks this).

Why a trace and not torch.compile: on this project's CPU machines torch.compile takes a minute
or more per batch size, and a live server's batch size changes whenever a session joins or
leaves. A trace takes well under a second and serves every batch size, because the batch
dimension is read with `size()` inside the graph rather than baked in as a constant. It is
made once per model and shared by every `Simulation` of that model (the server's rollbacks
replay on scratch simulations).

torch.jit.trace is deprecated in favour of torch.compile and torch.export; its deprecation
warning is silenced here on purpose. If tracing fails (a future torch without it), callers get
None and step eagerly.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from model.frames import Frames
from model.heads import decode
from model.mamba2 import Mamba2Cache
from model.world_model import WorldModel, WorldModelCache


class _LiveStep(nn.Module):
    """model.step + argmax decode over a cache given as flat lists of tensors (a trace takes
    tensors and containers of tensors, not dataclasses)."""

    def __init__(self, model: WorldModel):
        super().__init__()
        self.model = model

    def forward(
        self, prev: Frames, controls: Frames, conv: list[Tensor], ssm: list[Tensor]
    ) -> Frames:
        cache = WorldModelCache([Mamba2Cache(c, s) for c, s in zip(conv, ssm, strict=True)])
        return decode(self.model.step(prev, controls, cache), prev, controls)


class TracedStep:
    """Callable like `decode(model.step(prev, controls, cache), prev, controls)`; updates
    `cache` in place the same way."""

    def __init__(self, module: torch.jit.ScriptModule):
        self.module = module

    def __call__(self, prev: Frames, controls: Frames, cache: WorldModelCache) -> Frames:
        conv = [layer.conv_state for layer in cache.layers]
        ssm = [layer.ssm_state for layer in cache.layers]
        return self.module(prev, controls, conv, ssm)


def traced_step(
    model: WorldModel, prev: Frames, controls: Frames, cache: WorldModelCache
) -> TracedStep | None:
    """The trace of `model`'s live step, made on first use from these example inputs (which
    are not modified) and kept on the model for every later caller; None, with a warning, if
    it cannot be made. A trace holds what it was made with: a model whose parameters were
    since replaced (moved to another device or dtype), or frames with other columns, dtypes or
    item shapes, get a new trace (callers keep the one they were given)."""
    signature = tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())
    signature += tuple(
        (key, frame[key].dtype, tuple(frame[key].shape[1:]))
        for frame in (prev, controls)
        for key in sorted(frame)
    )
    kept = getattr(model, _ATTRIBUTE, None)  # a plain attribute: not a submodule, not saved
    if kept is not None and kept[0] == signature:
        return kept[1]
    scratch = WorldModelCache(
        [Mamba2Cache(c.conv_state.clone(), c.ssm_state.clone()) for c in cache.layers]
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            module = torch.jit.trace(
                _LiveStep(model).eval(),
                (
                    prev,
                    controls,
                    [c.conv_state for c in scratch.layers],
                    [c.ssm_state for c in scratch.layers],
                ),
                strict=False,  # the output is a dict
                check_trace=False,  # checking would run the step again, for nothing new
            )
        result: TracedStep | None = TracedStep(module)
    except Exception as e:  # noqa: BLE001 - any tracer failure: step eagerly instead
        warnings.warn(f"tracing the live step failed ({e!r:.200}); stepping eagerly", stacklevel=2)
        result = None
    setattr(model, _ATTRIBUTE, (signature, result))
    return result


_ATTRIBUTE = "_traced_live_step"
