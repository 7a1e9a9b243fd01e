"""Policy-vs-policy matches submitted over REST, run in the background as fast as the device
allows, batched together in their own simulation by the match runner that `playmodel match`
uses too (server/match_runner.py).

The device thread is shared with the live sessions, which come first: between two ticks the
service works only for the time left before the next tick is due (minus what a tick has been
taking), in slices that each fit it, so matches never make a live session late. At most
`ADMIT_SLICE` queued matches join the batch at a time (64 joining one by one took a second),
at most `match_batch` play at once (a step of 64 games of the demo model takes 49 ms on a
2-core CPU, three times a tick's period), and a step starts only if the time a step has been
taking is left. With no live sessions they run flat out.

Each frame a match plays is copied into its `FrameLog` as it is made (about 1 KB a frame, by
the runner); a finished match keeps only that log (trimmed), its events and its summary, not
its start state (230 KB) nor its policies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from core.events import Event
from model.frames import Frames
from model.policies import Policy
from model.snapshots import Snapshot
from server.frame_log import FrameLog
from server.match_runner import Match, MatchRunner
from server.recorder import write_complete_game, write_info
from server.recordings import RECORDING_ID
from server.recovery import match_from_recording
from server.requests import MatchRequest, game_setup, policy, replay_start
from server.sessions import new_id, new_token

log = logging.getLogger(__name__)

IDLE_CHUNK_S = 0.05  # device time per chunk when no live session is running
MIN_CHUNK_S = 0.002
ADMIT_SLICE = 4  # queued matches joining the batch in one join (~1-2 ms on a 2-core CPU)
# Matches wait this many chunks at most without a step: a step whose time estimate is over
# every budget the ticks leave (after one slow step, say) then runs anyway, so that matches
# cannot starve for good while live sessions play and its estimate is measured again.
MAX_SKIPPED_CHUNKS = 30


class MatchesFull(RuntimeError):
    """No room for another match now; the text says which limit and how to go on."""


class MatchStillPlaying(RuntimeError):
    """A match queued or running cannot be deleted (yet)."""


@dataclass(kw_only=True)
class MatchJob(Match):
    """A match submitted over REST: the `Match` the runner plays, and what the API answers
    about it."""

    id: str
    start: Snapshot | None  # until it joins the batch
    request: dict
    owner_token: str = field(default_factory=new_token)  # deleting it needs this (`match_token`)
    status: str = "queued"  # queued, running, done, failed
    seconds: float = 0.0
    error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: FinishedMatch | None = None

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


@dataclass
class FinishedMatch:
    """A finished match as it is held: its frames compact (`FrameLog`, trimmed), its events
    and its summary (worked out once, when it finished)."""

    log: FrameLog
    events: list[Event]
    seconds: float
    summary: dict

    @property
    def frames(self) -> Frames:
        """Every frame, one (T, ...) tensor per field, made when asked (downloads)."""
        return self.log.frames()

    def __len__(self) -> int:
        return len(self.log)


class MatchService:
    def __init__(self, engine):
        self.engine = engine
        self.runner = self._new_runner()
        self.jobs: OrderedDict[str, MatchJob] = OrderedDict()
        self._wake = asyncio.Event()
        self._stopping = False
        self.batch = engine.settings.resolved_match_batch(engine.device)
        # Device time of one join of a slice and of one step (with the policies, the copy of
        # the frames): what must be left of a chunk's budget to start one. Smoothed.
        self.admit_s = 0.0
        self.step_s = 0.0
        self._skipped = 0  # chunks in a row that had matches running and made no step

    def _new_runner(self) -> MatchRunner:
        """The runner of the matches' batch, a simulation of its own (made again after a
        failure of the batch)."""
        cuda_graphs = self.engine.settings.cuda_graphs
        return MatchRunner(self.engine.new_simulation(cuda_graphs=cuda_graphs))

    @property
    def sim(self):
        return self.runner.sim

    def active(self) -> int:
        return sum(job.status in ("queued", "running") for job in self.jobs.values())

    async def create(self, request: MatchRequest) -> MatchJob:
        """The match `request` asks for, queued. Raises `MatchesFull` (before the work of
        preparing its start) when there is no room for it, and `requests.BadRequest` when the
        request names something unusable. Its start is prepared on another thread."""
        settings = self.engine.settings
        if self.active() >= settings.max_matches:
            raise MatchesFull(
                f"{self.active()} matches are queued or running (max_matches="
                f"{settings.max_matches}); try again later"
            )
        setup = game_setup(request)
        policies = (policy(request.p1, "p1", settings), policy(request.p2, "p2", settings))
        max_frames = min(request.max_frames or settings.max_match_frames, settings.max_match_frames)
        self.make_room(max_frames)
        replay = await asyncio.to_thread(replay_start, request.start, settings)
        start_frame = request.start.frame if request.start else None
        snapshot = await asyncio.to_thread(self.engine.prepare_start, setup, replay, start_frame)
        info = request.model_dump(exclude={"start"}) | {
            "start": request.start.model_dump(exclude={"data"}) if request.start else "standard",
            "max_frames": max_frames,
            "setup": dataclasses.asdict(snapshot.setup),
        }
        return self.submit(policies, max_frames, snapshot, info)

    async def describe(self, match_id: str, wait: bool = False, timeout: float = 600.0):
        """What `GET /v1/matches/ID` answers: the match held here (once done, with `wait`, or
        after `timeout` seconds), else what its recording still tells (finished and
        forgotten, or from a run stopped before it ended); None if neither knows it."""
        job = self.jobs.get(match_id)
        if job is None:
            if not RECORDING_ID.fullmatch(match_id):
                return None
            folder = self.engine.settings.recordings_dir
            return await asyncio.to_thread(match_from_recording, folder, match_id)
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), timeout)
        return job.describe()

    def submit(self, policies: tuple[Policy, Policy], max_frames: int, start, request) -> MatchJob:
        self.make_room(max_frames)
        job = MatchJob(
            id=new_id(), policies=policies, max_frames=max_frames, start=start, request=request
        )
        self.jobs[job.id] = job
        self._wake.set()
        log.info("match %s: queued (%s)", job.id, request)
        folder = self.engine.settings.recordings_dir
        if folder and str(folder) != ".":
            # Written now so that a server stopped before the match ends can answer `lost`
            # for it after its restart (server/recovery.py) rather than not know it.
            info = {"kind": "match", "id": job.id, "created": time.time(), "request": request}
            self.engine.recordings.submit(
                partial(write_info, Path(folder) / job.id, info | {"status": "queued"})
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
        return sum(len(j.result) for j in self.jobs.values() if j.result is not None)

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
            held -= 0 if job.result is None else len(job.result)

    def delete(self, job: MatchJob) -> None:
        """Forget a finished match now, its frames with it, rather than when room is needed
        (its recording stays, and `GET /v1/matches/ID` answers from it). Raises
        `MatchStillPlaying` for one queued or running."""
        if job.status not in ("done", "failed"):
            raise MatchStillPlaying(
                f"match {job.id} is {job.status}; it can be deleted once it has ended"
            )
        self.jobs.pop(job.id, None)

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
                finished = await engine.on_device(self._advance, budget, budget == IDLE_CHUNK_S)
            except Exception as e:
                log.exception("matches failed")
                for job in self.jobs.values():
                    if job.status in ("queued", "running"):
                        job.status, job.error = "failed", f"{type(e).__name__}: {e}"
                        job.log, job.start, job.game_id = None, None, None
                        job.done.set()
                self.runner = self._new_runner()
                continue
            for job in finished:
                job.done.set()
            if finished:  # here, on the event loop, which alone changes `jobs`
                self._forget_old()
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ device thread
    def _advance(self, budget_s: float, idle: bool = False) -> list[MatchJob]:
        """Work for `budget_s` seconds at most: queued matches join the batch a slice at a
        time while there is room, then the batch is stepped while a step's time is left.
        One slice and one step are made whatever their estimates when `idle` (no live
        session runs) or after `MAX_SKIPPED_CHUNKS` chunks without any work, so that an
        estimate over every budget (one slow join or step on a loaded machine) cannot stop
        the matches for good. Returns the matches that finished."""
        deadline = time.perf_counter() + budget_s
        forced = idle or self._skipped >= MAX_SKIPPED_CHUNKS
        jobs = list(self.jobs.values())  # `jobs` changes on the event loop only
        running = [j for j in jobs if j.status == "running"]
        queued = [j for j in jobs if j.status == "queued"]
        admitted = False
        while queued and len(running) < self.batch:
            began = time.perf_counter()
            if began + self.admit_s > deadline and not (forced and not running):
                break
            room = min(ADMIT_SLICE, self.batch - len(running))
            joining, queued = queued[:room], queued[room:]
            self._admit(joining)
            self.admit_s = _smoothed(self.admit_s, time.perf_counter() - began)
            running += joining
            admitted = True
        finished: list[MatchJob] = []
        stepped = False
        while running:
            began = time.perf_counter()
            if began + self.step_s > deadline and not (forced and not stepped):
                break
            done = self._step()
            self.step_s = _smoothed(self.step_s, time.perf_counter() - began)
            stepped = True
            if done:
                finished += done
                running = [j for j in running if j.status == "running"]
        waiting = bool(running or queued)
        self._skipped = self._skipped + 1 if waiting and not (admitted or stepped) else 0
        return finished

    def _admit(self, jobs: list[MatchJob]) -> None:
        """Queued matches into the runner's batch, in one join."""
        self.runner.join(jobs, [job.start for job in jobs])
        for job in jobs:
            job.start, job.status = None, "running"  # its start state is not needed again

    def _step(self) -> list[MatchJob]:
        """One frame of every running match; returns the ones that ended with it."""
        self.engine.metrics.match_frames.inc(len(self.runner.playing))
        ended = self.runner.step()
        for job in ended:
            if job.failure is None:
                self._finish(job)
            else:
                self._fail(job, job.failure)  # only this match ends
        return ended

    def _finish(self, job: MatchJob) -> None:
        """A match that has played to its end (its game already out of the batch)."""
        outcome = job.outcome()
        frames = outcome.frames  # for its recording; the log is what is kept
        job.log.trim()
        job.seconds = outcome.seconds
        summary = outcome.summary
        job.result = FinishedMatch(job.log, job.events, job.seconds, summary)
        job.log, job.policies = None, ()
        job.status = "done"
        log.info("match %s: done %s", job.id, summary)
        folder = self.engine.settings.recordings_dir
        if folder and str(folder) != ".":
            info = {
                "kind": "match",
                "id": job.id,
                "created": time.time(),
                **self.engine.recordings.info,
                "request": job.request,
                "summary": summary,
                "events": [e.to_dict() for e in job.events],
                "inputs": "the controller columns (p1_*, p2_*) are the policies' inputs",
            }
            self.engine.recordings.submit(
                partial(write_complete_game, Path(folder) / job.id, frames, info)
            )

    def _fail(self, job: MatchJob, error: str) -> None:
        """End one match that cannot go on (its policy failed; its game already out of the
        batch); the others play on."""
        job.log, job.policies = None, ()
        job.status, job.error = "failed", error
        log.warning("match %s: failed: %s", job.id, error)
        folder = self.engine.settings.recordings_dir
        if folder and str(folder) != ".":
            info = {"kind": "match", "id": job.id, "request": job.request, "error": error}
            self.engine.recordings.submit(
                partial(write_info, Path(folder) / job.id, info | {"status": "failed"})
            )


def _smoothed(average: float, sample: float) -> float:
    """An exponential average of durations that follows a slower sample faster than a
    quicker one: a step that got slower must not be started on an old estimate."""
    return 0.5 * (average + sample) if sample > average else 0.8 * average + 0.2 * sample
