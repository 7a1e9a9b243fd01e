"""Training throughput: frames per second (batch x seq_len per second) for forward, backward
and optimiser step, and data loading alone.

    python bench/train.py [--configs mamba2-small,mamba2-large] [--batch 64] [--seq-len 60]
                          [--steps N] [--data DIR] [--device cpu|cuda] [--json OUT]

Uses the real `Trainer.train_step` (dataset batch, model, losses, AdamW) on a dataset folder
made by `playmodel parse` (default: ../shared/replays/dev ingested into a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from training.dataset import GameDataset
from training.ingest import ingest
from training.run_config import TrainConfig
from training.train import Trainer

DEV = Path(__file__).resolve().parents[2] / "shared" / "replays" / "dev"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mamba2-small,mamba2-large")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=60)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data", type=Path)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: CUDA if present",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            ingest([DEV], data, progress=False)
        frames_per_step = args.batch * args.seq_len
        dataset = GameDataset(data, "all")
        start = time.perf_counter()
        for step in range(200):
            dataset.batch(step, args.batch, args.seq_len)
        loading = 200 * frames_per_step / (time.perf_counter() - start)
        results = {
            "machine": describe_machine(),
            "threads": torch.get_num_threads(),
            "device": args.device,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "data_loading_frames_per_s": round(loading),
            "models": [],
        }
        print(f"machine: {results['machine']}, {results['threads']} threads")
        print(f"data loading alone: {loading:>12,.0f} frames/s")
        for name in args.configs.split(","):
            config = TrainConfig(
                model=name,
                batch_size=args.batch,
                seq_len=args.seq_len,
                val_fraction=0.0,
                max_steps=10**6,
            )
            trainer = Trainer(config, data, Path(tmp) / name, device=args.device)
            trainer.train_step()  # warm up (on CUDA: kernel compilation and autotuning)
            synchronize(args.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            synchronize(args.device)
            fps = args.steps * frames_per_step / (time.perf_counter() - start)
            params = trainer.model.num_parameters()
            results["models"].append(
                {
                    "config": name,
                    "params": params,
                    "amp": str(trainer.amp_dtype).removeprefix("torch.")
                    if trainer.amp_dtype
                    else "fp32",
                    "train_frames_per_s": round(fps),
                }
            )
            print(
                f"{name} ({params:,} parameters): {fps:>10,.0f} frames/s "
                f"(batch {args.batch} x {args.seq_len})"
            )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
