"""Policy-vs-policy matches submitted over REST, run in the background as fast as the device
allows, batched together in their own simulation.

The device thread is shared with the live sessions, which come first: between two ticks the
service steps its batch only for the time left before the next tick is due (minus what a tick
has been taking), so matches never make a live session late. With no live sessions they run
flat out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from model.frames import Frames
from model.policies import Policy, controls_for
from model.rules import Event
from model.simulation import Snapshot
from server.engine import logged_write
from server.frame_log import FrameLog
from server.match import MatchResult
from server.policy_modules import policy_failure
from server.recorder import _write_info, write_complete_game
from server.sessions import new_id

log = logging.getLogger(__name__)

FLUSH_EVERY = 256  # frames buffered per batch before they are copied out per match
IDLE_CHUNK_S = 0.05  # device time per chunk when no live session is running
MIN_CHUNK_S = 0.002


class MatchesFull(RuntimeError):
    """No room for another match now; the text says which limit and how to go on."""


@dataclass
class MatchJob:
    id: str
    policies: tuple[Policy, Policy]
    max_frames: int
    start: Snapshot
    request: dict
    status: str = "queued"  # queued, running, done, failed
    game_id: int | None = None
    frames_played: int = 0
    events: list[Event] = field(default_factory=list)
    log: FrameLog | None = None  # its frames while it runs
    seconds: float = 0.0
    started: float = 0.0
    error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: MatchResult | None = None

    def describe(self) -> dict:
        info = {
            "match_id": self.id,
            "status": self.status,
            "frames_played": self.frames_played,
            "request": self.request,
        }
        if self.result is not None:
            info["summary"] = self.result.summary
            info["events"] = [e.to_dict() for e in self.result.events]
        if self.error:
            info["error"] = self.error
        return info


class MatchService:
    def __init__(self, engine):
        self.engine = engine
        self.sim = engine.new_simulation(cuda_graphs=engine.settings.cuda_graphs)
        self.jobs: OrderedDict[str, MatchJob] = OrderedDict()
        self._wake = asyncio.Event()
        self._stopping = False
        self._buffer: list[Frames] = []  # whole-batch frames since the last flush
        self._buffer_rows: dict[str, int] = {}  # match id -> row in those frames
        engine.active_matches = self.active

    def active(self) -> int:
        return sum(job.status in ("queued", "running") for job in self.jobs.values())

    def submit(self, policies: tuple[Policy, Policy], max_frames: int, start, request) -> MatchJob:
        self.make_room(max_frames)
        job = MatchJob(new_id(), policies, max_frames, start, request)
        self.jobs[job.id] = job
        self._wake.set()
        log.info("match %s: queued (%s)", job.id, request)
        folder = self.engine.settings.recordings_dir
        if folder and str(folder) != ".":
            # Written now so that a server stopped before the match ends can answer `lost`
            # for it after its restart (server/recovery.py) rather than not know it.
            info = {"kind": "match", "id": job.id, "created": time.time(), "request": request}
            self.engine.writer.submit(
                logged_write(
                    partial(_write_info, Path(folder) / job.id, info | {"status": "queued"})
                )
            )
        return job

    # ------------------------------------------------------------------ memory
    # Every frame a match holds is about 1 KB (server/frame_log.py). A match queued or running
    # counts what it may come to hold (its max_frames), a finished one what it holds; the sum
    # stays under `max_match_frames_held`, the oldest finished matches forgotten first (their
    # recordings and summaries stay on disk: server/recovery.py answers for them).
    def frames_reserved(self) -> int:
        return sum(
            j.max_frames + 1 for j in self.jobs.values() if j.status in ("queued", "running")
        )

    def frames_held_finished(self) -> int:
        return sum(
            len(j.result.frames["frame"]) for j in self.jobs.values() if j.result is not None
        )

    def make_room(self, max_frames: int) -> None:
        """Raise `MatchesFull` if a match of `max_frames` would take the matches over the
        memory limit; else forget finished matches until it fits."""
        settings = self.engine.settings
        reserved = self.frames_reserved() + max_frames + 1
        if reserved > settings.max_match_frames_held:
            raise MatchesFull(
                f"the matches queued or running would hold up to {reserved:,} frames in memory, "
                f"over this server's limit of {settings.max_match_frames_held:,} "
                "(PLAYMODEL_MAX_MATCH_FRAMES_HELD); try again when some have finished, or ask "
                "for fewer max_frames"
            )
        self._forget_old(reserved)

    def _forget_old(self, reserved: int | None = None) -> None:
        settings = self.engine.settings
        reserved = self.frames_reserved() if reserved is None else reserved
        finished = [j for j in self.jobs.values() if j.status in ("done", "failed")]
        extra = len(finished) - settings.keep_finished_matches
        held = self.frames_held_finished()
        for job in finished:  # oldest first
            if extra <= 0 and held + reserved <= settings.max_match_frames_held:
                break
            del self.jobs[job.id]
            extra -= 1
            held -= 0 if job.result is None else len(job.result.frames["frame"])

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        engine = self.engine
        while not self._stopping:
            if not self.active():
                self._wake.clear()
                await self._wake.wait()
                continue
            if engine.sessions and any(s.status == "running" for s in engine.sessions.values()):
                engine.tick_event.clear()
                await engine.tick_event.wait()  # just after a tick: the most time to the next
                budget = engine.next_deadline - time.monotonic() - 1.5 * engine.tick_ema - 0.001
                if budget < MIN_CHUNK_S:
                    continue
            else:
                budget = IDLE_CHUNK_S
            try:
                finished = await engine.on_device(self._advance, budget)
            except Exception as e:
                log.exception("matches failed")
                for job in self.jobs.values():
                    if job.status in ("queued", "running"):
                        job.status, job.error = "failed", f"{type(e).__name__}: {e}"
                        job.log = None
                        job.done.set()
                self.sim = engine.new_simulation(cuda_graphs=engine.settings.cuda_graphs)
                self._buffer, self._buffer_rows = [], {}
                continue
            for job in finished:
                job.done.set()
            if finished:  # here, on the event loop, which alone changes `jobs`
                self._forget_old()
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ device thread
    def _advance(self, budget_s: float) -> list[MatchJob]:
        """Step every running match until `budget_s` seconds have passed; returns the
        matches that finished."""
        deadline = time.perf_counter() + budget_s
        queued = [j for j in self.jobs.values() if j.status == "queued"]
        if queued:
            self._flush()
            for job in queued:
                job.game_id = self.sim.add_from_snapshot(job.start)
                job.status, job.started = "running", time.perf_counter()
                job.log = FrameLog(job.max_frames + 1)
                job.log.extend({k: v.unsqueeze(0) for k, v in self.sim.frame(job.game_id).items()})
            self._buffer_rows = {}
        running = [j for j in self.jobs.values() if j.status == "running"]
        finished: list[MatchJob] = []
        while running and time.perf_counter() < deadline:
            if not self._buffer_rows:
                self._buffer_rows = {j.id: self.sim.game_ids.index(j.game_id) for j in running}
            batch = self.sim.batch_frame
            controls = {
                j.game_id: controls_for(j.policies, batch, self._buffer_rows[j.id]) for j in running
            }
            results = self.sim.step(controls)
            self._buffer.append(self.sim.batch_frame)
            self.engine.metrics.match_frames.inc(len(running))
            done_now, failed_now = [], []
            for job in running:
                result = results[job.game_id]
                job.frames_played += 1
                job.events += result.events
                if (failure := policy_failure(job.policies)) is not None:
                    failed_now.append((job, failure))  # only this match ends
                elif result.over or job.frames_played >= job.max_frames:
                    done_now.append(job)
            if done_now or failed_now or len(self._buffer) >= FLUSH_EVERY:
                self._flush()
            for job in done_now:
                self._finish(job)
                finished.append(job)
            for job, failure in failed_now:
                self._fail(job, failure)
                finished.append(job)
                done_now.append(job)
            if done_now:
                running = [j for j in running if j not in done_now]
        if time.perf_counter() >= deadline:
            self._flush()
        return finished

    def _flush(self) -> None:
        """Copy the buffered batch frames out into each match's own chunks."""
        if self._buffer:
            stacked = {k: torch.stack([b[k] for b in self._buffer]) for k in self._buffer[0]}
            for match_id, row in self._buffer_rows.items():
                job = self.jobs.get(match_id)
                if job is not None and job.log is not None:
                    job.log.extend({k: v[:, row] for k, v in stacked.items()})
        self._buffer = []
        self._buffer_rows = {}

    def _finish(self, job: MatchJob) -> None:
        self.sim.remove_game(job.game_id)
        job.game_id = None
        frames = job.log.frames()
        job.log = None
        job.seconds = time.perf_counter() - job.started
        job.result = MatchResult(frames, job.events, job.seconds)
        job.status = "done"
        log.info("match %s: done %s", job.id, job.result.summary)
        folder = self.engine.settings.recordings_dir
        if folder and str(folder) != ".":
            info = {
                "kind": "match",
                "id": job.id,
                "created": time.time(),
                **self.engine.recording_info,
                "request": job.request,
                "summary": job.result.summary,
                "events": [e.to_dict() for e in job.events],
                "inputs": "the controller columns (p1_*, p2_*) are the policies' inputs",
            }
            self.engine.writer.submit(
                logged_write(partial(write_complete_game, Path(folder) / job.id, frames, info))
            )

    def _fail(self, job: MatchJob, error: str) -> None:
        """End one match that cannot go on (its policy failed); the others play on."""
        self.sim.remove_game(job.game_id)
        job.game_id, job.log = None, None
        job.status, job.error = "failed", error
        log.warning("match %s: failed: %s", job.id, error)
        folder = self.engine.settings.recordings_dir
        if folder and str(folder) != ".":
            info = {"kind": "match", "id": job.id, "request": job.request, "error": error}
            self.engine.writer.submit(
                logged_write(
                    partial(_write_info, Path(folder) / job.id, info | {"status": "failed"})
                )
            )
