"""Keep freed host memory for reuse instead of handing it back to the OS (glibc only).

A CPU training step allocates and frees tensors of tens of megabytes (a mamba2-large step at
batch 64 x 60: the SSD scan's (chunk x chunk) blocks, the item heads' 65 MB logits and their
gradients). By default glibc serves blocks above a threshold that adapts up to 32 MB with
fresh mmaps, and trims the heap's free top above twice that, so the next step touches new
pages again and pays a page fault for every 4 KB of them: on a 2-core CPU about a fifth of
the step (BENCHMARKS.md, "Training throughput"). Serving blocks up to 32 MB from the heap and
keeping up to 1 GB of its free top makes later steps reuse the same pages.

A long-lived server wants the opposite after a one-off burst (a large request body, a replay
parse, a round of matches): `return_freed_host_memory` hands what is free back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to this size come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept for reuse, up to 1 GB
TOP_PAD = 64 << 20  # grow the heap by at least this much at a time


@functools.cache  # find_library runs `ldconfig -p` in a subprocess
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name)
    except (OSError, TypeError):
        return None


def keep_freed_host_memory() -> bool:
    """Tune glibc's malloc as above for this process; False (and nothing changed) where the
    C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        log.debug("no mallopt in the C library: host memory left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def arrow_on_the_c_heap() -> None:
    """Make Arrow allocate from the C library's heap instead of its own mimalloc pool, so that
    `return_freed_host_memory` has one allocator to return from: after a first parquet read
    mimalloc kept 13 MB more than the heap did, trimmed or not."""
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def return_freed_host_memory() -> bool:
    """Give the memory that glibc's heaps (every thread's arena) and Arrow's pool hold free back
    to the OS; False where the C library has no `malloc_trim`. A few milliseconds with tens of
    megabytes to give back, microseconds with none; the GIL is released meanwhile."""
    pyarrow = sys.modules.get("pyarrow")  # a process that never loaded Arrow has no pool
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
