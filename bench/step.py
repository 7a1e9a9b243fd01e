"""Live-step latency: encode + `WorldModel.step` + `decode` for a batch of B games, per frame.

    python bench/step.py [--config mamba2-large] [--batch 1,8,32] [--frames N] [--warmup N]
                         [--threads N] [--turn N] [--compile] [--compile-mode MODE]
                         [--checkpoint PATH]
                         [--no-trace] [--int8]
                         [--json OUT]

Real frames from ../shared/replays/dev/slippi-js__slp__techTester.slp start each of the B games
at a different offset; every timed step feeds the decoded frame back as the next `prev` and takes
`controls` from the replay's controller columns, like the live server. The model runs in eval
mode, fp32, under `torch.inference_mode()` (random weights unless --checkpoint). Reports p50 and
p99 over --frames steps after --warmup steps, and, as a lower bound, the p50 of the step's dense
matrix products alone (encoder.proj, each layer's in_proj and out_proj, the heads' linears, with
`F.linear` on preallocated inputs, the weights streamed from memory as in a real step), and the
sum of each product's p50 when repeated alone with its weight in cache ("matmuls hot"). --compile
adds rows for `torch.compile` of the whole step (minutes of compilation per batch size).

On CUDA (when available) the timings are bracketed by `torch.cuda.synchronize()`, and the step
is also timed replayed from a CUDA graph captured per batch size (`model.cuda_graph`); on CPU,
run from the TorchScript trace that `Simulation` uses (`model.traced_step`; --no-trace skips),
the eager and traced steps taking turns of --turn frames so that they see the same machine;
--int8 adds the traced step of the model with int8 mixer and head weights (`model.quantize`)
to them.
--dtype bf16 stores the weights in bf16 (the recurrent state and residual stream stay fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from core import game_state as gs
from core.replay_reader import read_replay
from model.config import load_config
from model.decoding import decode
from model.frames import Frames, controls_of, frames_from_table, index
from model.quantize import quantize_int8
from model.traced_step import traced_step
from model.world_model import WorldModel, WorldModelCache

DEFAULT_REPLAY = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "replays"
    / "dev"
    / "slippi-js__slp__techTester.slp"
)

StepFn = Callable[[Frames, Frames, WorldModelCache], Frames]


def load_frames(path: Path) -> Frames:
    return frames_from_table(read_replay(path).table)


def build_model(
    config_name: str, checkpoint: Path | None, device: torch.device, dtype: torch.dtype
) -> WorldModel:
    if checkpoint is not None:
        from model.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint, expect_config=load_config(config_name))
    else:
        torch.manual_seed(0)
        model = WorldModel(load_config(config_name))
    return model.to(device=device, dtype=dtype).eval()


def live_inputs(
    frames: Frames, batch: int, steps: int, device: torch.device
) -> tuple[Frames, list[Frames]]:
    """The first `prev` (B real frames at spread offsets) and the controls of every step."""
    total = len(frames["frame"])
    last_start = max(total - steps - 2, 0)
    offsets = torch.linspace(0, last_start, batch).long()
    all_controls = controls_of(frames)
    prev = {k: v.to(device) for k, v in index(frames, offsets).items()}
    controls = []
    for s in range(steps):
        rows = (offsets + s + 1) % total
        controls.append({k: v.to(device) for k, v in index(all_controls, rows).items()})
    return prev, controls


def make_step(model: WorldModel) -> StepFn:
    def step(prev: Frames, controls: Frames, cache: WorldModelCache) -> Frames:
        return decode(model.step(prev, controls, cache), prev, controls)

    return step


def graph_step(model: WorldModel, frames: Frames, batch: int, device: torch.device) -> StepFn:
    """The live step replayed from a CUDA graph captured for this batch size. The graph owns
    its cache, so the cache argument is ignored."""
    from model.cuda_graph import CudaGraphStep

    prev, controls = live_inputs(frames, batch, 1, device)
    graph = CudaGraphStep(model, prev, controls[0])
    return lambda prev, controls, _cache: graph.replay(prev, controls)


def sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def time_live(
    steps: list[StepFn],
    model: WorldModel,
    frames: Frames,
    batch: int,
    warmup: int,
    timed: int,
    device: torch.device,
    turn: int = 1,
) -> list[np.ndarray]:
    """Milliseconds per step of each of `steps` over `timed` steps after `warmup`, decoded
    frames fed back. The steps take turns, `turn` frames at a time, each with its own cache and
    frames, so that a slow spell of a shared machine weighs on all of them alike.

    Turns of several frames rather than one, because a live server steps one model tick after
    tick: frame by frame, each path would find its weights evicted from the caches by the
    others' (two fp32 paths of mamba2-large stream 120 MB a round through a 32 MB L3), which
    cost the int8 path, whose 15 MB could stay in L3, about a millisecond a step at batch 1."""
    prev, controls = live_inputs(frames, batch, warmup + timed, device)
    state = [(prev, model.allocate_inference_cache(batch, device=device)) for _ in steps]
    sync = sync_fn(device)
    times = [np.empty(timed) for _ in steps]
    for first in range(0, len(controls), turn):
        for i, step in enumerate(steps):
            prev, cache = state[i]
            for s in range(first, min(first + turn, len(controls))):
                sync()
                start = time.perf_counter()
                prev = step(prev, controls[s], cache)
                sync()
                if s >= warmup:
                    times[i][s - warmup] = (time.perf_counter() - start) * 1e3
            state[i] = prev, cache
    return times


def matmuls(model: WorldModel, batch: int, device: torch.device) -> list[tuple]:
    """(weight, bias, preallocated input) for every dense product of one step at `batch`."""
    linears = [(model.encoder.proj, batch)]
    for block in model.blocks:
        linears += [(block.mixer.in_proj, batch), (block.mixer.out_proj, batch)]
    heads = model.heads
    linears += [(heads.player, batch), (heads.item_hidden, batch)]
    linears += [(heads.item_out, batch * gs.ITEM_SLOTS)]
    generator = torch.Generator().manual_seed(0)
    return [
        (
            lin.weight,
            lin.bias,
            torch.randn(rows, lin.in_features, generator=generator).to(device, lin.weight.dtype),
        )
        for lin, rows in linears
    ]


def time_matmuls(
    model: WorldModel, batch: int, warmup: int, timed: int, device: torch.device
) -> np.ndarray:
    ops = matmuls(model, batch, device)
    sync = sync_fn(device)
    times = np.empty(timed)
    for s in range(warmup + timed):
        sync()
        start = time.perf_counter()
        for weight, bias, x in ops:
            F.linear(x, weight, bias)
        sync()
        if s >= warmup:
            times[s - warmup] = (time.perf_counter() - start) * 1e3
    return times


def time_matmuls_hot(
    model: WorldModel, batch: int, warmup: int, timed: int, device: torch.device
) -> float:
    """Sum over the step's products of each one's p50 when repeated alone, so that its weight
    stays in cache: what the products cost without streaming the weights from memory."""
    sync = sync_fn(device)
    total = 0.0
    for weight, bias, x in matmuls(model, batch, device):
        times = np.empty(timed)
        for s in range(warmup + timed):
            sync()
            start = time.perf_counter()
            F.linear(x, weight, bias)
            sync()
            if s >= warmup:
                times[s - warmup] = (time.perf_counter() - start) * 1e3
        total += float(np.percentile(times, 50))
    return total


def result_row(batch: int, live: np.ndarray, lower: float, hot: float, path: str) -> dict:
    return {
        "batch": batch,
        "p50_ms": round(float(np.percentile(live, 50)), 4),
        "p99_ms": round(float(np.percentile(live, 99)), 4),
        "lower_bound_ms": round(lower, 4),
        "matmuls_hot_ms": round(hot, 4),
        "path": path,  # eager, traced, compiled or cuda graph
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mamba2-large", help="preset name or YAML path")
    parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--frames", type=int, default=500, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps first")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--turn", type=int, default=25, help="frames each path steps before the next one's turn"
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help='torch.compile mode, e.g. "max-autotune-no-cudagraphs"',
    )
    parser.add_argument("--checkpoint", type=Path, help="trained weights (default: random)")
    parser.add_argument("--replay", type=Path, default=DEFAULT_REPLAY)
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="weights (state stays fp32)"
    )
    parser.add_argument(
        "--no-cuda-graph", action="store_true", help="on CUDA, time the eager step only"
    )
    parser.add_argument("--no-trace", action="store_true", help="on CPU, time the eager step only")
    parser.add_argument(
        "--int8", action="store_true", help="on CPU, also time the traced step with int8 weights"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = build_model(args.config, args.checkpoint, device, dtype)
    quantized = quantize_int8(model) if args.int8 and device.type == "cpu" else None
    frames = load_frames(args.replay)
    results = {
        "config": args.config,
        "params": model.num_parameters(),
        "machine": describe_machine(),
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "frames": args.frames,
        "warmup": args.warmup,
        "results": [],
    }

    def timed(steps: list[StepFn], batch: int, turn: int = 1) -> list[np.ndarray]:
        return time_live(steps, model, frames, batch, args.warmup, args.frames, device, turn)

    step = make_step(model)
    bounds = {}  # batch -> (streamed, hot) matmul times
    with torch.inference_mode():
        for batch in batches:
            streamed = time_matmuls(model, batch, args.warmup, args.frames, device)
            hot = time_matmuls_hot(
                model, batch, min(args.warmup, 10), min(args.frames, 100), device
            )
            bounds[batch] = float(np.percentile(streamed, 50)), hot
            paths = {"eager": step}
            if device.type == "cpu" and not args.no_trace:
                prev, controls = live_inputs(frames, batch, 1, device)
                cache = model.allocate_inference_cache(batch, device=device)
                if (traced := traced_step(model, prev, controls[0], cache)) is not None:
                    paths["traced"] = traced
                if quantized is not None:
                    if (int8 := traced_step(quantized, prev, controls[0], cache)) is not None:
                        paths["traced int8"] = int8
                    else:
                        paths["eager int8"] = make_step(quantized)
            runs = timed(list(paths.values()), batch, args.turn)
            for path, live in zip(paths, runs, strict=True):
                results["results"].append(result_row(batch, live, *bounds[batch], path))
        if device.type == "cuda" and not args.no_cuda_graph:
            for batch in batches:
                (live,) = timed([graph_step(model, frames, batch, device)], batch)
                results["results"].append(result_row(batch, live, *bounds[batch], "cuda graph"))
        if args.compile:
            for batch in batches:
                torch._dynamo.reset()  # a fresh compile per batch size (no recompile limit)
                start = time.perf_counter()
                try:
                    compiled = torch.compile(step, mode=args.compile_mode, dynamic=False)
                    (live,) = timed([compiled], batch)
                except Exception as e:  # noqa: BLE001 - any compiler failure: report and go on
                    print(f"note: torch.compile failed at batch {batch}, eager only: {e!r:.300}")
                    continue
                elapsed = time.perf_counter() - start
                print(f"note: compiled run at batch {batch} took {elapsed:.0f} s, compile included")
                results["results"].append(result_row(batch, live, *bounds[batch], "compiled"))

    print(f"machine: {results['machine']}")
    print(
        f"{args.config}: {results['params']:,} parameters, {args.dtype}, {device}, "
        f"{results['threads']} threads, {args.frames} timed steps after {args.warmup} warm-up"
    )
    header = ("batch", "path", "p50 ms", "p99 ms", "matmuls p50 ms", "matmuls hot ms")
    widths = (8, 11, 8, 8, 14, 14)
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in results["results"]:
        cells = (
            f"{r['batch']:>8}",
            f"{r['path']:>11}",
            f"{r['p50_ms']:>8.3f}",
            f"{r['p99_ms']:>8.3f}",
            f"{r['lower_bound_ms']:>14.3f}",
            f"{r['matmuls_hot_ms']:>14.3f}",
        )
        print("  ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
