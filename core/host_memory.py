"""Keep freed host memory for reuse instead of handing it back to the OS (glibc only).

A CPU training step allocates and frees tensors of tens of megabytes (a mamba2-large step at
batch 64 x 60: the SSD scan's (chunk x chunk) blocks, the item heads' 65 MB logits and their
gradients). By default glibc serves blocks above a threshold that adapts up to 32 MB with
fresh mmaps, and trims the heap's free top above twice that, so the next step touches new
pages again and pays a page fault for every 4 KB of them: on a 2-core CPU about a fifth of
the step (BENCHMARKS.md, "Training throughput"). Serving blocks up to 32 MB from the heap and
keeping up to 1 GB of its free top makes later steps reuse the same pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to this size come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept for reuse, up to 1 GB
TOP_PAD = 64 << 20  # grow the heap by at least this much at a time


def keep_freed_host_memory() -> bool:
    """Tune glibc's malloc as above for this process; False (and nothing changed) where the
    C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library (%s): host memory left as it is", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
