"""The engine: one model on one device, the live sessions, and the tick loop.

Every tick (absolute deadlines at the tick rate, so there is no drift) the loop plans the
tick (the input every running session has for its next frame: server/tick.py), the device
thread makes ONE batched simulation step for all of them (`live_batch.LiveBatch.tick`), and
the loop queues each session's frame, from the tick's result, for its players and
spectators. Only the device thread touches the simulations; the event loop keeps handling
websockets while a step runs.

Sessions are isolated: when one session's own work fails in a tick (its policy, its part of
the step and the rules, its recording, its frame message), that session is ended with an error
to its clients (`fail_session`) and the others get their frame in the same tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch

from model.frames import Frames
from model.game_start import GameSetup
from model.policies import Policy
from model.simulation import Simulation
from model.snapshots import Snapshot
from server import protocol
from server.live_batch import LiveBatch
from server.live_recordings import LiveRecordings
from server.metrics import ServerMetrics
from server.sessions import Session, TooManyResets
from server.settings import ServerSettings
from server.tick import SessionFrame, SessionPlan, TickPlan

log = logging.getLogger(__name__)

# A tick that ends more than this many periods past its deadline restarts the schedule from
# now instead of the loop bursting ticks back to back to catch up: a burst sends players
# frames faster than they answer them, their inputs then miss their frames, and each late
# input costs a rollback, which lengthens the next ticks (at 16 sessions on a 2-core CPU a
# quarter-second catch-up window doubled the rollbacks and the tick p99 against this one).
CATCH_UP_PERIODS = 1.0
BEHIND_LOG_EVERY_S = 10.0  # how often an overloaded loop says so


class ServerFull(RuntimeError):
    pass


class Engine:
    def __init__(self, model: torch.nn.Module, model_name: str, settings: ServerSettings):
        self.settings = settings
        self.model = model
        self.model_name = model_name
        self.device = settings.resolved_device()
        self.sim = self.new_simulation(cuda_graphs=settings.cuda_graphs)
        threads = settings.resolved_threads(self.device)
        self.executor = ThreadPoolExecutor(
            1,
            thread_name_prefix="device",
            # OpenMP keeps the thread count per thread: set it where the steps run.
            initializer=torch.set_num_threads if threads else None,
            initargs=(threads,) if threads else (),
        )
        self.recordings = LiveRecordings(settings.recordings_dir, settings.tick_rate, model_name)
        self.metrics = ServerMetrics()
        self.sessions: dict[str, Session] = {}
        self._retired: list[Session] = []
        self.live_batch = LiveBatch(
            self.sim, self.sessions, self.recordings, self.metrics, self.new_simulation
        )
        self._stopping = False
        self.next_deadline = time.monotonic()
        self.tick_ema = 0.0  # seconds, smoothed duration of a tick with sessions running
        self.tick_event = asyncio.Event()

    def new_simulation(self, cuda_graphs: bool = False) -> Simulation:
        """A simulation of the served model with the server's settings (the live batch, the
        rollback scratch, a session's start, the matches). On CPU they share one trace of the
        step, made when the live batch is warmed up at start-up, and the compiled step once
        it is ready (`model.compiled_step`)."""
        settings = self.settings
        return Simulation(
            self.model,
            settings.temperature,
            self.device,
            cuda_graphs,
            settings.trace_step,
            compiled=settings.compiled_step,
        )

    async def on_device(self, fn, *args):
        """Run `fn(*args)` on the device thread (the only thread that touches simulations)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args))

    # ------------------------------------------------------------------ sessions
    def prepare_start(
        self, setup: GameSetup, replay: Frames | None = None, start_frame: int | None = None
    ) -> Snapshot:
        """A new game's first state as a snapshot. Prefilling from a replay runs the model over
        every earlier frame, so callers run this off the device thread (`asyncio.to_thread`):
        live sessions keep ticking meanwhile."""
        scratch = self.new_simulation()
        game = scratch.new_game(setup, replay=replay, start_frame=start_frame)
        return scratch.snapshot(game)

    def add_session(
        self,
        snapshot: Snapshot,
        policies: dict[int, Policy],
        input_delay: int,
        setup_info: dict,
    ) -> Session:
        if len(self.sessions) >= self.settings.max_sessions:
            raise ServerFull(
                f"the server already runs {len(self.sessions)} sessions "
                f"(max_sessions={self.settings.max_sessions}); try again later"
            )
        session = Session.new(
            policies, input_delay, snapshot, setup_info, self.settings.rollback_frames
        )
        session.parked = snapshot
        session.update_started()  # a game of two scripted policies starts at once
        self.recordings.start(session)
        self.sessions[session.id] = session
        log.info("session %s: created (%s)", session.id, setup_info)
        return session

    def finish_all_recordings(self) -> None:
        """At shutdown: every recording written out in full, then the writer stopped."""
        self.recordings.finish_all([*self.sessions.values(), *self._retired])

    def close_session(self, session: Session, reason: str) -> None:
        """Forget a session; its game leaves the batch at the next tick and its connections
        are told why and closed."""
        if self.sessions.pop(session.id, None) is None:
            return
        self._retired.append(session)
        bye = protocol.encode(protocol.Bye(reason=reason))
        for connection in session.connections():
            connection.offer(bye)
            connection.end(protocol.CLOSE_GOING_AWAY, reason)
        log.info("session %s: closed (%s)", session.id, reason)

    def fail_session(self, session: Session, reason: str) -> None:
        """End a session whose own work failed: its clients get an `error` (code
        `session_failed`) and a 1011 close, its game leaves the batch at the next tick and
        its recording is finished as far as it goes. The other sessions never wait for it."""
        if self.sessions.pop(session.id, None) is None:
            return
        self._retired.append(session)
        self.metrics.failed_sessions.inc()
        error = protocol.encode(protocol.Error(code="session_failed", message=reason))
        for connection in session.connections():
            connection.offer(error)
            connection.end(protocol.CLOSE_INTERNAL_ERROR, reason)
        log.warning("session %s: ended (%s)", session.id, reason)

    def reset_session(self, session: Session) -> None:
        """Back to the session's start; applied on the device thread before the next step.
        Raises TooManyResets past the session's `ResetLimit`."""
        wait = session.reset_limit.take()
        if wait:
            limit = session.reset_limit
            raise TooManyResets(
                f"too many resets of session {session.id}: {limit.burst} at once, then "
                f"{limit.rate:g} a second; try again in {wait:.1f} s",
                wait,
            )
        session.pending_reset = True
        session.generation += 1
        session.frame = int(session.start_snapshot.tensors["frame.frame"])
        session.over = False
        session.result = None
        self.metrics.lost_inputs.inc(session.reset_inputs())
        log.info("session %s: reset", session.id)

    # ------------------------------------------------------------------ the tick loop
    async def run(self) -> None:
        # time.monotonic, not loop.time: uvloop's is in whole milliseconds, cached per loop
        # iteration, too coarse for 16.7 ms slots and their durations.
        period = 1.0 / self.settings.tick_rate
        deadline = time.monotonic()
        last_idle_check = deadline
        restarts, last_behind_log = 0, deadline
        while not self._stopping:
            start = time.monotonic()
            try:
                stepped = await self.tick()
            except Exception:
                log.exception("tick failed; the loop goes on")
                stepped = 0
            end = time.monotonic()
            deadline += period
            if stepped:
                duration = end - start
                self.metrics.ticks.inc()
                self.metrics.tick_seconds.observe(duration)
                self.metrics.recent_ticks.observe(duration)
                self.tick_ema = (
                    duration if self.tick_ema == 0 else 0.9 * self.tick_ema + 0.1 * duration
                )
                if end > deadline:
                    self.metrics.late_ticks.inc()
            if end - deadline > CATCH_UP_PERIODS * period:
                deadline = end
                restarts += 1
                if end - last_behind_log > BEHIND_LOG_EVERY_S:
                    log.warning(
                        "the tick loop fell behind %d times in %.0f s (too much load for this "
                        "device): each time its schedule restarted%s",
                        restarts,
                        end - last_behind_log,
                        self.settings.overload_hint(self.device),
                    )
                    restarts, last_behind_log = 0, end
            self.next_deadline = deadline
            self.tick_event.set()
            if end - last_idle_check > 1.0:
                last_idle_check = end
                self._close_idle_sessions(end)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stopping = True

    def _close_idle_sessions(self, now: float) -> None:
        for session in list(self.sessions.values()):
            if session.connections():
                session.last_seen = now
            elif now - session.last_seen > self.settings.idle_timeout:
                self.close_session(session, f"idle for {self.settings.idle_timeout:.0f} s")

    async def tick(self) -> int:
        """One step of every running session; returns how many were stepped."""
        plan = self._plan_tick()
        if plan.is_empty() and not self._needs_parking():
            return 0
        result = await self.on_device(self.live_batch.tick, plan)
        self.recordings.flush()
        for failure in result.failures:
            self.fail_session(failure.session, failure.reason)
        for frame in result.frames:
            self._send(frame)
        self.metrics.frames_stepped.inc(len(result.frames))
        return len(result.frames)

    def _plan_tick(self) -> TickPlan:
        """Each running session's inputs for its next frame, the sessions retired since the
        last tick, and the resets asked for."""
        # Resets are taken here, on the loop, so that one made while a step runs waits for
        # the next tick instead of being half applied by the step in flight.
        resets = [s for s in self.sessions.values() if s.pending_reset]
        for session in resets:
            session.pending_reset = False
        stepping = []
        for session in self.sessions.values():
            if session.status == "running":
                recovered = sum(session.recovered.values())
                controls, missing, record = session.controls_for_next_frame()
                self.metrics.recovered_inputs.inc(sum(session.recovered.values()) - recovered)
                rollback, session.rollback_from = session.rollback_from, None
                plan = SessionPlan(session, session.generation, controls, missing, record, rollback)
                stepping.append(plan)
                if missing:
                    self.metrics.substituted_inputs.inc(len(missing))
        retired, self._retired = self._retired, []
        return TickPlan(stepping, retired, resets)

    def _send(self, frame: SessionFrame) -> None:
        """A session's frame from the tick to its connections, after the frames its rollback
        corrected."""
        session = frame.session
        if frame.generation != session.generation or session.id not in self.sessions:
            return  # reset or closed while the step ran: this frame is void
        session.frame = frame.frame
        corrected = frame.corrected
        if corrected:
            self.metrics.rollbacks.inc()
            self.metrics.rolled_back_frames.inc(len(corrected))
        for connection in session.connections():
            for message in corrected:
                connection.offer_frame(message)
            if not connection.offer_frame(frame.message) and connection.role == "spectator":
                self.metrics.dropped_frames.inc()
        if frame.over:
            session.over = True
            end = next((e for e in frame.events if e.type == "game_end"), None)
            session.result = None if end is None else end.to_dict()
            self.broadcast_status(session, "game over")

    def _needs_parking(self) -> bool:
        return any(
            (s.game_id is not None) != (s.status == "running") or s.pending_reset
            for s in self.sessions.values()
        )

    def broadcast_status(self, session: Session, reason: str = "") -> None:
        data = protocol.encode(
            protocol.Status(status=session.status, frame=session.frame, reason=reason)
        )
        for connection in session.connections():
            connection.offer(data)
