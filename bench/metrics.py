"""The cost of the server's metrics: what one tick pays to record itself, and what a scrape of
/metrics pays to render them.

    python bench/metrics.py [--module PATH] [--repeat N] [--number N] [--json OUT]

A tick (`server/engine.py`, the tick loop; `server/live_batch.py`) records one tick, its
duration in the histogram and in the last-minute summary, and the session frames it stepped:
`ticks.inc()`, `tick_seconds.observe(d)`, `recent_ticks.observe(d)`, `frames_stepped.inc(8)`.
Each is timed alone and the four together ("tick"), with `timeit`: --repeat runs of --number
calls each, reported as the median and p99 over the runs of the time per call. The render is
timed once per run with the histogram and the summary's window full (3,600 ticks). --module
loads `ServerMetrics` from another file (e.g. an older `server/metrics.py` taken out of git
with `git show REV:server/metrics.py > /tmp/old.py`) to compare the two.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine


def load_server_metrics(path: Path | None):
    if path is None:
        from server.metrics import ServerMetrics

        return ServerMetrics
    spec = importlib.util.spec_from_file_location("metrics_under_test", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ServerMetrics


def per_call_us(fn, repeat: int, number: int) -> dict[str, float]:
    runs = np.array(timeit.repeat(fn, repeat=repeat, number=number)) / number * 1e6
    return {
        "median_us": round(float(np.median(runs)), 3),
        "p99_us": round(float(np.percentile(runs, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", type=Path, help="a file defining ServerMetrics")
    parser.add_argument("--repeat", type=int, default=2000, help="timed runs")
    parser.add_argument("--number", type=int, default=100, help="calls per run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    metrics = load_server_metrics(args.module)()
    rng = random.Random(0)
    durations = [rng.uniform(0.002, 0.012) for _ in range(4096)]
    for d in durations[:3600]:  # a full minute of ticks: the render's worst case
        metrics.tick_seconds.observe(d)
        metrics.recent_ticks.observe(d)

    def tick() -> None:
        d = durations[rng.randrange(4096)]
        metrics.ticks.inc()
        metrics.tick_seconds.observe(d)
        metrics.recent_ticks.observe(d)
        metrics.frames_stepped.inc(8)

    calls = {
        "ticks.inc()": metrics.ticks.inc,
        "tick_seconds.observe(d)": lambda: metrics.tick_seconds.observe(0.0071),
        "recent_ticks.observe(d)": lambda: metrics.recent_ticks.observe(0.0071),
        "frames_stepped.inc(8)": lambda: metrics.frames_stepped.inc(8),
        "tick (the four)": tick,
    }
    results = {
        "module": str(args.module or "server/metrics.py"),
        "machine": describe_machine(),
        "repeat": args.repeat,
        "number": args.number,
        "calls": {name: per_call_us(fn, args.repeat, args.number) for name, fn in calls.items()},
    }
    render = lambda: metrics.render(3, 1)  # noqa: E731
    results["render"] = per_call_us(render, min(args.repeat, 500), 1)
    results["render_bytes"] = len(render().encode())

    print(f"machine: {results['machine']}")
    print(f"{results['module']}: {args.repeat} runs of {args.number} calls")
    print(f"{'call':>26}  {'median us':>10}  {'p99 us':>10}")
    for name, r in [*results["calls"].items(), ("render /metrics", results["render"])]:
        print(f"{name:>26}  {r['median_us']:>10.3f}  {r['p99_us']:>10.3f}")
    print(f"render: {results['render_bytes']} bytes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
