"""How often the traced live step takes the GIL back while another thread holds it.

    python bench/gil_handback.py [--games 4] [--calls 5]

The trace runs without the GIL. A thread that needs the GIL while another holds it sleeps
until it is handed over: a voluntary context switch (getrusage's `ru_nvcsw`, per thread). In
the server the other thread is the event loop; here it is a thread spinning in Python. With
its inputs pinned (`model.traced_step._pin_for_the_call`), a step waits for the GIL once or
twice, to return; unpinned, once or twice per input tensor. The script times both, taking
turns, and prints the median switches per step of each with the machine.

This is a measurement, not a test: it needs the spinner to keep a core of its own, which a
busy machine does not give it (then unpinned steps show no contention either, and the script
says so). tests/test_traced_step.py checks what the pin does (one more reference to every
input, held for the call), which holds on any machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

import model.traced_step as traced_step_module
from model.config import ModelConfig
from model.game_start import GameSetup
from model.simulation import Simulation
from model.world_model import WorldModel

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


def voluntary_switches() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def measure(games: int, calls: int) -> tuple[dict[bool, list[int]], int]:
    """Switches per traced step, unpinned (False) and pinned (True), and the step's input
    tensor count."""
    torch.manual_seed(0)
    sim = Simulation(WorldModel(TINY).eval())
    for seed in range(games):
        sim.new_game(GameSetup(seed=seed))
    sim.step({})  # makes the trace
    assert sim._traced is not None, "no traced step on this machine"
    pin = traced_step_module._pin_for_the_call
    spinning, stop = threading.Event(), threading.Event()

    def spin():
        spinning.set()
        while not stop.is_set():
            pass

    interval, threads = sys.getswitchinterval(), torch.get_num_threads()
    sys.setswitchinterval(0.002)
    torch.set_num_threads(1)  # a second OpenMP thread would take the spinner's core
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    counts: dict[bool, list[int]] = {True: [], False: []}
    try:
        spinning.wait()
        controls = sim._controls_batch({})
        with torch.inference_mode():
            for _ in range(calls):
                for pinned in (False, True):
                    traced_step_module._pin_for_the_call = pin if pinned else lambda *a: None
                    before = voluntary_switches()
                    sim._traced(sim.batch_frame, controls, sim._cache, sim._rules)
                    counts[pinned].append(voluntary_switches() - before)
    finally:
        traced_step_module._pin_for_the_call = pin
        stop.set()
        spinner.join()
        sys.setswitchinterval(interval)
        torch.set_num_threads(threads)
    inputs = len(sim._cache.layers) * 2 + len(sim._rules.tensors())
    return counts, inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=4)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args(argv)
    if not hasattr(resource, "RUSAGE_THREAD"):
        print("needs Linux (per-thread getrusage)")
        return 1
    counts, inputs = measure(args.games, args.calls)
    unpinned, pinned = (sorted(counts[p])[len(counts[p]) // 2] for p in (False, True))
    print(f"machine: {describe_machine()}")
    print(f"traced step of {args.games} games, {inputs} input tensors, tiny model")
    print(
        f"voluntary switches per step, median of {args.calls}: unpinned {unpinned}, pinned {pinned}"
    )
    if unpinned < inputs // 2:
        print("no GIL contention shown: the spinner had no core of its own (a busy machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
