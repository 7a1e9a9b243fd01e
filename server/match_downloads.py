"""A finished match's frames as a download: parquet in the dataset schema or a JSON list of
`frame` messages, made once per match and format on a worker thread and kept for the next
asks (`DownloadCache`)."""

from __future__ import annotations

import asyncio
import io
import json
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import pyarrow.parquet as pq

from core import game_state as gs
from core.wire_frame import frame_message
from model.frames import table_from_frames
from server.match_service import FinishedMatch
from server.recordings import PARQUET
from server.wire_frames import batch_columns

# Bodies of match downloads kept for the next asks. A 1,740-frame match is 1.4 MB of JSON and
# 133 KB of parquet; the cache holds the most recently asked ones up to this many bytes.
DOWNLOAD_CACHE_BYTES = 32 << 20
FORMATS = ("json", "parquet")


class DownloadCache:
    """Match downloads made once, on a worker thread, and kept for the next asks of the same
    match and format (the least recently asked leave first, past `max_bytes` in all); asks
    that come while one is being made wait for it. 40 downloads of a 1,740-frame match back
    to back encoded it 40 times, about 100 ms of CPU each on a 2-core machine, and the live
    sessions played at 31 fps meanwhile (issue 21)."""

    def __init__(self, max_bytes: int = DOWNLOAD_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bodies: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self.size = 0
        self._making: dict[tuple, asyncio.Future] = {}

    async def get(self, key: tuple, make: Callable[[], tuple[bytes, str]]) -> tuple[bytes, str]:
        if (body := self.bodies.get(key)) is not None:
            self.bodies.move_to_end(key)
            return body
        making = self._making.get(key)
        if making is None:
            making = self._making[key] = asyncio.ensure_future(asyncio.to_thread(make))
            making.add_done_callback(partial(self._made, key))
        return await asyncio.shield(making)

    async def match_frames(
        self, match_id: str, result: FinishedMatch, format: str
    ) -> tuple[bytes, str]:
        """A finished match's frames as (body, media type). 0.1-0.35 s of encoding for 1,739
        frames on a 2-core CPU (issue 21): on the event loop, every live session's frames
        would wait for it."""
        return await self.get((match_id, format), partial(match_frames_body, result, format))

    def forget(self, match_id: str) -> None:
        """Drop a deleted match's bodies (one still being made is kept when it is done; the
        cache's byte limit bounds it like any other)."""
        for key in [key for key in self.bodies if key[0] == match_id]:
            self.size -= len(self.bodies.pop(key)[0])

    def _made(self, key: tuple, future: asyncio.Future) -> None:
        del self._making[key]
        if future.cancelled() or future.exception() is not None:
            return  # the asks waiting for it get the exception; the next ask tries again
        body = future.result()
        if len(body[0]) > self.max_bytes:
            return
        self.bodies[key] = body
        self.size += len(body[0])
        while self.size > self.max_bytes:
            _, (old, _) = self.bodies.popitem(last=False)
            self.size -= len(old)


def match_frames_body(result: FinishedMatch, format: str) -> tuple[bytes, str]:
    """A match's trajectory as (body, media type): parquet in the dataset schema, or a JSON
    list of `frame` messages. Runs off the event loop (`asyncio.to_thread`)."""
    frames = result.frames
    if format == "parquet":
        table = table_from_frames(
            frames, metadata={b"schema_version": str(gs.SCHEMA_VERSION).encode()}
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue(), PARQUET
    columns = batch_columns(frames)
    by_frame: dict[int, list] = {}
    for event in result.events:
        by_frame.setdefault(event.frame, []).append(event)
    # As FastAPI's JSONResponse renders it, a frame at a time: json.dumps of the whole list is
    # one C call that holds the GIL throughout (27 ms for 1,741 frames on a 2-core EPYC), and
    # a live tick waiting for the GIL meanwhile missed its slot (a 120 ms gap in
    # bench/abuse.py); between two frames the GIL can change hands.
    parts = (
        json.dumps(
            frame_message(columns, t, by_frame.get(int(columns["frame"][t]), ())),
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        )
        for t in range(len(columns["frame"]))
    )
    return ("[" + ",".join(parts) + "]").encode("utf-8"), "application/json"
