"""The fused CPU kernels of the Mamba-2 step (model/cpu_kernels.py, model/csrc/mamba2_step.cpp):
the same step as the PyTorch ops, recorded by the live trace, and clear errors on bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model import cpu_kernels, mamba2
from model.config import ModelConfig
from model.game_start import GameSetup
from model.mamba2 import Mamba2, Mamba2Cache, RMSNormGated
from model.simulation import Simulation
from model.world_model import RMSNorm, WorldModel

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None or shutil.which("ninja") is None,
    reason="building the kernels needs a C++ compiler and ninja",
)


def fused_ops():
    ops = cpu_kernels.fused_step_ops()
    assert ops is not None, "the fused CPU kernels did not build (see the warning)"
    return ops


def random_cache(m: Mamba2, batch: int) -> Mamba2Cache:
    cache = m.allocate_inference_cache(batch)
    cache.conv_state.normal_()
    cache.ssm_state.normal_()
    return cache


@pytest.mark.parametrize("ngroups", [1, 2])
def test_a_fused_step_is_the_pytorch_step(ngroups: int):
    fused_ops()
    torch.manual_seed(0)
    m = Mamba2(64, d_state=16, headdim=16, expand=2, ngroups=ngroups).eval()
    fused = random_cache(m, 5)
    plain = Mamba2Cache(fused.conv_state.clone(), fused.ssm_state.clone())
    assert m._fused_ops(plain) is None  # gradients on: PyTorch ops
    for _ in range(30):
        u = torch.randn(5, 64)
        with torch.no_grad():
            assert m._fused_ops(fused) is not None
            y_fused = m.step(u, fused)
        y_plain = m.step(u, plain).detach()
        torch.testing.assert_close(y_fused, y_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.ssm_state, plain.ssm_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.conv_state, plain.conv_state, atol=0, rtol=0)  # a copy


@pytest.mark.parametrize("group_size", [48, 16])
def test_the_fused_norms_are_the_modules(group_size: int):
    ops = fused_ops()
    torch.manual_seed(0)
    gated, plain = RMSNormGated(48, group_size=group_size), RMSNorm(48)
    for norm in (gated, plain):
        norm.weight.data.uniform_(0.5, 1.5)
    zxd = torch.randn(6, 100)  # x and z as strided views, as the step splits them
    x, z = zxd[:, :48], zxd[:, 48:96]
    with torch.no_grad():
        torch.testing.assert_close(
            ops.rms_norm(x, z, gated.weight, group_size, gated.eps), gated(x, z)
        )
        torch.testing.assert_close(ops.rms_norm(x, None, plain.weight, 48, plain.eps), plain(x))


def test_the_live_trace_records_the_kernels_and_plays_as_the_pytorch_ops_do(monkeypatch):
    fused_ops()
    config = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16)
    frames = {}
    for use in (True, False):
        if not use:
            monkeypatch.setattr(mamba2, "fused_step_ops", lambda: None)
        torch.manual_seed(0)
        sim = Simulation(WorldModel(config).eval())
        games = [sim.new_game(GameSetup(stage=31, seed=s)) for s in range(3)]
        for _ in range(20):
            sim.step({g: {"p1_joystick_x": 0.7, "p2_buttons": 0x100} for g in games})
        graph = str(sim._traced.module.graph)
        assert ("playmodel::ssm_step_" in graph) == use
        assert ("playmodel::conv_step_" in graph) == use
        assert ("playmodel::rms_norm" in graph) == use
        frames[use] = dict(sim.batch_frame)
    # The model's state drifts by float32 rounding; the frames it decodes stay the same.
    for key, value in frames[True].items():
        torch.testing.assert_close(value, frames[False][key], atol=1e-3, rtol=1e-4, msg=key)


def test_bad_inputs_are_refused_with_a_message():
    ops = fused_ops()
    state = torch.zeros(2, 4, 8, 16)
    x, dt, per_head = torch.zeros(2, 4, 8), torch.zeros(2, 4), torch.zeros(4)
    B = C = torch.zeros(2, 1, 16)
    with pytest.raises(RuntimeError, match="state must be a contiguous"):
        ops.ssm_step_(state.transpose(2, 3), x, dt, per_head, per_head, B, C, per_head)
    with pytest.raises(RuntimeError, match="x must be"):
        ops.ssm_step_(state, x[:, :3], dt, per_head, per_head, B, C, per_head)
    conv = torch.zeros(2, 3, 12).transpose(1, 2)  # (b, C, K) laid out (b, K, C)
    weight, bias = torch.zeros(12, 1, 3), torch.zeros(12)
    with pytest.raises(RuntimeError, match="laid out"):
        ops.conv_step_(conv.contiguous(), torch.zeros(2, 12), weight, bias)
    with pytest.raises(RuntimeError, match="float32"):
        ops.conv_step_(conv, torch.zeros(2, 12, dtype=torch.float64), weight, bias)
    with pytest.raises(RuntimeError, match="split into groups"):
        ops.rms_norm(torch.zeros(2, 12), None, bias, 5, 1e-5)


def test_the_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "0")
    assert cpu_kernels.fused_step_ops.__wrapped__() is None


def test_a_killed_build_does_not_make_later_starts_wait(monkeypatch, tmp_path):
    """torch's lock file, left by a build that was killed, is removed before building; a
    lock held by a live build is waited for through the flock instead (not simulated here)."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    loaded = []

    def load(name, **_):
        build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
        loaded.append((build_dir / "lock").exists())

    monkeypatch.setattr(cpp_extension, "load", load)
    for name in ("playmodel_cpu_kernels", "playmodel_cpu_kernels_avx2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "lock").write_text("")
    with pytest.warns(UserWarning, match="killed"):
        cpu_kernels._build()
    assert loaded == [False]
