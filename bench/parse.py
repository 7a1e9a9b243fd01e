"""Ingestion throughput: replay to parquet, end to end, in frames per second.

    python bench/parse.py [SRC] [--repeat N] [--json OUT]

SRC defaults to ../shared/replays/dev. Runs the real `ingest` (hashing, parsing, conversion,
parquet writes, manifest) into a fresh folder with one worker and with all cores, and, for
reference, peppi-py's reader alone on one core. Reports the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from training.ingest import find_replays, ingest

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "replays" / "dev"


def peppi_alone(files: list[Path]) -> float:
    from peppi_py._peppi import read_slippi

    frames, start = 0, time.perf_counter()
    for path in files:
        frames += len(read_slippi(str(path), False).frames)
    return frames / (time.perf_counter() - start)


def end_to_end(src: Path, workers: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = ingest([src], out, workers=workers, progress=False)
        elapsed = time.perf_counter() - start
    return summary.frames / elapsed, summary.frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    files, _ = find_replays([args.src])
    cores = len(os.sched_getaffinity(0))
    peppi_alone(files)  # warm the page cache
    results = {"machine": describe_machine(), "src": str(args.src), "files": len(files)}
    results["peppi_alone_fps"] = max(peppi_alone(files) for _ in range(args.repeat))
    for label, workers in (("one_worker", 1), ("all_workers", cores)):
        runs = [end_to_end(args.src, workers) for _ in range(args.repeat)]
        results[f"{label}_fps"] = max(fps for fps, _ in runs)
        results["frames"] = runs[0][1]
    results["workers"] = cores

    print(f"machine: {results['machine']}")
    print(f"{results['files']} files, {results['frames']:,} frames from {args.src}")
    print(f"peppi-py alone, 1 core:   {results['peppi_alone_fps']:>12,.0f} frames/s")
    print(f"end to end, 1 worker:     {results['one_worker_fps']:>12,.0f} frames/s")
    print(f"end to end, {cores} workers:    {results['all_workers_fps']:>12,.0f} frames/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
