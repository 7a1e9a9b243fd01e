"""One live step (model.step + argmax decode, and optionally Melee's rules) run from a
TorchScript trace: the CPU fast path.

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

With the rules (`Simulation`'s use) the trace also casts the frame back to the previous
frame's dtypes and runs `rules.rule_step` (the clamp included; written without branches on
the data for this), so a live tick makes one call into the trace and no eager tensor op per
rule. That matters beyond the ops' own cost: every eager op releases the GIL, and a server's
device thread that releases it a few hundred times a tick waits, each time, for the event
loop's thread to hand it back.

torch.jit.trace is deprecated in favour of torch.compile and torch.export; its deprecation
warning is silenced here on purpose. Measured against them (BENCHMARKS.md, "Kept parts"):
torch.compile is 3x slower per step and compiles for ~45 s per batch size; torch.export with
AOTInductor is two to three times as fast but takes 36-60 s to compile, so a server runs the
trace until that compile, made in the background, is ready (`model/compiled_step.py`). If
tracing fails (a future torch without it), callers get None and step eagerly.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from model.decoding import decode
from model.frames import Frames, cast_to
from model.mamba2 import Mamba2Cache
from model.packed_frame import Layout, PackedFrame, layout_of, pack
from model.rule_state import RuleState
from model.rules import rule_step
from model.world_model import WorldModel, WorldModelCache


class LiveStep(nn.Module):
    """model.step + argmax decode; with `rules` (RuleState's tensors), then the cast to the
    previous frame's dtypes and the rules, returning the frame and the event codes.

    Frames come in and go out packed (`pack`), a few stacked tensors instead of a hundred,
    because of the GIL: a call into the trace with a hundred frame tensors in and out took
    the GIL back about 110 times (measured against a second busy Python thread, which is what
    a server's event loop is to its device thread), and about 30 times packed. The cache is a
    list of tensors and the rules a dict, as a trace takes containers of tensors, not
    dataclasses."""

    def __init__(self, model: WorldModel, prev: Layout, controls: Layout, out: Layout):
        super().__init__()
        self.model = model
        self.layouts = prev, controls, out

    def forward(
        self,
        prev: list[Tensor],
        controls: list[Tensor],
        conv: list[Tensor],
        ssm: list[Tensor],
        rules: dict[str, Tensor] | None = None,
    ) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        prev_layout, controls_layout, out_layout = self.layouts
        # Packed frames, read as dicts: a field is a view of its group made when first read,
        # and a stack of fields is a gather from the groups (`frames.stacked_columns`).
        frame, codes = self.frame(
            PackedFrame(prev, prev_layout), PackedFrame(controls, controls_layout), conv, ssm, rules
        )
        packed = pack(frame, out_layout)
        return packed if codes is None else (packed, codes)

    def frame(
        self,
        prev: Frames,
        controls: Frames,
        conv: list[Tensor],
        ssm: list[Tensor],
        rules: dict[str, Tensor] | None,
    ) -> tuple[Frames, Tensor | None]:
        cache = WorldModelCache([Mamba2Cache(c, s) for c, s in zip(conv, ssm, strict=True)])
        frame = decode(self.model.step(prev, controls, cache), prev, controls)
        if rules is None:
            return frame, None
        # The same ops as Simulation's eager step: cast, rules, cast.
        dtypes = {k: v.dtype for k, v in prev.items()}
        frame = cast_to(frame, dtypes)
        state = RuleState.from_tensors(rules)
        codes = rule_step(frame, state, prev, controls)
        return cast_to(frame, dtypes), codes


class TracedStep:
    """Callable like `decode(model.step(prev, controls, cache), prev, controls)`; updates
    `cache` in place the same way."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        layouts: tuple[Layout, Layout, Layout],
        order: list[str],
        path: str = "trace",
    ):
        self.module = module
        self.layouts = layouts
        self.order = order  # the output's fields in the order of the eager step's
        self.path = path  # what runs it, as `Simulation.last_step_path` says

    def __call__(
        self,
        prev: Frames,
        controls: Frames,
        cache: WorldModelCache,
        rules: RuleState | None = None,
    ) -> PackedFrame | tuple[PackedFrame, Tensor]:
        """Without `rules`: the next frame. With them (and a trace made with them): the
        next frame after the rules, and the event codes of `rules.rule_step`; `rules` is
        updated in place like `cache`. A frame this returned, fed back (as a live game
        does), goes in without being packed again."""
        prev_layout, controls_layout, out_layout = self.layouts
        inputs = [
            pack(prev, prev_layout),
            pack(controls, controls_layout),
            [layer.conv_state for layer in cache.layers],
            [layer.ssm_state for layer in cache.layers],
        ]
        rule_tensors = None if rules is None else rules.tensors()
        pin = _pin_for_the_call(inputs, rule_tensors)  # noqa: F841 - held until the call ends
        if rule_tensors is None:
            packed, codes = self.module(*inputs), None
        else:
            packed, codes = self.module(*inputs, rule_tensors)
        frame = PackedFrame(packed, out_layout, self.order)
        return frame if codes is None else (frame, codes)


def _pin_for_the_call(inputs: list[list[Tensor]], rules: dict[str, Tensor] | None):
    """One more C++ reference to every tensor going into the trace, held until it returns.

    In torch 2.13 (this project's CPU build) a tensor with a Python object keeps that object
    alive from C++: when the tensor's C++ reference count crosses between 1 and 2 (the
    interpreter taking or dropping its reference to an input), torch increfs or decrefs the
    Python object, which needs the GIL. The trace runs without the GIL, so it took the GIL
    back once or twice per input tensor, 30-50 times a step, each time waiting for whichever
    thread held it; in the server that is the event loop. Against a thread spinning in Python
    (5 ms switch interval), a step of 16 games of the demo model took 208 ms instead of 57.
    With this reference held, the counts stay at 2 or more during the call and the trace takes
    the GIL back once, to return (bench/gil_handback.py). A C++ list of the tensors is such
    a reference; None where torch has no ScriptList."""
    tensors = [t for group in inputs for t in group]
    if rules is not None:
        tensors += rules.values()
    script_list = getattr(torch, "ScriptList", None)
    return None if script_list is None else script_list(tensors)


def traced_step(
    model: WorldModel,
    prev: Frames,
    controls: Frames,
    cache: WorldModelCache,
    rules: RuleState | None = None,
) -> TracedStep | None:
    """The trace of `model`'s live step (with the rules if `rules` is given), made on first
    use from these example inputs (which are not modified) and kept on the model for every
    later caller; None, with a warning, if it cannot be made. A trace holds what it was made
    with: a model whose parameters were since replaced (moved to another device or dtype), or
    frames with other columns, dtypes or item shapes, get a new trace (callers keep the one
    they were given)."""
    examples = [prev, controls] + ([] if rules is None else [rules.tensors()])
    signature = tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())
    signature += (rules is not None,)
    signature += tuple(
        (key, tensors[key].dtype, tuple(tensors[key].shape[1:]))
        for tensors in examples
        for key in sorted(tensors)
    )
    kept = getattr(model, _ATTRIBUTE, None)  # a plain attribute: not a submodule, not saved
    if kept is None:
        kept = _KeptSteps()
        setattr(model, _ATTRIBUTE, kept)
    if signature in kept:
        return kept[signature]

    try:
        layouts, order = live_layouts(model, prev, controls, cache, rules)
        live = LiveStep(model, *layouts).eval()
        conv, ssm, rules_copy = copy_of_state(cache, rules)
        inputs = (pack(prev, layouts[0]), pack(controls, layouts[1]), conv, ssm)
        inputs += () if rules is None else (rules_copy,)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            module = torch.jit.trace(
                live,
                inputs,
                strict=False,  # the output is a list
                check_trace=False,  # checking would run the step again, for nothing new
            )
        result: TracedStep | None = TracedStep(module, layouts, order)
    except Exception as e:  # noqa: BLE001 - any tracer failure: step eagerly instead
        warnings.warn(f"tracing the live step failed ({e!r:.200}); stepping eagerly", stacklevel=2)
        result = None
    if len(kept) >= _KEEP:  # parameters replaced, or a run of other frames: forget the oldest
        del kept[next(iter(kept))]
    kept[signature] = result
    return result


def copy_of_state(
    cache: WorldModelCache, rules: RuleState | None
) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor] | None]:
    """Copies of the cache's tensors and the rules' (the step runs them in place), in the
    form `LiveStep` takes them."""
    conv = [c.conv_state.clone() for c in cache.layers]
    ssm = [c.ssm_state.clone() for c in cache.layers]
    copied = None if rules is None else {k: v.clone() for k, v in rules.tensors().items()}
    return conv, ssm, copied


def live_layouts(
    model: WorldModel,
    prev: Frames,
    controls: Frames,
    cache: WorldModelCache,
    rules: RuleState | None = None,
) -> tuple[tuple[Layout, Layout, Layout], list[str]]:
    """How a live step's frames go in and out packed (`prev`, `controls`, output), and the
    output's fields in the order of the eager step's, from one eager step on copies of the
    state. The output is packed as `prev` is when it has the same fields, so that a frame fed
    back goes in without being packed again."""
    with torch.inference_mode():
        frame = LiveStep(model, [], [], []).frame(prev, controls, *copy_of_state(cache, rules))[0]
    layouts = layout_of(prev), layout_of(controls), layout_of(frame)
    if sorted(map(sorted, layouts[2])) == sorted(map(sorted, layouts[0])):
        layouts = layouts[0], layouts[1], layouts[0]
    return layouts, list(frame)


class _KeptSteps(dict):
    """A model's steps by signature. A copy of the model (`quantize_int8` makes one) starts
    with none: they hold the original's weights, and a compiled one cannot be copied."""

    def __deepcopy__(self, memo) -> _KeptSteps:
        return _KeptSteps()


_ATTRIBUTE = "_traced_live_steps"
_KEEP = 4
