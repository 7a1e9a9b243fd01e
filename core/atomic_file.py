"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader (or a run killed half-way) sees either the old file or the complete new one, never a
partial file. Temporary names start with `.` and end with `.tmp` so that a later run can find
and remove what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files left by killed writers in `folder`; returns how many."""
    removed = 0
    for path in Path(folder).glob(f".*{TMP_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
