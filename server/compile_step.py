"""`playmodel compile-step`: compile a model's CPU step ahead of time, in the foreground.

`playmodel serve` does this by itself, in the background, the first time it serves a model
on a machine (docs/SERVER.md, "How it runs"), and plays on the trace meanwhile. This command
does it beforehand (in an image's build, before a benchmark), so that the first start serves
the compiled step from its first tick. A package already cached is only checked.

    playmodel compile-step [--checkpoint PATH | --config NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import model.compiled_step as compiled_step
from model.checkpoint import load_model
from model.game_start import GameSetup
from model.simulation import Simulation

PROGRESS_EVERY_S = 15.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="playmodel compile-step", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--checkpoint", help="default: the bundled demo checkpoint")
    parser.add_argument("--config", help="an untrained model of this config (load tests)")
    args = parser.parse_args(argv)
    if not compiled_step.enabled():
        print(f"{compiled_step.DISABLE_ENV} is off: nothing to compile", file=sys.stderr)
        return 2
    model, name = load_model(args.checkpoint, args.config, "cpu")
    sim = Simulation(model, compiled=True)
    sim.new_game(GameSetup())
    start = last_said = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim.step({})
        while sim.last_step_path != "compiled" and not _gave_up(caught):
            if time.monotonic() - last_said >= PROGRESS_EVERY_S:
                last_said = time.monotonic()
                print(f"still compiling ({last_said - start:.0f} s)", file=sys.stderr, flush=True)
            time.sleep(0.5)
            sim.step({})
    if sim.last_step_path != "compiled":
        for problem in _gave_up(caught):
            print(f"playmodel compile-step: {problem.message}", file=sys.stderr)
        return 1
    took = time.monotonic() - start
    print(
        f"{name}: the compiled step is ready ({took:.0f} s), cached in {compiled_step.cache_dir()}"
    )
    return 0


def _gave_up(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    """The warnings by which `model.compiled_step` says the trace will go on serving (each
    ends so); any other warning on the way (a library's deprecation) is no failure."""
    return [w for w in caught if "the trace serves" in str(w.message)]
