"""Tests for model/mamba2.py and model/ssd.py: chunked SSD vs recurrence, caching, mamba_ssm
layout, dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model import mamba2
from model.causal_conv import causal_conv
from model.mamba2 import (
    KERNELS_AVAILABLE,
    Mamba2,
    Mamba2Cache,
    causal_conv1d_fn,
)
from model.ssd import ssd_chunked

D_MODEL, D_STATE, HEADDIM, EXPAND = 64, 16, 16, 2
ATOL = 1e-4


def make_module(seed: int = 0, **kwargs) -> Mamba2:
    torch.manual_seed(seed)
    kw = {"d_state": D_STATE, "headdim": HEADDIM, "expand": EXPAND, "chunk_size": 64}
    kw.update(kwargs)
    return Mamba2(D_MODEL, **kw).eval()


def random_cache(m: Mamba2, batch: int, seed: int = 1) -> Mamba2Cache:
    g = torch.Generator().manual_seed(seed)
    cache = m.allocate_inference_cache(batch)
    cache.conv_state.copy_(torch.randn(cache.conv_state.shape, generator=g))
    cache.ssm_state.copy_(torch.randn(cache.ssm_state.shape, generator=g))
    return cache


def clone_cache(cache: Mamba2Cache) -> Mamba2Cache:
    return Mamba2Cache(cache.conv_state.clone(), cache.ssm_state.clone())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def naive_ssd(x, dt, A, B, C, initial_state=None):
    """Sequential recurrence h_t = exp(dt A) h_{t-1} + dt x_t B_t^T, y_t = h_t C_t (fp64)."""
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    rep = H // G
    Bh = B.double().repeat_interleave(rep, dim=2)
    Ch = C.double().repeat_interleave(rep, dim=2)
    h = x.new_zeros(b, H, P, N, dtype=torch.float64)
    if initial_state is not None:
        h = h + initial_state.double()
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, t].double() * A.double())[:, :, None, None]
        dBx = torch.einsum("bh,bhn,bhp->bhpn", dt[:, t].double(), Bh[:, t], x[:, t].double())
        h = h * dA + dBx
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("with_context", [False, True])
def test_causal_conv_matches_conv1d_and_its_gradients_check(length: int, with_context: bool):
    """The channels-last conv against PyTorch's depthwise conv1d on the zero- or
    context-padded sequence, and its hand-written backward against finite differences
    (lengths shorter than, equal to and longer than the kernel's reach)."""
    torch.manual_seed(0)
    b, c, k = 2, 5, 4
    x = torch.randn(b, length, c, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)
    context = torch.randn(b, k - 1, c, dtype=torch.float64, requires_grad=True)
    before = context if with_context else torch.zeros_like(context)
    full = torch.cat([before, x], 1).transpose(1, 2)  # (B, C, K - 1 + L)
    expected = F.conv1d(full, weight[:, None], bias, groups=c).transpose(1, 2)
    given = context if with_context else None
    assert torch.allclose(causal_conv(x, weight, bias, given), expected, atol=1e-12)
    inputs = (x, weight, bias, context) if with_context else (x, weight, bias)
    assert torch.autograd.gradcheck(
        lambda *a: causal_conv(*a[:3], a[3] if with_context else None), inputs
    )


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("chunk_size", [16, 50, 64, 200, 256])
@pytest.mark.parametrize("with_init", [False, True])
def test_ssd_chunked_matches_naive(ngroups: int, chunk_size: int, with_init: bool) -> None:
    g = torch.Generator().manual_seed(0)
    b, L, H, P, N = 2, 200, 4, 8, 16
    x = torch.randn(b, L, H, P, generator=g)
    dt = F.softplus(torch.randn(b, L, H, generator=g) - 2)
    A = -torch.empty(H).uniform_(1, 16, generator=g)
    B = torch.randn(b, L, ngroups, N, generator=g)
    C = torch.randn(b, L, ngroups, N, generator=g)
    init = torch.randn(b, H, P, N, generator=g) if with_init else None
    y, final = ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=init)
    y_ref, final_ref = naive_ssd(x, dt, A, B, C, init)
    assert y.dtype == final.dtype == torch.float32
    # Relative as well as absolute: within a chunk the decays are differences of a cumulative
    # sum in fp32 (as in mamba_ssm's kernels), whose rounding grows with the chunk's length;
    # at chunks of 200-256 steps it reaches 5e-5 of outputs of size ~3 (the models use 64).
    assert torch.allclose(y.double(), y_ref.double(), rtol=ATOL, atol=ATOL), max_diff(y, y_ref)
    assert torch.allclose(final.double(), final_ref.double(), rtol=ATOL, atol=ATOL)


def test_ssd_padding_leaves_final_state_exact() -> None:
    """L=130 with chunk 64 pads to 192; the final state must equal the unpadded 2-chunk run."""
    g = torch.Generator().manual_seed(3)
    b, H, P, N = 1, 2, 4, 8
    x = torch.randn(b, 128, H, P, generator=g)
    dt = F.softplus(torch.randn(b, 128, H, generator=g))
    A = -torch.rand(H, generator=g) - 0.5
    B = torch.randn(b, 128, 1, N, generator=g)
    C = torch.randn(b, 128, 1, N, generator=g)
    _, final_a = ssd_chunked(x, dt, A, B, C, 64)
    # Padding to a chunk boundary with dt = 0 must not change the state at all.
    _, final_b = ssd_chunked(x[:, :100], dt[:, :100], A, B[:, :100], C[:, :100], 64)
    _, final_c = ssd_chunked(x[:, :100], dt[:, :100], A, B[:, :100], C[:, :100], 100)
    assert torch.allclose(final_b, final_c, atol=1e-5)
    _, final_ref = naive_ssd(x, dt, A, B, C)
    assert max_diff(final_a, final_ref) <= ATOL


def test_chunk_sizes_agree() -> None:
    m = make_module()
    u = torch.randn(2, 200, D_MODEL)
    with torch.no_grad():
        outs = []
        for cs in (16, 50, 64, 200):
            m.chunk_size = cs
            outs.append(m(u))
    for o in outs[1:]:
        assert max_diff(o, outs[0]) <= ATOL


@pytest.mark.parametrize("nonzero_init", [False, True])
def test_forward_equals_steps(nonzero_init: bool) -> None:
    m = make_module()
    batch, L = 2, 200
    u = torch.randn(batch, L, D_MODEL)
    cache_f = random_cache(m, batch) if nonzero_init else m.allocate_inference_cache(batch)
    cache_s = clone_cache(cache_f)
    with torch.no_grad():
        y_full = m(u, cache=cache_f)
        y_steps = torch.stack([m.step(u[:, t], cache_s) for t in range(L)], dim=1)
    assert y_full.shape == y_steps.shape == (batch, L, D_MODEL)
    assert max_diff(y_full, y_steps) <= ATOL
    assert max_diff(cache_f.ssm_state, cache_s.ssm_state) <= ATOL
    assert max_diff(cache_f.conv_state, cache_s.conv_state) <= ATOL
    if not nonzero_init:  # forward without a cache is the same computation from zero state
        with torch.no_grad():
            assert max_diff(m(u), y_full) <= ATOL


@pytest.mark.parametrize("fused", [True, False])
def test_cache_rows_keep_their_layout_and_any_layout_steps_alike(fused, monkeypatch) -> None:
    if not fused:  # PyTorch ops for both layouts: bit for bit the same
        monkeypatch.setattr(mamba2, "fused_step_ops", lambda: None)
    m = make_module()
    a, b = random_cache(m, 3, seed=1), random_cache(m, 2, seed=2)
    joined = Mamba2Cache.cat([a, b])
    picked = joined.rows(torch.tensor([4, 0, 2]))
    for cache in (a, joined, picked):  # channels contiguous, as mamba_ssm lays the state out
        assert cache.conv_state.transpose(1, 2).is_contiguous()
    assert torch.equal(joined.conv_state, torch.cat([a.conv_state, b.conv_state]))
    assert torch.equal(picked.ssm_state, joined.ssm_state[[4, 0, 2]])
    assert torch.equal(picked.conv_state, joined.conv_state[[4, 0, 2]])
    # The step reads and shifts the state the same way whatever its layout (the fused CPU
    # kernels take only the usual one: the other layout steps with PyTorch ops, which agree
    # with them to float32 rounding).
    plain = Mamba2Cache(joined.conv_state.contiguous(), joined.ssm_state.clone())
    u = torch.randn(5, 4, D_MODEL)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if fused else {"atol": 0, "rtol": 0}
    with torch.no_grad():
        for t in range(4):
            torch.testing.assert_close(m.step(u[:, t], joined), m.step(u[:, t], plain), **tolerance)
    assert torch.equal(joined.conv_state, plain.conv_state)
    torch.testing.assert_close(joined.ssm_state, plain.ssm_state, **tolerance)


def test_prefill_then_step() -> None:
    m = make_module()
    u = torch.randn(2, 200, D_MODEL)
    with torch.no_grad():
        y_ref = m(u)
        cache = m.allocate_inference_cache(2)
        y_pre = m(u[:, :137], cache=cache)
        y_dec = [m.step(u[:, t : t + 1], cache) for t in range(137, 200)]
    assert y_dec[0].shape == (2, 1, D_MODEL)
    y = torch.cat([y_pre, *y_dec], dim=1)
    assert max_diff(y, y_ref) <= ATOL


def test_forward_with_cache_in_short_pieces() -> None:
    """Pieces shorter than d_conv must still carry the conv context correctly."""
    m = make_module()
    u = torch.randn(2, 60, D_MODEL)
    with torch.no_grad():
        cache_a = random_cache(m, 2)
        cache_b = clone_cache(cache_a)
        y_ref = m(u, cache=cache_a)
        pieces, start = [], 0
        for n in (1, 2, 3, 5, 49):
            pieces.append(m(u[:, start : start + n], cache=cache_b))
            start += n
    assert max_diff(torch.cat(pieces, dim=1), y_ref) <= ATOL
    assert max_diff(cache_a.conv_state, cache_b.conv_state) <= ATOL
    assert max_diff(cache_a.ssm_state, cache_b.ssm_state) <= ATOL


def expected_shapes(d_model: int, expand: int, headdim: int, d_state: int, d_conv: int = 4):
    ngroups = 1
    d_inner = expand * d_model
    nheads = d_inner // headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    return {
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def test_parameter_layout_matches_mamba_ssm() -> None:
    m = make_module()
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected_shapes(D_MODEL, EXPAND, HEADDIM, D_STATE)
    for name in ("A_log", "D", "dt_bias"):
        assert getattr(m, name)._no_weight_decay is True
    # Initialisation ranges as in mamba_ssm.
    A = torch.exp(m.A_log)
    assert torch.all((A >= 1) & (A <= 16))
    dt = F.softplus(m.dt_bias)
    assert torch.all((dt >= 1e-4 - 1e-7) & (dt <= 0.1 + 1e-6))
    assert torch.all(m.D == 1)


def test_safetensors_roundtrip(tmp_path) -> None:
    m = make_module(seed=0)
    path = tmp_path / "mamba2.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    m2 = make_module(seed=123)
    m2.load_state_dict(load_file(str(path)), strict=True)
    u = torch.randn(2, 33, D_MODEL)
    with torch.no_grad():
        assert torch.equal(m(u), m2(u))


def test_bf16_keeps_fp32_params_and_state() -> None:
    m = make_module()
    A_log = m.A_log.detach().clone()
    m = m.to(torch.bfloat16)
    for name in ("A_log", "D", "dt_bias"):
        assert getattr(m, name).dtype == torch.float32, name
    assert torch.equal(m.A_log, A_log)  # no round trip through bf16
    assert m.in_proj.weight.dtype == torch.bfloat16
    assert m.A_log._no_weight_decay is True
    cache = m.allocate_inference_cache(2)
    assert cache.ssm_state.dtype == torch.float32
    assert cache.conv_state.dtype == torch.bfloat16
    assert cache.conv_state.shape == (2, m.conv_dim, m.d_conv)
    u = torch.randn(2, 20, D_MODEL, dtype=torch.bfloat16)
    with torch.no_grad():
        y = m(u, cache=cache)
        y_step = m.step(u[:, 0], cache)
    assert y.dtype == y_step.dtype == torch.bfloat16
    assert cache.ssm_state.dtype == torch.float32
    assert torch.isfinite(y.float()).all() and torch.isfinite(y_step.float()).all()
    m = m.float()
    assert torch.equal(m.A_log, A_log)


def test_backward_runs() -> None:
    m = make_module()
    u = torch.randn(2, 70, D_MODEL, requires_grad=True)
    m(u).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.gpu
def test_pure_pytorch_path_on_cuda_matches_cpu_and_its_own_steps() -> None:
    """What a GPU without mamba_ssm runs: the chunked scan and the recurrent step in PyTorch
    ops on CUDA, from a non-zero state, against the same module on the CPU."""
    m = make_module(use_kernels=False)
    gpu = make_module(use_kernels=False).cuda()
    u = torch.randn(2, 200, D_MODEL)
    cache = random_cache(m, 2)
    gpu_full = Mamba2Cache(cache.conv_state.cuda(), cache.ssm_state.cuda())
    gpu_steps = clone_cache(gpu_full)
    tol = {"atol": 1e-3, "rtol": 1e-3}  # CUDA may sum in another order
    with torch.no_grad():
        y_cpu = m(u, cache=cache)
        y_full = gpu(u.cuda(), cache=gpu_full)
        y_steps = torch.cat([gpu.step(u[:, t : t + 1].cuda(), gpu_steps) for t in range(200)], 1)
    torch.testing.assert_close(y_full.cpu(), y_cpu, **tol)
    torch.testing.assert_close(y_steps, y_full, **tol)
    torch.testing.assert_close(gpu_steps.ssm_state, gpu_full.ssm_state, **tol)
    torch.testing.assert_close(gpu_full.ssm_state.cpu(), cache.ssm_state, **tol)
    torch.testing.assert_close(gpu_full.conv_state.cpu(), cache.conv_state, **tol)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not KERNELS_AVAILABLE,
    reason="needs CUDA and an importable mamba_ssm",
)
@pytest.mark.parametrize("fused", [False, True], ids=["split", "fused"])
def test_matches_mamba_ssm_on_gpu(fused: bool) -> None:
    """`fused`: mamba_ssm's memory-efficient path (conv and scan in one kernel call), which
    needs causal_conv1d's CUDA extension; `split`: its conv, then its Triton SSD scan."""
    from mamba_ssm import Mamba2 as RefMamba2

    if fused and causal_conv1d_fn is None:
        pytest.skip("the fused path needs causal_conv1d")
    dev = torch.device("cuda")
    kw = {"d_state": D_STATE, "d_conv": 4, "expand": EXPAND, "headdim": HEADDIM}
    torch.manual_seed(0)
    ours = Mamba2(D_MODEL, chunk_size=64, layer_idx=0, **kw).to(dev).eval()
    ref = (
        RefMamba2(D_MODEL, ngroups=1, layer_idx=0, chunk_size=64, use_mem_eff_path=fused, **kw)
        .to(dev)
        .eval()
    )
    pure = Mamba2(D_MODEL, chunk_size=64, use_kernels=False, **kw).to(dev).eval()
    # ours -> ref and ref -> ours, both strict.
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    pure.load_state_dict(ours.state_dict(), strict=True)
    u = torch.randn(2, 200, D_MODEL, device=dev)
    tol = {"atol": 1e-3, "rtol": 1e-3}
    with torch.no_grad():
        y_ref = ref(u)
        y_kern = ours(u)
        y_pure = pure(u)
        torch.testing.assert_close(y_kern, y_ref, **tol)
        torch.testing.assert_close(y_pure, y_ref, **tol)

        # Prefill + steps: kernel path vs pure path vs mamba_ssm.step.
        cache_k = ours.allocate_inference_cache(2)
        cache_p = pure.allocate_inference_cache(2)
        yk = [ours(u[:, :137], cache=cache_k)]
        yp = [pure(u[:, :137], cache=cache_p)]
        torch.testing.assert_close(cache_k.ssm_state, cache_p.ssm_state, **tol)
        torch.testing.assert_close(cache_k.conv_state, cache_p.conv_state, **tol)
        conv_r, ssm_r = cache_p.conv_state.clone(), cache_p.ssm_state.clone()
        yr = [y_ref[:, :137]]
        for t in range(137, 200):
            yk.append(ours.step(u[:, t : t + 1], cache_k))
            yp.append(pure.step(u[:, t : t + 1], cache_p))
            yr.append(ref.step(u[:, t : t + 1], conv_r, ssm_r)[0])
        torch.testing.assert_close(torch.cat(yk, 1), y_ref, **tol)
        torch.testing.assert_close(torch.cat(yp, 1), y_ref, **tol)
        torch.testing.assert_close(torch.cat(yr, 1), y_ref, **tol)
        torch.testing.assert_close(cache_k.ssm_state, cache_p.ssm_state, **tol)


def test_scan_and_step_stay_fp32_under_autocast():
    """Under bf16 autocast (GPU training) the SSD scan and the recurrent step must not run
    their products in bf16: same results as without autocast."""
    torch.manual_seed(0)
    b, L, H, P, N = 2, 32, 4, 8, 16
    x, dt = torch.randn(b, L, H, P), torch.rand(b, L, H) * 0.1
    A, B, C = -torch.rand(H), torch.randn(b, L, 1, N), torch.randn(b, L, 1, N)
    plain = ssd_chunked(x, dt, A, B, C, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = ssd_chunked(x, dt, A, B, C, chunk_size=8)
    for a, c in zip(plain, under, strict=True):
        assert c.dtype == torch.float32
        assert torch.equal(a, c)
