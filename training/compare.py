"""`playmodel compare RUN... --out DIR`: compare evaluated runs in a table and a chart.

Each RUN is a run folder holding `eval.json` (written by `playmodel eval --json RUN/eval.json`)
or an eval JSON file itself. Writes `DIR/compare.md`, a markdown table of rollout coherence
(RC5, RC10, RC20) for each model with its ratio to the better baseline, and teacher-forced action
accuracy, and `DIR/compare.png`, RC against K for every run and the baselines. Use it to settle
questions such as the original plan's seq_len 10 against 60 with data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from core.atomic_file import atomic_path

log = logging.getLogger(__name__)
KS = (5, 10, 20)


def load_eval(path: Path) -> dict:
    file = path / "eval.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{path}: no eval.json (run playmodel eval --json {file})")
    result = json.loads(file.read_text(encoding="utf-8"))
    for section in ("model", "persistence", "constant_velocity"):
        if section not in result:
            raise ValueError(f"{file}: not a playmodel eval result (no {section!r} section)")
    return result


def table(runs: dict[str, dict]) -> str:
    header = ["run", *[f"RC{k}" for k in KS], *[f"RC{k} / best baseline" for k in KS]]
    header.append("action accuracy")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, result in runs.items():
        cells = [name]
        cells += [f"{result['model'][f'rc{k}']:.2f}" for k in KS]
        for k in KS:
            best = min(result["persistence"][f"rc{k}"], result["constant_velocity"][f"rc{k}"])
            cells.append(f"{result['model'][f'rc{k}'] / best:.2f}")
        cells.append(f"{result['teacher_forced']['accuracy']['action']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(runs.values()))
    for baseline in ("persistence", "constant_velocity"):
        cells = [f"*{baseline.replace('_', ' ')}* ({next(iter(runs))})"]
        cells += [f"{first[baseline][f'rc{k}']:.2f}" for k in KS] + [""] * (len(KS) + 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, result in runs.items():
        axis.plot(KS, [result["model"][f"rc{k}"] for k in KS], marker="o", label=name)
    first = next(iter(runs.values()))
    for baseline, style in (("persistence", ":"), ("constant_velocity", "--")):
        values = [first[baseline][f"rc{k}"] for k in KS]
        axis.plot(KS, values, style, color="grey", label=baseline.replace("_", " "))
    axis.set_xlabel("K (frames)")
    axis.set_ylabel("RC_K: mean position error over horizons 1..K")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="playmodel compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        runs = {str(path): load_eval(path) for path in args.runs}
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    with atomic_path(args.out / "compare.md") as tmp:
        tmp.write_text("# Rollout coherence\n\n" + text, encoding="utf-8")
    chart(runs, args.out / "compare.png")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
