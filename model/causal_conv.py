"""The Mamba-2 mixer's causal depthwise convolution over a sequence, channels last, for the
pure PyTorch path (training and prefill on a CPU; mamba_ssm's kernel takes its place on CUDA).

y[t] = bias + sum_k weight[:, k] * x[t - (K - 1) + k], with `context` (the K - 1 inputs before
the sequence, from a cache) or zeros before it. Written as K shifted multiply-adds on the
(B, L, channels) layout the mixer's input projection produces, with its backward pass written
out the same way. PyTorch's depthwise `conv1d` on a CPU wants (B, channels, L), so the mixer
transposed in and out of it, and its backward took about 110 ms per mamba2-large layer at
batch 64 x 60 frames on a 2-core CPU, against about 45 ms for this one (BENCHMARKS.md,
"Training throughput").
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_conv(x: Tensor, weight: Tensor, bias: Tensor, context: Tensor | None = None) -> Tensor:
    """x: (B, L, C); weight: (C, K); bias: (C,); context: (B, K - 1, C) or None -> (B, L, C)."""
    return _CausalConv.apply(x, weight, bias, context)


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, context: Tensor | None) -> Tensor:
        taps = weight.t().contiguous()  # (K, C): taps[k] multiplies the input K-1-k frames back
        K, L = taps.shape[0], x.shape[1]
        y = torch.addcmul(bias, x, taps[K - 1]).to(x.dtype)
        for k in range(K - 1):
            back = K - 1 - k
            if back < L:
                y[:, back:].addcmul_(x[:, : L - back], taps[k])
            if context is not None:
                n = min(back, L)  # the first outputs reach back into the context
                y[:, :n].addcmul_(context[:, k : k + n], taps[k])
        ctx.save_for_backward(x, weight, context)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, context = ctx.saved_tensors
        grad = grad.contiguous()
        taps = weight.t().contiguous()
        K, L = taps.shape[0], x.shape[1]
        grad_x = grad * taps[K - 1]
        grad_taps = [None] * K
        grad_taps[K - 1] = (grad * x).sum((0, 1))
        want_context = context is not None and ctx.needs_input_grad[3]
        grad_context = torch.zeros_like(context, dtype=grad.dtype) if want_context else None
        for k in range(K - 1):
            back = K - 1 - k
            tap = torch.zeros_like(grad_taps[K - 1])
            if back < L:
                grad_x[:, : L - back].addcmul_(grad[:, back:], taps[k])
                tap += (grad[:, back:] * x[:, : L - back]).sum((0, 1))
            if context is not None:
                n = min(back, L)
                tap += (grad[:, :n] * context[:, k : k + n]).sum((0, 1))
                if grad_context is not None:
                    grad_context[:, k : k + n].addcmul_(grad[:, :n], taps[k])
            grad_taps[k] = tap
        grad_weight = torch.stack(grad_taps, -1).to(weight.dtype)  # (C, K)
        grad_bias = grad.sum((0, 1)).to(weight.dtype)
        if grad_context is not None:
            grad_context = grad_context.to(context.dtype)
        return grad_x.to(x.dtype), grad_weight, grad_bias, grad_context
