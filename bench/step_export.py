"""The CPU live step from `torch.jit.trace` (what `Simulation` runs, `model/traced_step.py`)
against `torch.export` + AOTInductor (`aoti_compile_and_package`) or `torch.compile`.

    python bench/step_export.py [--path aoti|compile] [--frames N] [--checkpoint PATH]
                                [--rules] [--int8]

Both run `LiveStep` without the rules (as bench/step.py times it) on the demo checkpoint: the
trace made at batch 1, the export made once at batch 13 with a dynamic batch dimension (1 to
256) so that one compile serves every batch size, as the trace does. Reports the export and
compile times, then at batch 1 and 8: how far the frames of 100 steps (each fed back in the
first frame's dtypes, as the rules' cast does) drift from the trace's, and p50 / p99 ms over
--frames steps, the two paths taking turns. The fused CPU kernels (`model/cpu_kernels.py`)
get shapes for export's fake tensors where they load; PLAYMODEL_CPU_KERNELS=0 runs both
without them.
--rules: the step `Simulation` runs, with the cast back to the frame's dtypes and Melee's
rules (`rules.rule_step`) in the trace and in the export; the event codes are compared too.
--int8: the trace of model/quantize.py's torch.ao int8 model against the export of torchao's
int8 (dynamic activations, per-row weights; needs `pip install torchao`).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine
from step import DEFAULT_REPLAY, live_inputs, load_frames

from core.stages import get_stage
from model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from model.cpu_kernels import fused_step_ops
from model.packed_frame import pack
from model.rules import RuleState
from model.traced_step import LiveStep, TracedStep, copy_of_state, live_layouts, traced_step

EXAMPLE_BATCH = 13  # no field count or width of the demo model is 13: its dim is the batch
CPU = torch.device("cpu")


def torchao_int8(model):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from model.quantize import _products

    quantized = copy.deepcopy(model)
    targets = {id(getattr(parent, name)) for parent, name in _products(quantized)}
    config = Int8DynamicActivationInt8WeightConfig()
    quantize_(quantized, config, filter_fn=lambda module, _fqn: id(module) in targets)
    return quantized


def rules_for(prev, batch: int) -> RuleState:
    """Every game's rules of a 4-stock game on the first game's stage."""
    one = RuleState.new(get_stage(int(prev["stage"][0])), (4, 4), device=CPU).tensors()
    return RuleState.from_tensors(
        {k: v.expand(batch, *v.shape[1:]).clone() for k, v in one.items()}
    )


def compiled_step(model, frames, path: str, with_rules: bool) -> TracedStep:
    prev, controls = live_inputs(frames, EXAMPLE_BATCH, 1, CPU)
    cache = model.allocate_inference_cache(EXAMPLE_BATCH)
    rules = rules_for(prev, EXAMPLE_BATCH) if with_rules else None
    layouts, order = live_layouts(model, prev, controls[0], cache, rules)
    live = LiveStep(model, *layouts).eval()
    conv, ssm, rules_copy = copy_of_state(cache, rules)
    inputs = (pack(prev, layouts[0]), pack(controls[0], layouts[1]), conv, ssm)
    if path == "compile":
        return TracedStep(torch.compile(live, dynamic=True), layouts, order)
    batch = torch.export.Dim("batch", min=1, max=256)
    dynamic = tuple([{list(t.shape).index(EXAMPLE_BATCH): batch} for t in g] for g in inputs)
    if rules_copy is not None:
        inputs += (rules_copy,)
        dynamic += ({k: {0: batch} for k in rules_copy},)
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(live, inputs, dynamic_shapes=dynamic, strict=False)
    exported = time.perf_counter()
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=str(Path(tempfile.mkdtemp()) / "live_step.pt2")
    )
    compiled = time.perf_counter()
    runner = torch._inductor.aoti_load_package(package)
    size = Path(package).stat().st_size / 1e6
    print(
        f"export {exported - start:.1f} s, AOTInductor compile {compiled - exported:.1f} s "
        f"({size:.1f} MB), load {time.perf_counter() - compiled:.2f} s"
    )
    return TracedStep(runner, layouts, order)


def run(step, frames, model, batch: int, steps: int, warmup: int, with_rules: bool):
    """(frame, event codes or None) of `steps` steps after `warmup`, and the ms of each. Each
    frame is fed back in the first frame's dtypes (without the rules, the cast they make)."""
    prev, controls = live_inputs(frames, batch, warmup + steps, CPU)
    dtypes = {k: v.dtype for k, v in prev.items()}
    cache = model.allocate_inference_cache(batch)
    rules = rules_for(prev, batch) if with_rules else None
    outs, times = [], []
    for s in range(warmup + steps):
        start = time.perf_counter()
        if rules is None:
            out, codes = step(prev, controls[s], cache), None
        else:
            out, codes = step(prev, controls[s], cache, rules)
        times.append((time.perf_counter() - start) * 1e3)
        prev = {k: out[k].to(dtypes[k]) for k in dtypes}
        outs.append((prev, None if codes is None else codes.clone()))
    return outs, np.array(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("aoti", "compile"), default="aoti")
    parser.add_argument("--frames", type=int, default=400, help="timed steps per batch size")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--rules", action="store_true", help="with the rules, as Simulation")
    parser.add_argument("--int8", action="store_true", help="torch.ao's trace, torchao's export")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    model = load_checkpoint(args.checkpoint)[0].eval()
    exported_model = model
    if args.int8:
        from model.quantize import quantize_int8

        model, exported_model = quantize_int8(model), torchao_int8(model)
    frames = load_frames(DEFAULT_REPLAY)
    kernels = fused_step_ops() is not None  # with their shapes for export's fake tensors
    print(f"machine: {describe_machine()}, torch {torch.__version__}, fused kernels {kernels}")
    with torch.inference_mode():
        prev, controls = live_inputs(frames, 1, 1, CPU)
        start = time.perf_counter()
        rules = rules_for(prev, 1) if args.rules else None
        cache = model.allocate_inference_cache(1)
        # Before the export: a trace made after one in the same process failed here.
        traced = traced_step(model, prev, controls[0], cache, rules)
        assert traced is not None, "the trace failed"
        print(f"trace {time.perf_counter() - start:.2f} s")
    fast = compiled_step(exported_model, frames, args.path, args.rules)
    with torch.inference_mode():
        for batch in (1, 8):
            start = time.perf_counter()
            run(fast, frames, model, batch, 1, 0, args.rules)
            print(f"batch {batch}: first {args.path} call {time.perf_counter() - start:.1f} s")
            ours = run(traced, frames, model, batch, 100, 0, args.rules)[0]
            theirs = run(fast, frames, model, batch, 100, 0, args.rules)[0]
            pairs = list(zip(ours, theirs, strict=True))
            drift = max(
                (a[k].double() - b[k].double()).abs().max().item()
                for (a, _), (b, _) in pairs
                for k in a
            )
            codes = sum(int((a != b).sum()) for (_, a), (_, b) in pairs if a is not None)
            print(
                f"batch {batch}: max |trace - {args.path}| over 100 steps' frames: {drift:.3g}"
                + (f", event codes differing: {codes}" if args.rules else "")
            )
            times: dict[str, list[np.ndarray]] = {"traced": [], args.path: []}
            for _ in range(4):  # turns, so that both see the same machine
                for name, step in (("traced", traced), (args.path, fast)):
                    timed = run(step, frames, model, batch, args.frames // 4, 10, args.rules)[1]
                    times[name].append(timed)
            for name, parts in times.items():
                t = np.concatenate(parts)
                p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
                print(f"batch {batch:>2}  {name:>8}  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")


if __name__ == "__main__":
    main()
