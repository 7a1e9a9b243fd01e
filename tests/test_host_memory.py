"""core.host_memory: freed host memory stays with the process for reuse, and is handed back
when asked (server.memory_janitor asks after a one-off burst)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.host_memory import keep_freed_host_memory

ROOT = Path(__file__).resolve().parent.parent

# A training step's pattern: eight 24 MB tensors written, then all freed. Prints how many MB
# of resident memory the process gave back to the OS when they were freed.
GIVEN_BACK = textwrap.dedent(
    """
    import os, sys, torch
    from core.host_memory import keep_freed_host_memory
    if sys.argv[1].startswith("keep"):
        assert keep_freed_host_memory()
    def resident_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    tensors = [torch.ones(6 << 20) for _ in range(8)]
    before = resident_mb()
    del tensors
    if sys.argv[1] == "keep, then return":
        from core.host_memory import return_freed_host_memory
        assert return_freed_host_memory()
    print(before - resident_mb())
    """
)


def _given_back_mb(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", GIVEN_BACK, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_freed_memory_stays_with_the_process():
    assert keep_freed_host_memory()  # glibc
    # By default glibc unmaps blocks this large when they are freed (the next step faults
    # their pages in again); tuned, the process keeps them.
    assert _given_back_mb("default") > 150
    assert _given_back_mb("keep") < 20
    # Asked to, it hands them back.
    assert _given_back_mb("keep, then return") > 150


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_the_janitor_returns_memory_after_a_burst_and_not_while_steady():
    import asyncio

    import torch

    from server.memory_janitor import MemoryJanitor

    assert keep_freed_host_memory()
    janitor = MemoryJanitor(growth_bytes=64 << 20)
    asyncio.run(janitor.check())
    assert janitor.returns == 0  # steady: nothing grew
    burst = [torch.ones(6 << 20) for _ in range(8)]  # 192 MB, freed but kept
    del burst
    asyncio.run(janitor.check())
    assert janitor.returns == 1
    asyncio.run(janitor.check())
    assert janitor.returns == 1  # given back: the floor is what is resident now
    held = [torch.ones(6 << 20) for _ in range(8)]  # 192 MB in use: nothing to give back
    asyncio.run(janitor.check())
    assert janitor.returns == 2
    asyncio.run(janitor.check())
    assert janitor.returns == 2  # the last return gave back nothing: the next one waits
    janitor.idle_return_s = 0.0
    asyncio.run(janitor.check())
    assert janitor.returns == 3
    del held
