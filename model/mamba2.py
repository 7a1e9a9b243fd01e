"""Mamba-2 mixer in pure PyTorch, parameter-compatible with ``mamba_ssm.modules.mamba2.Mamba2``.

Implements the SSD ("state space duality") layer of Dao & Gu (2024), "Transformers are SSMs:
Generalized Models and Efficient Algorithms Through Structured State Space Duality"
(arXiv:2405.21060), for the configuration ngroups=1 (any ngroups works), no linear biases,
``rmsnorm=True``, ``norm_before_gate=False``, ``D_has_hdim=False``.

Conventions (identical to mamba_ssm 2.x, so state dicts load strictly in both directions):

* ``in_proj`` output is split, in order, into ``z`` (d_inner), ``xBC`` (conv_dim) and ``dt``
  (nheads), where ``conv_dim = d_inner + 2 * ngroups * d_state``.
* ``conv1d`` is a depthwise causal conv over ``xBC`` whose channels are ordered ``x, B, C``.
* Head ``h`` uses group ``h // (nheads // ngroups)`` of B and C.
* ``A = -exp(A_log)``; ``dt = softplus(dt + dt_bias)``; per step the state is
  ``h_t = exp(dt * A) * h_{t-1} + dt * x_t B_t^T`` and ``y_t = h_t C_t + D * x_t``.
* ``norm`` is a gated RMSNorm: ``rmsnorm(y * silu(z)) * weight`` (per group of d_inner/ngroups).
* Inference cache: ``conv_state`` is (B, conv_dim, d_conv) holding the last d_conv raw ``xBC``
  inputs (newest last), ``ssm_state`` is (B, nheads, headdim, d_state). As in mamba_ssm, the
  conv state's memory is laid out (B, d_conv, conv_dim): channels contiguous.

``A_log``, ``D``, ``dt_bias`` and the SSM state always stay fp32, whatever the module dtype; the
SSD math runs in fp32 and results are cast back to the input dtype. The sequence form of the
SSD scan is `model/ssd.py`; this module holds the mixer, its cache and its one-frame step.

When ``mamba_ssm`` / ``causal_conv1d`` are importable and the input is on CUDA, the fused Triton /
CUDA kernels are used (unless ``use_kernels=False``); otherwise a pure PyTorch path runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.causal_conv import causal_conv
from model.cpu_kernels import fused_step_ops
from model.ssd import ssd_chunked

try:  # Optional fused kernels; importing mamba_ssm can fail in many ways without a GPU.
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
except Exception:  # noqa: BLE001
    mamba_chunk_scan_combined = None
try:
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
except Exception:  # noqa: BLE001
    selective_state_update = None
try:
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
except Exception:  # noqa: BLE001
    rmsnorm_fn = None
try:
    from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
except Exception:  # noqa: BLE001
    causal_conv1d_fn, causal_conv1d_update = None, None

KERNELS_AVAILABLE = mamba_chunk_scan_combined is not None

_FP32_PARAMS = ("A_log", "D", "dt_bias")


@dataclass
class Mamba2Cache:
    """Recurrent state of one Mamba2 layer; updated in place by ``forward(cache=)`` and ``step``."""

    conv_state: Tensor  # (B, conv_dim, d_conv), module dtype, newest input last
    ssm_state: Tensor  # (B, nheads, headdim, d_state), fp32

    # Batch rows are taken and joined on the conv state's memory layout, (B, d_conv, conv_dim):
    # torch.cat and indexing of the (B, conv_dim, d_conv) view would make it d_conv-contiguous,
    # and the CPU step's shift and sum are 3-4x slower on that layout (`Mamba2.step`).
    @staticmethod
    def cat(caches: list[Mamba2Cache]) -> Mamba2Cache:
        """The caches' batch rows, one after another."""
        conv = torch.cat([c.conv_state.transpose(1, 2) for c in caches]).transpose(1, 2)
        return Mamba2Cache(conv, torch.cat([c.ssm_state for c in caches]))

    def rows(self, index: Tensor) -> Mamba2Cache:
        """The batch rows `index` (indices or a mask) of this cache, as a copy."""
        conv = self.conv_state.transpose(1, 2)[index].transpose(1, 2)
        return Mamba2Cache(conv, self.ssm_state[index])


def _saved_for_backward(state: Tensor) -> Tensor:
    """The initial state a scan may save for its backward pass. The cache is then overwritten in
    place with the final state, which autograd refuses for a saved tensor ("modified by an
    inplace operation", seen with mamba_ssm's kernels on CUDA): with gradients on, a copy."""
    return state.clone() if torch.is_grad_enabled() else state


class RMSNormGated(nn.Module):
    """``rmsnorm(x * silu(z)) * weight`` per group of ``group_size`` channels, computed in fp32."""

    def __init__(
        self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None, **factory
    ) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = hidden_size if group_size is None else group_size
        self.weight = nn.Parameter(torch.ones(hidden_size, **factory))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float() * F.silu(z.float())
        xg = x.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        xg = xg * torch.rsqrt(xg.square().mean(dim=-1, keepdim=True) + self.eps)
        return (xg.flatten(-2) * self.weight.float()).to(dtype)


class Mamba2(nn.Module):
    """Mamba-2 mixer: (B, L, d_model) -> (B, L, d_model). See the module docstring.

    ``use_kernels``: None uses the fused kernels when importable and the input is on CUDA;
    False always uses the pure PyTorch path; True is like None but raises if the kernels are not
    importable (CPU inputs still take the pure path).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        layer_idx: int | None = None,
        use_kernels: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.expand, self.headdim, self.ngroups = expand, headdim, ngroups
        self.d_inner = expand * d_model
        assert self.d_inner % headdim == 0, "d_inner must be a multiple of headdim"
        self.nheads = self.d_inner // headdim
        assert self.nheads % ngroups == 0, "nheads must be a multiple of ngroups"
        self.chunk_size, self.layer_idx, self.use_kernels = chunk_size, layer_idx, use_kernels
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads  # [z, xBC, dt]
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=False, **factory)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            kernel_size=d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=True,
            **factory,
        )

        # dt_bias = softplus^{-1}(dt) with dt log-uniform in [dt_min, dt_max], floored.
        log_dt = torch.rand(self.nheads, device=device) * (math.log(dt_max) - math.log(dt_min))
        dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        assert 0 < A_init_range[0] <= A_init_range[1]
        A = torch.empty(self.nheads, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        for name in _FP32_PARAMS:
            getattr(self, name)._no_weight_decay = True

        self.norm = RMSNormGated(
            self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups, **factory
        )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory)

    # ------------------------------------------------------------------ dtype handling
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Mamba2:
        """Let ``.to()/.cuda()/.half()`` move A_log, D, dt_bias across devices, keeping fp32."""
        fp32 = {name: getattr(self, name).data for name in _FP32_PARAMS}
        super()._apply(fn, recurse)
        for name, old in fp32.items():
            p = getattr(self, name)
            if p.dtype != torch.float32 and old.dtype == torch.float32:
                p.data = old.to(p.device)  # exact fp32 values, no round trip through low precision
                if p.grad is not None:
                    p.grad = p.grad.float()
        return self

    def _use_kernels(self, u: Tensor) -> bool:
        if self.use_kernels is False or not u.is_cuda:
            return False
        if not KERNELS_AVAILABLE:
            if self.use_kernels:
                raise RuntimeError("use_kernels=True but mamba_ssm kernels are not importable")
            return False
        return True

    # ------------------------------------------------------------------ cache
    def allocate_inference_cache(
        self,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Mamba2Cache:
        device = self.conv1d.weight.device if device is None else device  # (in_proj may be
        dtype = self.conv1d.weight.dtype if dtype is None else dtype  # int8, model.quantize)
        # Same memory layout as mamba_ssm: channels contiguous, as the causal_conv1d kernel expects.
        conv_state = torch.zeros(batch_size, self.d_conv, self.conv_dim, device=device, dtype=dtype)
        conv_state = conv_state.transpose(1, 2)  # (B, conv_dim, d_conv)
        ssm_state = torch.zeros(
            batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32
        )
        return Mamba2Cache(conv_state=conv_state, ssm_state=ssm_state)

    # ------------------------------------------------------------------ full sequence
    def _split_xBC(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_inner, gn, gn], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))  # (..., H, P)
        B = B.unflatten(-1, (self.ngroups, self.d_state))  # (..., G, N)
        C = C.unflatten(-1, (self.ngroups, self.d_state))  # (..., G, N)
        return x, B, C

    def _conv(self, xBC: Tensor, cache: Mamba2Cache | None, kernels: bool) -> Tensor:
        """Causal depthwise conv + SiLU over (B, L, conv_dim), with cached left context."""
        xBC_t = xBC.transpose(1, 2)  # (B, conv_dim, L)
        weight = self.conv1d.weight.squeeze(1)  # (conv_dim, d_conv)
        if cache is None and kernels and causal_conv1d_fn is not None:
            if xBC_t.stride(1) == 1 and (xBC_t.stride(0) % 8 or xBC_t.stride(2) % 8):
                xBC_t = xBC_t.contiguous()  # channel-last kernel needs 8-aligned strides
            out = causal_conv1d_fn(xBC_t, weight, bias=self.conv1d.bias, activation="silu")
            return out.transpose(1, 2)  # (B, L, conv_dim)
        context = None
        if cache is not None:  # the last d_conv - 1 inputs before this sequence
            context = cache.conv_state[:, :, 1:].transpose(1, 2).to(xBC.dtype)
            context = _saved_for_backward(context)  # the cache is overwritten below
        out = causal_conv(xBC, weight, self.conv1d.bias, context)  # (B, L, conv_dim)
        if cache is not None:
            history = torch.cat([cache.conv_state.to(xBC_t.dtype), xBC_t], dim=-1)
            cache.conv_state.copy_(history[:, :, -self.d_conv :])
        return F.silu(out)

    def forward(self, u: Tensor, cache: Mamba2Cache | None = None) -> Tensor:
        """u: (B, L, d_model) -> (B, L, d_model). With ``cache``, continue from and update it."""
        kernels = self._use_kernels(u)
        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = self._conv(xBC, cache, kernels)  # (B, L, conv_dim)
        x, B, C = self._split_xBC(xBC)  # (B, L, H, P), (B, L, G, N), (B, L, G, N)
        A = -torch.exp(self.A_log.float())  # (H,)

        if kernels:
            out = mamba_chunk_scan_combined(
                x,
                dt,
                A,
                B,
                C,
                chunk_size=self.chunk_size,
                D=self.D,
                z=None,
                dt_bias=self.dt_bias,
                dt_softplus=True,
                initial_states=None if cache is None else _saved_for_backward(cache.ssm_state),
                return_final_states=cache is not None,
            )
            y = out if cache is None else out[0]  # (B, L, H, P)
            if cache is not None:
                cache.ssm_state.copy_(out[1])
            y = y.flatten(-2)  # (B, L, d_inner)
            if rmsnorm_fn is not None:
                y = rmsnorm_fn(
                    y,
                    self.norm.weight,
                    None,
                    z=z,
                    eps=self.norm.eps,
                    group_size=self.norm.group_size,
                    norm_before_gate=False,
                )
            else:
                y = self.norm(y, z)
            return self.out_proj(y.to(u.dtype))

        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, L, H)
        initial = None if cache is None else _saved_for_backward(cache.ssm_state)
        y, final_state = ssd_chunked(x, dt, A, B, C, self.chunk_size, initial)  # (B, L, H, P)
        if cache is not None:
            cache.ssm_state.copy_(final_state)
        y = y + self.D.float()[:, None] * x.float()  # (B, L, H, P)
        y = self.norm(y.flatten(-2), z).to(u.dtype)  # (B, L, d_inner)
        return self.out_proj(y)

    # ------------------------------------------------------------------ single step
    def _fused_ops(self, cache: Mamba2Cache):
        """`torch.ops.playmodel` when this step can run the fused CPU kernels
        (`model.cpu_kernels`): on a CPU, float32 weights and states in their usual layouts,
        no gradient being recorded; else None."""
        conv_state, weight = cache.conv_state, self.conv1d.weight
        usable = (
            conv_state.device.type == "cpu"
            and not torch.is_grad_enabled()
            and weight.dtype == conv_state.dtype == torch.float32
            and self.conv1d.bias is not None
            and conv_state.transpose(1, 2).is_contiguous()
            and cache.ssm_state.is_contiguous()
        )
        return fused_step_ops() if usable else None

    def _ssm_step(self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, state: Tensor) -> Tensor:
        """state = exp(dt A) state + dt x B^T, in place; returns y = state C + D x.

        Works on a (B*G, R*P, N) view of the state (heads of one group share B and C) in place,
        so the update makes one pass over the state instead of materialising dt x B^T: at
        batch 32 the state of mamba2-large is 75 MB and memory traffic dominates the step.
        On CPU, `addcmul_` beats `baddbmm_` for the rank-1 update, and the readout as a row
        vector times the transposed state (C^T S^T) is 2.5-6x faster than S C, whose
        one-column batched product takes a slow path (bench/step.py, BENCHMARKS.md).
        """
        if torch.is_autocast_enabled(state.device.type):  # the state stays fp32 (training)
            with torch.autocast(device_type=state.device.type, enabled=False):
                return self._ssm_step(x, dt, B, C, state)
        b, G, N = B.shape[0], self.ngroups, self.d_state
        RP = (self.nheads // G) * self.headdim
        A = -torch.exp(self.A_log.float())  # (H,)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, H)
        xf = x.float()  # (B, H, P)
        state.mul_(torch.exp(dt * A)[:, :, None, None])  # decay, (B, H, P, N)
        flat = state.view(b * G, RP, N)
        xdt = (xf * dt[:, :, None]).reshape(b * G, RP, 1)  # (B*G, R*P, 1)
        flat.addcmul_(xdt, B.float().reshape(b * G, 1, N))  # += (dt x) B^T
        y = torch.bmm(C.float().reshape(b * G, 1, N), flat.transpose(1, 2))  # (B*G, 1, R*P)
        return y.view(b, self.nheads, self.headdim) + self.D.float()[:, None] * xf

    def step(self, u: Tensor, cache: Mamba2Cache) -> Tensor:
        """One frame u: (B, d_model) or (B, 1, d_model) -> same shape; updates ``cache``."""
        squeeze = u.dim() == 3
        if squeeze:
            assert u.shape[1] == 1, "step() takes exactly one frame"
            u = u[:, 0]  # (B, d_model)
        kernels = self._use_kernels(u)
        zxbcdt = self.in_proj(u)  # (B, d_in_proj)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        weight = self.conv1d.weight.squeeze(1)  # (conv_dim, d_conv)
        conv_state = cache.conv_state
        fused = None if kernels else self._fused_ops(cache)

        if kernels and causal_conv1d_update is not None:
            xBC = causal_conv1d_update(xBC, conv_state, weight, self.conv1d.bias, "silu")
        elif fused is not None:  # one pass over the conv state, SiLU included
            xBC = fused.conv_step_(conv_state, xBC.float(), self.conv1d.weight, self.conv1d.bias)
        else:
            # Shift and sum on the state's memory layout, whole rows of channels at a time
            # (a cat and a sum along the d_conv axis of the (B, conv_dim, d_conv) view take
            # 3-4x as long on a CPU: they copy and reduce runs of d_conv values).
            rows = conv_state.transpose(1, 2)  # (B, d_conv, conv_dim)
            window = torch.cat([rows[:, 1:], xBC[:, None].to(rows.dtype)], 1)
            rows.copy_(window)  # newest input last
            xBC = (window.to(weight.dtype) * weight.t()).sum(dim=1) + self.conv1d.bias
            xBC = F.silu(xBC).to(u.dtype)  # (B, conv_dim)
        x, B, C = self._split_xBC(xBC)  # (B, H, P), (B, G, N), (B, G, N)

        if kernels and selective_state_update is not None:
            H, P, N = self.nheads, self.headdim, self.d_state
            A = -torch.exp(self.A_log.float())  # (H,)
            y = selective_state_update(
                cache.ssm_state,
                x,
                dt[:, :, None].expand(-1, H, P),  # (B, H, P)
                A[:, None, None].expand(H, P, N),  # (H, P, N)
                B,
                C,
                self.D[:, None].expand(H, P),  # (H, P)
                z=None,
                dt_bias=self.dt_bias[:, None].expand(H, P),  # (H, P)
                dt_softplus=True,
            )
        elif fused is not None:  # one pass over the SSM state, readout included
            params = self.dt_bias.float(), self.A_log.float()
            state, D = cache.ssm_state, self.D.float()
            y = fused.ssm_step_(state, x.float(), dt.float(), *params, B.float(), C.float(), D)
        else:
            y = self._ssm_step(x, dt, B, C, cache.ssm_state)  # (B, H, P)
        if fused is not None:  # the gated norm in one op
            norm = self.norm
            y = fused.rms_norm(y.flatten(-2), z, norm.weight, norm.group_size, norm.eps)
        else:
            y = self.norm(y.flatten(-2), z).to(u.dtype)  # (B, d_inner)
        out = self.out_proj(y)  # (B, d_model)
        return out[:, None] if squeeze else out
