"""The live batch: the running sessions' games in one simulation, and the device thread's part
of every tick (`LiveBatch.tick`). Only the device thread touches it.

A tick's plan (server/tick.py) is made in this order: games leave and join the batch (sessions
closed, paused, reset, or running again), late inputs are applied by rollbacks
(server/rollbacks.py), the policies answer, the batch makes ONE step for every running
session, and each session's frame is recorded and made ready for the wire. Sessions that are
not running are parked: their state is a snapshot outside the batch, so they cost nothing per
tick and rejoin it exactly where they left.

Sessions are isolated: when one session's own work fails (its policy, its part of the step and
the rules, its rollback, its recording, its frame message), it drops out of the rest of the
tick and the result names it (`TickResult.failures`); the others get their frame in the same
tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from model.policies import FrameView, Policy
from model.simulation import Simulation, StepResult
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
from server.rollbacks import Rollbacks
from server.sessions import FrameRecord, Session
from server.tick import SessionFrame, SessionPlan, SteppedFrames, TickFailures, TickPlan, TickResult

log = logging.getLogger(__name__)


class LiveBatch:
    def __init__(
        self,
        sim: Simulation,
        sessions: dict[str, Session],
        recordings: LiveRecordings,
        metrics: ServerMetrics,
        new_simulation: Callable[[], Simulation],
    ):
        """`sessions`: the engine's live sessions (read here to park the ones not stepping);
        `new_simulation` makes the simulations a failed step or rollback is retried in."""
        self.sim = sim
        self.sessions = sessions
        self.recordings = recordings
        self.metrics = metrics
        self.new_simulation = new_simulation
        self.rollbacks = Rollbacks(sim, new_simulation)
        # The failures so far, handed to the loop with a tick's result (they stay for the
        # next one if a tick raises).
        self.failures = TickFailures()

    def tick(self, plan: TickPlan) -> TickResult:
        """Make one tick's frames."""
        frames = self._frames(plan)
        failures, self.failures = self.failures, TickFailures()
        return TickResult(frames, failures)

    def _frames(self, plan: TickPlan) -> list[SessionFrame]:
        """The tick's work in the order of the module docstring; a session that fails drops
        out of every later part."""
        self._regroup(plan)
        stepping = [p for p in plan.stepping if p.session not in self.failures]
        if not stepping:
            return []
        corrections = self.rollbacks.run(
            [p for p in stepping if p.rollback_from is not None], self.failures
        )
        controls = self._controls(stepping)
        stepping = [p for p in stepping if p.session not in self.failures]
        self._drop_failed_games()
        results = self._isolated_step(controls, [p.session for p in stepping])
        if not results:
            return []
        # One copy of the batch off the device per tick (when any session records), which
        # the recordings and the wire both read.
        recording = any(p.session.recorder is not None for p in stepping)
        stepped = SteppedFrames(self.sim.batch_frame, record=recording)
        frames = []
        for p in stepping:
            result = results.get(p.session.game_id)
            if result is None or p.session in self.failures:
                continue
            frame = self._frame(p, stepped, result, corrections.get(p.session.id, []))
            if frame is not None:
                frames.append(frame)
        return frames

    # ------------------------------------------------------------------ in and out of the batch
    def _regroup(self, plan: TickPlan) -> None:
        """Retired sessions' games leave, reset ones go back to their start, sessions not
        stepping are parked and stepping ones that were parked join. Games leave and join the
        batch all at once: when many games end together, one selection of the rows that stay
        instead of one per game (each copies the batch)."""
        sim = self.sim
        leaving = []
        for session in plan.retired:
            if session.game_id is not None:
                leaving.append(session.game_id)
                session.game_id = None
            self.recordings.finish_or_log(session)
        restoring, pausing = self._reset_or_pause(plan, leaving)
        for session, snapshot in zip(
            pausing, sim.snapshots([s.game_id for s in pausing]), strict=True
        ):
            session.parked = snapshot
            leaving.append(session.game_id)
            session.game_id = None
        sim.restore_many(restoring)
        sim.remove_games(leaving)
        joining = [p.session for p in plan.stepping if p.session.game_id is None]
        self._join([s for s in joining if s not in self.failures])

    def _reset_or_pause(self, plan: TickPlan, leaving: list[int]) -> tuple[list, list[Session]]:
        """The games to restore to their start (game id, snapshot) and the sessions to park:
        a reset session starts a new recording and its game goes back to its start (in the
        batch if it steps this tick, else parked there); a session in the batch that does not
        step this tick is paused. Games leaving the batch are added to `leaving`."""
        stepping = {id(p.session) for p in plan.stepping}
        resetting = {id(s) for s in plan.resets}
        restoring, pausing = [], []
        for session in list(self.sessions.values()):
            if id(session) in resetting:
                try:
                    self.recordings.finish(session)
                    self.recordings.start(session)
                except Exception as e:  # noqa: BLE001 - ends only this session
                    self.failures.add(session, "recording", e)
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
        return restoring, pausing

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
                    self.failures.add(session, "state", e)
        for session, game_id in joined:
            session.game_id, session.parked = game_id, None

    def _drop_failed_games(self) -> None:
        """The games of the sessions that failed in this tick leave the batch now, so that
        neither this tick's step nor the next one runs them again."""
        failed = [f.session for f in self.failures if f.session.game_id is not None]
        if failed:
            self.sim.remove_games([session.game_id for session in failed])
            for session in failed:
                session.game_id = None

    # ------------------------------------------------------------------ inputs
    def _controls(self, stepping: list[SessionPlan]) -> dict[int, dict]:
        """Each stepping session's controller columns for its frame (its humans' and its
        policies'), by game id; the frame's record joins the session's history, with the
        state before the frame when an input is missing (for a rollback)."""
        views = self._ask_policies(stepping)
        policies_due = time.perf_counter() + POLICY_WAIT_S
        controls = {}
        needs_before: list[SessionPlan] = []
        for p in stepping:
            session = p.session
            if session in self.failures:
                continue
            columns = self._with_policies(p, views, policies_due)
            if columns is None:
                continue
            p.record.used = dict(columns)
            if p.missing and session.rollback_window > 0:  # kept for a rollback, taken below
                needs_before.append(p)
            self._keep(session, p.record)
            controls[session.game_id] = columns
        # The state before this step of every game stepped without all its inputs (after a
        # reset, often all of them at once), in one copy.
        befores = self.sim.snapshots([p.session.game_id for p in needs_before])
        for p, before in zip(needs_before, befores, strict=True):
            p.record.before = before
        return controls

    def _ask_policies(self, stepping: list[SessionPlan]) -> dict[str, FrameView]:
        """Every session's policies asked for this frame, by session id. Module policies
        answer from threads of their own, reading a copy of the batch: all are asked first,
        then answered by one deadline (server/policy_modules.py), so a slow one costs the
        tick POLICY_WAIT_S at most and ends only its own session."""
        sim, batch = self.sim, self.sim.batch_frame
        rows = {game_id: row for row, game_id in enumerate(sim.game_ids)}
        views: dict[str, FrameView] = {}
        for p in stepping:
            session = p.session
            if session.policies and session not in self.failures:
                if has_module_policy(session.policies.values()) and batch is sim.batch_frame:
                    batch = frozen(sim.batch_frame)
                views[session.id] = view = FrameView(batch, rows[session.game_id])
                ask_policies(_players(session), view)
        return views

    def _with_policies(
        self, plan: SessionPlan, views: dict[str, FrameView], due: float
    ) -> dict[str, float | int] | None:
        """The session's controller columns with its policies' answers; None if a policy
        failed (the session is then in `failures`)."""
        session = plan.session
        columns = dict(plan.controls)
        if not session.policies:
            return columns
        try:
            columns |= policy_columns(_players(session), views[session.id], due)
        except Exception as e:  # noqa: BLE001 - ends only this session
            self.failures.add(session, "policy", e)
            return None
        # A module policy catches its own failure (raising, too slow, a bad controller)
        # and answers a neutral controller; its session ends all the same, and only it.
        if failure := policy_failure(session.policies):
            self.failures.add(session, "policy", failure)
            return None
        return columns

    def _keep(self, session: Session, record: FrameRecord) -> None:
        """The frame's record into the session's history; the frames leaving the rollback
        window leave it, their inputs now final. Frames go in in order (a reset clears the
        history): the oldest leave first."""
        session.history[record.frame] = record
        history, oldest_kept = session.history, record.frame - session.rollback_window + 1
        while history and (oldest := next(iter(history))) < oldest_kept:
            self.metrics.lost_inputs.inc(session.retire(history.pop(oldest)))

    # ------------------------------------------------------------------ the step
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
                self.failures.add(session, "step", e)
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

    def _frame(
        self,
        plan: SessionPlan,
        stepped: SteppedFrames,
        result: StepResult,
        corrected: list[bytes],
    ) -> SessionFrame | None:
        """The session's new frame recorded and encoded for the wire, both from `stepped`;
        None if either failed (the session is then in `failures`)."""
        session, events = plan.session, result.events
        frame = stepped.frame(result.row)
        try:
            if session.recorder is not None:
                row = stepped.recording_row(result.row)
                self.recordings.add(session, frame, row, events, plan.missing, result.over)
        except Exception as e:  # noqa: BLE001 - ends only this session
            self.failures.add(session, "recording", e)
            return None
        try:
            message = protocol.encode(stepped.message(result.row, events, plan.missing))
        except Exception as e:  # noqa: BLE001 - ends only this session
            self.failures.add(session, "frame message", e)
            return None
        return SessionFrame(
            session, plan.generation, frame, message, corrected, events, result.over
        )


def _players(session: Session) -> list[tuple[Policy, int]]:
    """A session's policies as (policy, player index)."""
    return [(policy, port - 1) for port, policy in session.policies.items()]
