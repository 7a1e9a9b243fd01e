"""int8 on the CPU: model/quantize.py's `torch.ao.quantization` dynamic int8 against
torchao's, on the same linears (each mixer's in_proj and out_proj, the players' heads).

    python bench/int8_torchao.py [--frames N] [--checkpoint PATH]    # needs `pip install torchao`

torchao's `Int8DynamicActivationInt8WeightConfig` (per-token activation scales, per-row
weights) and `Int8WeightOnlyConfig`, each stepped eagerly and from the trace `Simulation`
uses (`model.traced_step`; None where the trace fails), against torch.ao's, traced and eager.
At batch 1 and 8, p50 / p99 ms over --frames steps after 30, the paths taking turns of 25
frames (bench/step.py's `time_live`).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine
from step import DEFAULT_REPLAY, live_inputs, load_frames, make_step, time_live

from model.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from model.quantize import _products, quantize_int8
from model.traced_step import traced_step

CPU = torch.device("cpu")


def torchao_copy(model, config):
    from torchao.quantization import quantize_

    quantized = copy.deepcopy(model).float().eval()
    targets = {id(getattr(parent, name)) for parent, name in _products(quantized)}
    start = time.perf_counter()
    quantize_(quantized, config, filter_fn=lambda module, _fqn: id(module) in targets)
    print(f"torchao {type(config).__name__}: {time.perf_counter() - start:.2f} s")
    return quantized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="timed steps per batch size")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    args = parser.parse_args()
    import torchao
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    model = load_checkpoint(args.checkpoint)[0].eval()
    print(
        f"machine: {describe_machine()}, torch {torch.__version__}, torchao {torchao.__version__}"
    )
    variants = {
        "torch.ao": quantize_int8(model),
        "torchao dynamic": torchao_copy(model, Int8DynamicActivationInt8WeightConfig()),
        "torchao weight-only": torchao_copy(model, Int8WeightOnlyConfig()),
    }
    frames = load_frames(DEFAULT_REPLAY)
    with torch.inference_mode():
        for batch in (1, 8):
            prev, controls = live_inputs(frames, batch, 1, CPU)
            paths = {}
            for name, quantized in variants.items():
                cache = quantized.allocate_inference_cache(batch)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    traced = traced_step(quantized, prev, controls[0], cache)
                if traced is None:
                    reason = next((str(w.message) for w in caught), "failed before, kept as None")
                    print(f"{name}: no trace: {reason:.200}")
                else:
                    paths[f"{name} traced"] = traced
                paths[f"{name} eager"] = make_step(quantized)
            runs = time_live(list(paths.values()), model, frames, batch, 30, args.frames, CPU, 25)
            for name, t in zip(paths, runs, strict=True):
                p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
                print(f"batch {batch:>2}  {name:>28}  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")


if __name__ == "__main__":
    main()
