"""`playmodel`: one command in front of every entry point of the project.

Each subcommand lives in one package and is imported only when it is run, so that, for
example, `playmodel play` never imports torch. The same commands run as
`python -m <package> <command>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> (package, module with `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "parse": ("training", "training.ingest", "parse Slippi replays into a parquet dataset"),
    "train": ("training", "training.train", "train the world model on a parquet dataset"),
    "eval": ("training", "training.evaluate", "evaluate a checkpoint against baselines"),
    "compare": ("training", "training.compare", "compare evaluated runs (table and chart)"),
    "probe": ("training", "training.probe_run", "play a checkpoint's behaviour probes"),
    "probe-expectations": (
        "training",
        "training.probe_expectations",
        "mine the behaviour probes' expectations from real games",
    ),
    "match": ("server", "server.match", "play a headless policy-vs-policy match"),
    "serve": ("server", "server.serve", "run the live game server (websockets + REST)"),
    "compile-step": (
        "server",
        "server.compile_step",
        "compile a model's CPU step ahead of time (serve otherwise does it in the background)",
    ),
    "play": ("client", "client.app", "open the pygame window and play (starts a local server)"),
}


def run_package_command(package: str, argv: Sequence[str]) -> int:
    """Entry point of `python -m <package>`: the commands that live in that package."""
    own = {name: spec for name, spec in COMMANDS.items() if spec[0] == package}
    return _dispatch(f"python -m {package}", own, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return _dispatch("playmodel", COMMANDS, sys.argv[1:] if argv is None else argv)


def _dispatch(prog: str, commands: dict, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Play the Model: Melee world model.")
    parser.add_argument("command", choices=sorted(commands), help="what to run")
    for name, (_, _, help_text) in sorted(commands.items()):
        parser.epilog = (parser.epilog or "commands:") + f"\n  {name:8s} {help_text}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(commands[args.command][1])
    return module.main(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
