"""int8 weights for CPU inference: `quantize_int8(model)` returns a copy of a WorldModel whose
Mamba-2 mixers' in_proj and out_proj (90% of mamba2-large's weights) are dynamically quantised
int8 linears (per-output-channel weight scales, activations quantised per step).

Why: a live step of mamba2-large on a CPU streams its 64 MB of fp32 weights from memory every
frame, which alone costs 6-9 ms on the development machines; as int8 they are 16 MB, which
fits in the L3 cache, and fbgemm's int8 products are fast on AVX2. The traced step becomes 2.1x
faster at batch 1 (BENCHMARKS.md). The cost is fidelity: the frames are no longer those of the
fp32 model (docs/MODEL.md gives how far they drift on the demo model), so it is an opt-in
(`playmodel serve --quantize int8`, setting QUANTIZE; `playmodel eval --quantize int8`).

The encoder, the heads, the convolution, the norms and the SSM parameters and state stay fp32:
they are small, and the heads' outputs are argmax decisions a small error could flip.
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
            # does not depend on; it is there and works in torch 2.13. Should a later torch
            # drop it, the error below says so.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            for block in quantized.blocks:
                mixer = block.mixer
                for name in ("in_proj", "out_proj"):
                    holder = nn.Sequential(getattr(mixer, name))  # swaps children, not the root
                    holder = torch.ao.quantization.quantize_dynamic(
                        holder, {nn.Linear: qconfig}, dtype=torch.qint8
                    )
                    setattr(mixer, name, holder[0])
    except (AttributeError, RuntimeError) as e:
        raise RuntimeError(
            f"int8 quantisation is not available in this torch ({torch.__version__}): {e}"
        ) from e
    return quantized


def maybe_quantize(model: WorldModel, quantize: str) -> WorldModel:
    """`model` itself for "none", an int8 copy for "int8"; a clear error for anything else."""
    if quantize == "none":
        return model
    if quantize == "int8":
        return quantize_int8(model)
    raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize!r}")
