"""Fused CPU kernels for the live step, compiled from `model/csrc` the first time they are needed.

Three kernels (`csrc/mamba2_step.cpp`) for a Mamba-2 layer's recurrent step:
`playmodel::conv_step_`, the causal conv with its state's shift, and `playmodel::ssm_step_`,
the SSM, each as one pass over its state, where PyTorch ops make several passes and a few
dozen small ops around them (BENCHMARKS.md, "Live step latency"); and `playmodel::rms_norm`,
the block's RMSNorm and the mixer's gated one, one op each instead of about seven.
`Mamba2.step` and `Block.step` call them on a CPU when no gradient is being recorded (the
live step, evaluation); training keeps the PyTorch ops, which autograd differentiates.

The build takes under a minute, once per machine and torch version (torch caches it under
~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR), and needs a C++ compiler and ninja.
Builds are serialised by a `flock` that dies with its process, so that a build killed half-way
(a first `make play` stopped with Ctrl-C) cannot leave torch's own lock file behind to make every
later start wait for it forever. If
it fails, a warning says why and the step runs as PyTorch ops; PLAYMODEL_CPU_KERNELS=0 skips
the kernels (and their build) altogether. Their results agree with the PyTorch ops to float32
rounding, not bit for bit: they fuse multiply-adds, and the SSM readout sums in another order.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name("csrc") / "mamba2_step.cpp"]
DISABLE_ENV = "PLAYMODEL_CPU_KERNELS"  # "0": PyTorch ops only
_BUILD_LOCK = threading.Lock()


def cpu_flags() -> set[str]:
    """This CPU's instruction-set flags (/proc/cpuinfo); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _vector_flags() -> list[str]:
    """AVX2 and FMA where this CPU has them (not -march=native: the build cache may be shared
    with other machines, so its name says which instructions it was built for)."""
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= cpu_flags() else []


@functools.cache
def fused_step_ops():
    """`torch.ops.playmodel` (`conv_step_`, `ssm_step_`, `rms_norm`), loaded on first call; None
    when disabled or when they cannot be built (with a warning, once)."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    # functools.cache does not stop two threads' first calls from racing (a server's device
    # thread and a session's prefill), and the library may be loaded only once per process.
    with _BUILD_LOCK:
        if not hasattr(torch.ops.playmodel, "rms_norm"):
            try:
                _build()
            except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a failed build
                warnings.warn(
                    f"the fused CPU kernels of the Mamba-2 step could not be built "
                    f"({e!s:.300}); the step runs as PyTorch ops, a little slower (set "
                    f"{DISABLE_ENV}=0 to skip the attempt)",
                    stacklevel=3,
                )
                return None
            _register_fakes()
    return torch.ops.playmodel


def _register_fakes() -> None:
    """The kernels' output shapes, for torch.export's fake tensors (`model/compiled_step.py`
    exports the live step through them)."""
    fake = torch.library.register_fake
    fake("playmodel::ssm_step_")(lambda state, x, *rest: x.new_empty(x.shape))
    fake("playmodel::conv_step_")(lambda state, x, weight, bias: x.new_empty(x.shape))
    fake("playmodel::rms_norm")(lambda x, z, weight, group, eps: x.new_empty(x.shape))


def _build() -> None:
    from torch.utils import cpp_extension

    flags = _vector_flags()
    name = "playmodel_cpu_kernels" + ("_avx2" if flags else "")
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    with open(build_dir / "playmodel-build.flock", "w") as holder:
        # The kernel releases a flock when its process dies, which torch's lock file (made
        # with O_EXCL, removed by the builder when it finishes) cannot say: holding this one,
        # no live process of ours is building, so a `lock` file there is a killed build's.
        fcntl.flock(holder, fcntl.LOCK_EX)
        stale = build_dir / "lock"
        if stale.exists():
            warnings.warn(
                f"removing {stale}, left by a build of the CPU kernels that was killed",
                stacklevel=4,
            )
            stale.unlink(missing_ok=True)
        _load(cpp_extension, name, flags, build_dir / f"{name}.so")


def _load(cpp_extension, name: str, flags: list[str], built: Path) -> None:
    if not built.exists():
        print(
            "playmodel: building the fused CPU kernels of the Mamba-2 step (once per machine "
            "and torch version, under a minute)...",
            file=sys.stderr,
            flush=True,
        )
    cpp_extension.load(
        name=name,
        sources=[str(path) for path in SOURCES],
        # OpenMP, as torch's own build uses, so that at::parallel_for splits work over
        # torch's threads; the library torch loaded (libgomp.so.1) is the one linked to.
        extra_cflags=["-O3", "-fopenmp", *flags],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,  # the library registers torch.ops.playmodel.*
        verbose=False,
    )
