"""int8 weights for CPU inference: `quantize_int8(model)` returns a copy of a WorldModel whose
Mamba-2 mixers' in_proj and out_proj (90% of mamba2-large's weights) and players' heads (6%)
are dynamically quantised int8 linears (per-output-channel weight scales, activations
quantised per step with one scale for the batch).

Why: a live step of mamba2-large on a CPU streams its 64 MB of fp32 weights from memory every
frame, which alone costs 6-9 ms on the development machines; as int8 they are 16 MB, which
fits in the L3 cache, and fbgemm's int8 products are fast on AVX2. The traced step becomes 2.1x
faster at batch 1 (BENCHMARKS.md). The cost is fidelity: the frames are no longer those of the
fp32 model (docs/MODEL.md gives how far they drift on the demo model), so it is an opt-in
(`playmodel serve --quantize int8`, setting QUANTIZE; `playmodel eval --quantize int8`).

The players' heads are int8 too: on the development machines weights compete for the cache
with everything else a step touches, and theirs (3.5 MB in mamba2-large) cost 0.3-0.8 ms a step
as fp32; as int8 they leave the demo model's rollouts as they were (docs/MODEL.md). The encoder's
projection, the item heads, the convolution, the norms and the SSM parameters and state stay
fp32 (`_products` says why for the encoder).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from model.world_model import WorldModel

QUANTIZE_CHOICES = ("none", "int8")


def quantize_int8(model: WorldModel) -> WorldModel:
    """An int8 copy of `model` for CPU inference (the original is left as it is)."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 quantisation is for CPU inference; the model is on a GPU")
    quantized = copy.deepcopy(model).float().eval()
    try:
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, which this project
            # does not depend on: torchao's dynamic int8 cannot be traced and is 4-5x slower
            # eager, its weight-only int8 6-28% slower traced (BENCHMARKS.md, "Kept parts").
            # torch.ao is there and works in torch 2.13; should a later torch drop it, the
            # error below says so.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            for parent, name in _products(quantized):
                holder = nn.Sequential(getattr(parent, name))  # swaps children, not the root
                holder = torch.ao.quantization.quantize_dynamic(
                    holder, {nn.Linear: qconfig}, dtype=torch.qint8
                )
                setattr(parent, name, holder[0])
    except (AttributeError, RuntimeError) as e:
        raise RuntimeError(
            f"int8 quantisation is not available in this torch ({torch.__version__}): {e}"
        ) from e
    return quantized


def _products(model: WorldModel) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every linear made int8: each mixer's in_proj and out_proj, and
    the players' heads.

    The encoder's projection stays fp32: its input mixes features of very different sizes
    (scaled positions beside embeddings), and int8 activations with one scale per batch
    blur the small ones; on the demo model's validation rollouts an int8 encoder doubled
    RC5 (1.05 against 0.49) and RC20 (6.45 against 2.96). The item heads are small."""
    products = [(block.mixer, name) for block in model.blocks for name in ("in_proj", "out_proj")]
    return [*products, (model.heads, "player")]


def maybe_quantize(model: WorldModel, quantize: str) -> WorldModel:
    """`model` itself for "none", an int8 copy for "int8"; a clear error for anything else."""
    if quantize == "none":
        return model
    if quantize == "int8":
        return quantize_int8(model)
    raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize!r}")
