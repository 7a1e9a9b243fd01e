"""The engine: one model on one device, the live sessions' simulation, and the tick loop.

Every tick (absolute deadlines at the tick rate, so there is no drift) gathers the inputs of
every running session, makes ONE batched simulation step for all of them on the device thread,
and queues each session's frame for its players and spectators. Sessions that are not running
(waiting for players, paused, over) are parked: their state is a snapshot outside the batch, so
they cost nothing per tick and rejoin it exactly where they left. Only the device thread touches
the simulations; the event loop keeps handling websockets while a step runs.

Sessions are isolated: when one session's own work fails (its policy, its part of the step and
the rules, its recording, its frame message), that session is ended with an error to its
clients (`fail_session`) and the others get their frame in the same tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch

from model.frames import Frames
from model.policies import FrameView, Policy
from model.rules import Event
from model.simulation import GameSetup, Simulation, Snapshot
from server import protocol
from server.live_recordings import LiveRecordings
from server.metrics import ServerMetrics
from server.policy_modules import (
    POLICY_WAIT_S,
    ask_policies,
    frozen,
    has_module_policy,
    policy_columns,
    policy_failure,
)
from server.recorder import BatchCopy
from server.sessions import Session, TooManyResets
from server.settings import ServerSettings
from server.wire_frames import batch_columns, frame_message

log = logging.getLogger(__name__)

# A tick that ends more than this many periods past its deadline restarts the schedule from
# now instead of the loop bursting ticks back to back to catch up: a burst sends players
# frames faster than they answer them, their inputs then miss their frames, and each late
# input costs a rollback, which lengthens the next ticks (at 16 sessions on a 2-core CPU a
# quarter-second catch-up window doubled the rollbacks and the tick p99 against this one).
CATCH_UP_PERIODS = 1.0
BEHIND_LOG_EVERY_S = 10.0  # how often an overloaded loop says so
FAILURE_DETAIL_CHARS = 200  # of an exception's text, in the error a failed session's clients get


class ServerFull(RuntimeError):
    pass


@dataclasses.dataclass
class _RollbackRun:
    """One session's part of a tick's rollbacks (`Engine._rollbacks`)."""

    session: Session
    records: list  # the session's history records, from the first frame re-made
    controls: dict  # the columns of the frame about to be stepped, fixed up afterwards
    missing: list[int]  # its ports whose input had not arrived
    carry: dict  # port -> its latest real input seen so far in the re-made frames
    game: int | None = None  # its game in the scratch simulation, once added
    step: tuple = ()  # the record being re-made this round, and its still-missing ports


class Engine:
    def __init__(self, model: torch.nn.Module, model_name: str, settings: ServerSettings):
        self.settings = settings
        self.model = model
        self.model_name = model_name
        self.device = settings.resolved_device()
        self.sim = self.new_simulation(cuda_graphs=settings.cuda_graphs)
        self.scratch = self.new_simulation()  # for rollbacks
        threads = settings.resolved_threads(self.device)
        self.executor = ThreadPoolExecutor(
            1,
            thread_name_prefix="device",
            # OpenMP keeps the thread count per thread: set it where the steps run.
            initializer=torch.set_num_threads if threads else None,
            initargs=(threads,) if threads else (),
        )
        self.recordings = LiveRecordings(settings.recordings_dir, settings.tick_rate, model_name)
        self.sessions: dict[str, Session] = {}
        self._retired: list[Session] = []
        # Sessions whose own work failed in a device tick, with why; ended by the loop after it.
        self._failures: dict[str, tuple[Session, str]] = {}
        self._stopping = False
        self.next_deadline = time.monotonic()
        self.tick_ema = 0.0  # seconds, smoothed duration of a tick with sessions running
        self.tick_event = asyncio.Event()
        self.metrics = ServerMetrics()

    def new_simulation(self, cuda_graphs: bool = False) -> Simulation:
        """A simulation of the served model with the server's settings (the live batch, the
        rollback scratch, a session's start, the matches). On CPU they share one trace of the
        step, made when the live batch is warmed up at start-up."""
        settings = self.settings
        return Simulation(
            self.model, settings.temperature, self.device, cuda_graphs, settings.trace_step
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

    def _failed(self, session: Session, what: str, error: Exception | str) -> None:
        """On the device thread: `session`'s own `what` raised `error` (or, for a module
        policy that caught its own failure, `error` says what went wrong). The session drops
        out of the rest of this tick's work; the loop ends it when the tick is over."""
        if session.id in self._failures:
            return
        if isinstance(error, str):  # already bounded (policy_modules.GuardedPolicy)
            log.error("session %s: its %s failed: %s", session.id, what, error)
            detail = error
        else:
            log.error("session %s: its %s failed", session.id, what, exc_info=error)
            detail = f"{type(error).__name__}: {error}"[:FAILURE_DETAIL_CHARS]
        self._failures[session.id] = (session, f"this session's {what} failed ({detail})")

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
        # Resets are taken here, on the loop, so that one made while a step runs waits for
        # the next tick instead of being half applied by the step in flight.
        resets = [s for s in self.sessions.values() if s.pending_reset]
        for session in resets:
            session.pending_reset = False
        plan = []
        for session in self.sessions.values():
            if session.status == "running":
                recovered = sum(session.recovered.values())
                controls, missing, record = session.controls_for_next_frame()
                self.metrics.recovered_inputs.inc(sum(session.recovered.values()) - recovered)
                rollback, session.rollback_from = session.rollback_from, None
                plan.append((session, session.generation, controls, missing, record, rollback))
                if missing:
                    self.metrics.substituted_inputs.inc(len(missing))
        retired, self._retired = self._retired, []
        if not plan and not retired and not resets and not self._needs_parking():
            return 0
        results = await self.on_device(self._device_tick, plan, retired, resets)
        self.recordings.flush()
        failures, self._failures = self._failures, {}
        for session, reason in failures.values():
            self.fail_session(session, reason)
        for session, generation, corrected, data, frame_id, events, over in results:
            if generation != session.generation or session.id not in self.sessions:
                continue  # reset or closed while the step ran: this frame is void
            session.frame = frame_id
            if corrected:
                self.metrics.rollbacks.inc()
                self.metrics.rolled_back_frames.inc(len(corrected))
            for connection in session.connections():
                for message in corrected:
                    connection.offer_frame(message)
                if not connection.offer_frame(data) and connection.role == "spectator":
                    self.metrics.dropped_frames.inc()
            if over:
                session.over = True
                end = next((e for e in events if e.type == "game_end"), None)
                session.result = None if end is None else end.to_dict()
                self.broadcast_status(session, "game over")
        self.metrics.frames_stepped.inc(len(results))
        return len(results)

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

    # ------------------------------------------------------------------ device thread
    def _rollbacks(self, jobs: list[tuple]) -> dict[str, list[bytes]]:
        """Re-step, for each job (session, start, controls, missing), the frames
        `start`..`session.frame` with the inputs that have arrived since (a port still missing
        reuses its latest real input), put the result in the batch, and return each session's
        corrected frames' messages. Also fixes the substitutions of the frame about to be
        stepped (`controls`, for the ports in `missing`), which were chosen before the late
        input was known.

        The sessions rolling back in one tick are re-stepped together, in one scratch batch,
        their runs aligned to end together: a step of several games costs about what a step
        of one does on a CPU, and under a bad network several sessions roll back at once."""
        corrections: dict[str, list[bytes]] = {}
        runs = []
        for session, start, controls, missing in jobs:
            corrections[session.id] = []
            records = [session.history.get(f) for f in range(start, session.frame + 1)]
            # The device thread drops the frames leaving the window while the loop takes
            # inputs, so the first frames may be gone (their late inputs are counted lost):
            # the rest is still re-made, from the first frame that kept its state before.
            while records and (records[0] is None or records[0].before is None):
                records.pop(0)
            if not records or any(r is None for r in records):
                log.warning("session %s: cannot roll back to frame %d", session.id, start)
                continue
            carry: dict[int, dict | None] = {port: None for port in session.human_ports}
            runs.append(_RollbackRun(session, records, controls, missing, carry))
        if not runs:
            return corrections
        scratch = self.scratch
        length = max(len(run.records) for run in runs)
        for t in range(length):
            active = [run for run in runs if t >= length - len(run.records)]
            step_controls = {}
            for run in active:
                if run.game is None:
                    run.game = scratch.add_from_snapshot(run.records[0].before)
                rec = run.records[t - (length - len(run.records))]
                columns = dict(rec.used)
                still_missing = []
                for port in run.session.human_ports:
                    value = rec.real.get(port)
                    if value is None:
                        still_missing.append(port)
                        value = run.carry[port]
                    else:
                        run.carry[port] = value
                    if value is not None:
                        columns.update({f"p{port}_{k}": v for k, v in value.items()})
                rec.before = scratch.snapshot(run.game) if still_missing else None
                rec.used = columns
                rec.late.clear()
                run.step = (rec, still_missing)
                step_controls[run.game] = columns
            results = scratch.step(step_controls)
            # As in a tick: one copy off the device, the recordings', read by the wire too.
            copy = None
            if any(run.session.recorder is not None for run in active):
                copy = BatchCopy(scratch.batch_frame)
            wire = batch_columns(scratch.batch_frame if copy is None else copy.columns)
            for run in active:
                rec, still_missing = run.step
                result = results[run.game]
                message = frame_message(wire, result.row, result.events, still_missing)
                if run.session.recorder is not None:
                    run.session.recorder.correct(rec.frame, copy.row(result.row))
                message["corrected"] = True
                corrections[run.session.id].append(protocol.encode(message))
        for run in runs:
            session = run.session
            self.sim.restore(session.game_id, scratch.snapshot(run.game))
            scratch.remove_game(run.game)
            for port, value in run.carry.items():
                if value is None:
                    continue
                session.last_input[port] = value
                if port in run.missing:  # the frame about to be stepped reuses the newer input
                    run.controls.update({f"p{port}_{k}": v for k, v in value.items()})
            session.rollbacks += 1
            session.rolled_back_frames += len(run.records)
        return corrections

    def _device_tick(self, plan, retired: list[Session], resets: list[Session]) -> list[tuple]:
        sim = self.sim
        # Games leave and join the batch all at once: when many games end together, one
        # selection of the rows that stay instead of one per game (each copies the batch).
        leaving = []
        for session in retired:
            if session.game_id is not None:
                leaving.append(session.game_id)
                session.game_id = None
            self.recordings.finish_or_log(session)
        stepping = {id(s) for s, *_ in plan}
        resetting = {id(s) for s in resets}
        restoring, pausing = [], []
        for session in list(self.sessions.values()):
            if id(session) in resetting:
                try:
                    self.recordings.finish(session)
                    self.recordings.start(session)
                except Exception as e:  # noqa: BLE001 - ends only this session
                    self._failed(session, "recording", e)
                    continue
                if session.game_id is not None and id(session) in stepping:
                    restoring.append((session.game_id, session.start_snapshot))
                    continue
                if session.game_id is not None:  # reset while paused: out at its start
                    leaving.append(session.game_id)
                    session.game_id = None
                session.parked = session.start_snapshot
            elif id(session) not in stepping and session.game_id is not None:
                pausing.append(session)  # pause: leave the batch
        for session, snapshot in zip(
            pausing, sim.snapshots([s.game_id for s in pausing]), strict=True
        ):
            session.parked = snapshot
            leaving.append(session.game_id)
            session.game_id = None
        sim.restore_many(restoring)
        sim.remove_games(leaving)
        self._join([s for s, *_ in plan if s.game_id is None and s.id not in self._failures])
        plan = [entry for entry in plan if entry[0].id not in self._failures]
        if not plan:
            return []

        corrections = self._isolated_rollbacks(
            [
                (session, rollback, controls, missing)
                for session, _, controls, missing, _, rollback in plan
                if rollback is not None
            ]
        )
        batch = sim.batch_frame
        # Module policies answer from threads of their own, reading a copy of the batch: all
        # are asked first, then answered by one deadline (server/policy_modules.py), so a
        # slow one costs the tick POLICY_WAIT_S at most and ends only its own session.
        rows = {game_id: row for row, game_id in enumerate(sim.game_ids)}
        views: dict[str, FrameView] = {}
        for session, *_ in plan:
            if session.policies and session.id not in self._failures:
                if has_module_policy(session.policies.values()) and batch is sim.batch_frame:
                    batch = frozen(sim.batch_frame)
                views[session.id] = view = FrameView(batch, rows[session.game_id])
                ask_policies(_players(session), view)
        policies_due = time.perf_counter() + POLICY_WAIT_S
        step_controls = {}
        needs_before: list[tuple[int, object]] = []
        for session, _, human, missing, record, _ in plan:
            if session.id in self._failures:
                continue
            columns = dict(human)
            try:
                if session.policies:
                    columns |= policy_columns(_players(session), views[session.id], policies_due)
            except Exception as e:  # noqa: BLE001 - ends only this session
                self._failed(session, "policy", e)
                continue
            # A module policy catches its own failure (raising, too slow, a bad controller)
            # and answers a neutral controller; its session ends all the same, and only it.
            if session.policies and (failure := policy_failure(session.policies)):
                self._failed(session, "policy", failure)
                continue
            record.used = dict(columns)
            if missing and session.rollback_window > 0:  # kept for a rollback, taken below
                needs_before.append((session.game_id, record))
            session.history[record.frame] = record
            # Frames go in in order (a reset clears the history): the oldest leave first.
            history, oldest_kept = session.history, record.frame - session.rollback_window + 1
            while history and (oldest := next(iter(history))) < oldest_kept:
                self.metrics.lost_inputs.inc(session.retire(history.pop(oldest)))
            step_controls[session.game_id] = columns
        # The state before this step of every game stepped without all its inputs (after a
        # reset, often all of them at once), in one copy.
        befores = sim.snapshots([game_id for game_id, _ in needs_before])
        for (_, record), before in zip(needs_before, befores, strict=True):
            record.before = before
        plan = [entry for entry in plan if entry[0].id not in self._failures]
        self._drop_failed_games()
        results = self._isolated_step(step_controls, [session for session, *_ in plan])
        if not results:
            return []
        # One copy of the batch off the device per tick: the recordings' numpy copy when any
        # session records, which the wire columns are then read from too.
        recording = None
        if any(session.recorder is not None for session, *_ in plan):
            recording = BatchCopy(sim.batch_frame)
        columns = batch_columns(sim.batch_frame if recording is None else recording.columns)
        out = []
        for session, generation, _, missing, _, _ in plan:
            result = results.get(session.game_id)
            if result is None or session.id in self._failures:
                continue
            events: list[Event] = result.events
            frame_id = int(columns["frame"][result.row])
            try:
                if session.recorder is not None:
                    row = recording.row(result.row)
                    self.recordings.add(session, frame_id, row, events, missing, result.over)
            except Exception as e:  # noqa: BLE001 - ends only this session
                self._failed(session, "recording", e)
                continue
            try:
                data = protocol.encode(frame_message(columns, result.row, events, missing))
            except Exception as e:  # noqa: BLE001 - ends only this session
                self._failed(session, "frame message", e)
                continue
            corrected = corrections.get(session.id, [])
            out.append((session, generation, corrected, data, frame_id, events, result.over))
        return out

    def _join(self, sessions: list[Session]) -> None:
        """Parked sessions back into the live batch, in one join; if that fails, one at a
        time, so that only a session whose state cannot join is ended."""
        if not sessions:
            return
        try:
            game_ids = self.sim.add_from_snapshots([s.parked for s in sessions])
            joined = list(zip(sessions, game_ids, strict=True))
        except Exception:
            log.exception(
                "%d sessions could not join the batch; trying one at a time", len(sessions)
            )
            joined = []
            for session in sessions:
                try:
                    joined.append((session, self.sim.add_from_snapshot(session.parked)))
                except Exception as e:  # noqa: BLE001 - ends only this session
                    self._failed(session, "state", e)
        for session, game_id in joined:
            session.game_id, session.parked = game_id, None

    def _isolated_step(self, controls: dict[int, dict], sessions: list[Session]) -> dict:
        """The tick's batched step. If it raises, each session's game is stepped alone (from
        a snapshot, in a simulation of its own) to find the sessions whose state makes the
        step or the rules fail; their games leave the batch and the others are stepped
        again, in this tick. {} when no session is to blame (the tick makes no frames)."""
        try:
            return self.sim.step(controls)
        except Exception:
            log.exception("the tick's step failed; stepping each game alone to find why")
        failing = 0
        probe = self.new_simulation()
        for session in sessions:
            try:
                game = probe.add_from_snapshot(self.sim.snapshot(session.game_id))
                probe.step({game: controls.get(session.game_id, {})})
                probe.remove_game(game)
            except Exception as e:  # noqa: BLE001 - ends only this session
                self._failed(session, "step", e)
                failing += 1
                probe = self.new_simulation()  # whatever the failure left in it
        if not failing:
            log.error("every game steps alone: no session is to blame; this tick makes no frames")
            return {}
        self._drop_failed_games()
        try:
            return self.sim.step({g: c for g, c in controls.items() if g in self.sim.game_ids})
        except Exception:
            log.exception("the step failed again without the failing sessions' games")
            return {}

    def _drop_failed_games(self) -> None:
        """The games of the sessions that failed in this tick leave the batch now, so that
        neither this tick's step nor the next one runs them again."""
        failed = [s for s, _ in self._failures.values() if s.game_id is not None]
        if failed:
            self.sim.remove_games([session.game_id for session in failed])
            for session in failed:
                session.game_id = None

    def _isolated_rollbacks(self, jobs: list[tuple]) -> dict[str, list[bytes]]:
        """`_rollbacks` of every job together; if that raises, each job alone (a fresh
        scratch simulation each), and a session whose rollback fails alone is ended."""
        if not jobs:
            return {}
        try:
            return self._rollbacks(jobs)
        except Exception:
            log.exception("a tick's rollbacks failed; rolling back each session alone")
        corrections: dict[str, list[bytes]] = {}
        for job in jobs:
            self.scratch = self.new_simulation()  # whatever the failure left in it
            try:
                corrections |= self._rollbacks([job])
            except Exception as e:  # noqa: BLE001 - ends only this session
                self._failed(job[0], "rollback", e)
        self.scratch = self.new_simulation()
        return corrections


def _players(session: Session) -> list[tuple[Policy, int]]:
    """A session's policies as (policy, player index)."""
    return [(policy, port - 1) for port, policy in session.policies.items()]
