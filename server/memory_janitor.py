"""Memory that one-off work freed, handed back to the OS while the server runs.

The server keeps freed memory for reuse (`core.host_memory.keep_freed_host_memory`): a tick
that frees and allocates the same blocks every 16 ms then touches no new pages. One-off work
(a request body up to the size limit, a replay parsed from an upload, a round of matches and
their results deleted) leaves tens of megabytes free but resident for the process's life, so
a client could ratchet the server's memory up.

The janitor reads the resident size every second. Above the lowest it has been after a
return (the floor) by `GROWTH_BYTES`, it returns what is free: at once while the last return
gave back something, else at most every `IDLE_RETURN_S` (memory freed after the growth it
followed, such as deleted results, is not growth of its own). A return takes microseconds
with nothing to give back and a few milliseconds with tens of megabytes, on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from core.host_memory import return_freed_host_memory

log = logging.getLogger(__name__)

CHECK_S = 1.0
GROWTH_BYTES = 8 << 20
IDLE_RETURN_S = 10.0  # between returns while the last one gave back less than GAVE_BACK_BYTES
GAVE_BACK_BYTES = 1 << 20
_STATM = Path("/proc/self/statm")  # Linux: sizes in pages, the second one resident


def resident_bytes() -> int | None:
    """This process's resident memory, or None where /proc has no statm."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


class MemoryJanitor:
    def __init__(self, growth_bytes: int = GROWTH_BYTES, idle_return_s: float = IDLE_RETURN_S):
        self.growth_bytes, self.idle_return_s = growth_bytes, idle_return_s
        self.returns = 0  # how many times memory was handed back (tests, logs)
        self.floor = resident_bytes()
        self._last_return = -float("inf")
        self._gave_back = True  # the last return gave back something (none yet: as if it did)

    async def check(self) -> None:
        """Return freed memory if the resident size is over the floor by `growth_bytes` and a
        return is due."""
        resident = resident_bytes()
        if resident is None or self.floor is None:
            return
        if resident - self.floor < self.growth_bytes:
            self.floor = min(self.floor, resident)
            return
        if not self._gave_back and time.monotonic() - self._last_return < self.idle_return_s:
            return
        if not await asyncio.to_thread(return_freed_host_memory):
            self.floor = None  # no malloc_trim here: nothing to do, ever
            return
        self.returns += 1
        self._last_return = time.monotonic()
        after = resident_bytes() or resident
        self._gave_back = resident - after >= GAVE_BACK_BYTES
        self.floor = min(self.floor, after)
        log.debug("returned freed memory: %.0f -> %.0f MB", resident / 2**20, after / 2**20)

    async def run(self) -> None:
        while self.floor is not None:
            await asyncio.sleep(CHECK_S)
            await self.check()
