"""training.host_memory: freed host memory is reused instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training.host_memory import keep_freed_host_memory

ROOT = Path(__file__).resolve().parent.parent

# Rounds of a training step's pattern: eight 24 MB tensors written, then all freed.
ROUNDS = textwrap.dedent(
    """
    import resource, sys, torch
    from training.host_memory import keep_freed_host_memory
    if sys.argv[1] == "keep":
        assert keep_freed_host_memory()
    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensors = [torch.ones(6 << 20) for _ in range(8)]
        del tensors
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(sum([faults() for _ in range(4)][1:]))
    """
)


def _faults_after_the_first_round(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_later_rounds_reuse_the_pages_of_the_first():
    assert keep_freed_host_memory()
    default, kept = _faults_after_the_first_round("default"), _faults_after_the_first_round("keep")
    # 8 x 24 MB is 49,152 pages: by default most rounds fault them all in again.
    assert default > 60_000
    assert kept < default / 2
