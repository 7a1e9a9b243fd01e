"""Whether the compiled CPU step (`model/compiled_step.py`) lets another thread run while it steps.

    python bench/gil_compiled.py [--checkpoint CKPT] [--games 8] [--calls 100]

A server's device thread steps the model while the event loop's thread answers websockets;
with Python threads, only one of them runs Python at a time (the GIL). The trace gives the
GIL up for its call and, with its inputs pinned, takes it back once, to return
(bench/gil_handback.py). A package compiled by AOTInductor is called through
`AOTIModelPackageLoader.boxed_run`; this script shows what that does with the GIL. For the
trace (called as `Simulation` calls it, pinned) and the compiled step, each timed on its own
and then beside a thread spinning in Python (switch interval 2 ms): the call's median ms, the
calling thread's voluntary context switches per call (each one a wait for the GIL), and how
many loops the spinner made during the calls, against as long a time of spinning alone.

Needs the checkpoint's compiled step cached (`playmodel compile-step --checkpoint CKPT`).
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from model.game_start import GameSetup
from model.simulation import Simulation


class Spinner:
    def __init__(self):
        self.loops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        while not self._stop.is_set():
            self.loops += 1

    def __enter__(self):
        self._thread.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def step_once(sim: Simulation):
    """The fast step as `Simulation.step` calls it, outside the rest of a tick."""
    fast = sim._fast_step(sim.batch_frame, sim._controls_batch({}))
    return lambda: fast(sim.batch_frame, sim._controls_batch({}), sim._cache, sim._rules)


def measure(model, path: str, games: int, calls: int) -> dict:
    sim = Simulation(model, compiled=path == "compiled")
    for seed in range(games):
        sim.new_game(GameSetup(seed=seed))
    for _ in range(5):
        sim.step({})
    if sim.last_step_path != path:
        raise SystemExit(f"the simulation runs the {sim.last_step_path}, not the {path}")
    call = step_once(sim)
    result = {}
    for beside in (False, True):
        times, switches = [], 0
        with torch.inference_mode(), Spinner() if beside else _Nothing() as spinner:
            start_loops = spinner.loops if beside else 0
            wall = time.perf_counter()
            for _ in range(calls):
                before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
                switches += resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before
            wall = time.perf_counter() - wall
            loops = spinner.loops - start_loops if beside else 0
        if beside:  # the spinner alone, as long
            with Spinner() as alone:
                time.sleep(wall)
            result["spinner_share"] = loops / max(alone.loops, 1)
        key = "beside" if beside else "alone"
        result[f"ms_{key}"] = float(np.median(times) * 1e3)
        result[f"switches_{key}"] = switches / calls
    return result


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args(argv)
    if not hasattr(resource, "RUSAGE_THREAD"):
        print("needs Linux (per-thread getrusage)")
        return 1
    torch.set_num_threads(1)  # a second OpenMP thread would take the spinner's core
    sys.setswitchinterval(0.002)
    model = load_checkpoint(args.checkpoint)[0].eval()
    print(f"machine: {describe_machine()}; {args.checkpoint.name}, {args.games} games")
    for path in ("trace", "compiled"):
        r = measure(model, path, args.games, args.calls)
        print(
            f"{path:>8}: alone {r['ms_alone']:.2f} ms ({r['switches_alone']:.2f} switches); "
            f"beside a spinner {r['ms_beside']:.2f} ms ({r['switches_beside']:.2f} switches), "
            f"the spinner ran {r['spinner_share']:.0%} as much as alone"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
