"""Rollbacks: a late input re-makes the frames it belonged to, on the device thread.

A session that made a frame without some port's input kept the state from before that frame
(`FrameRecord.before`). When the input arrives within the rollback window, the tick re-steps
that frame and every one since with the inputs that have arrived (a port still missing reuses
its latest real input), puts the result back in the live batch, and sends the re-made frames,
marked `corrected`, before the new one. The recordings replace the frames they still hold.

The sessions rolling back in one tick are re-stepped together, in one scratch batch, their
runs aligned to end together: a step of several games costs about what a step of one does on
a CPU, and under a bad network several sessions roll back at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from model.simulation import Simulation
from server import protocol
from server.sessions import FrameRecord
from server.tick import SessionPlan, SteppedFrames, TickFailures

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """One session's part of a tick's rollbacks."""

    plan: SessionPlan  # its part of the tick: the frame about to be stepped
    records: list[FrameRecord]  # its history records, from the first frame re-made
    carry: dict[int, dict | None]  # port -> its latest real input seen in the re-made frames
    game: int | None = None  # its game in the scratch simulation, once added
    still_missing: list[int] = field(default_factory=list)  # of the frame re-made this round


class Rollbacks:
    def __init__(self, live: Simulation, new_simulation: Callable[[], Simulation]):
        """`live`: the batch the re-made states go back into; `new_simulation` makes the
        scratch batch they are re-made in."""
        self.live = live
        self.new_simulation = new_simulation
        self.scratch = new_simulation()

    def run(self, plans: list[SessionPlan], failures: TickFailures) -> dict[str, list[bytes]]:
        """Roll back every session in `plans` from its `rollback_from` frame, before the tick
        steps it; returns each session's corrected frames' messages, by session id. Also fixes
        up each plan's `controls` for its `missing` ports, which were chosen before the late
        input was known.

        All together first; if that raises, each session alone (a fresh scratch simulation
        each), and a session whose rollback fails alone is added to `failures`."""
        if not plans:
            return {}
        try:
            return self._together(plans)
        except Exception:
            log.exception("a tick's rollbacks failed; rolling back each session alone")
        corrections: dict[str, list[bytes]] = {}
        for plan in plans:
            self.scratch = self.new_simulation()  # whatever the failure left in it
            try:
                corrections |= self._together([plan])
            except Exception as e:  # noqa: BLE001 - ends only this session
                failures.add(plan.session, "rollback", e)
        self.scratch = self.new_simulation()
        return corrections

    def _together(self, plans: list[SessionPlan]) -> dict[str, list[bytes]]:
        corrections: dict[str, list[bytes]] = {plan.session.id: [] for plan in plans}
        runs = [run for plan in plans if (run := _start(plan)) is not None]
        if not runs:
            return corrections
        longest = max(len(run.records) for run in runs)
        for left in range(longest, 0, -1):  # rounds left, this one included
            active = [run for run in runs if len(run.records) >= left]
            self._remake([(run, run.records[-left]) for run in active], corrections)
        for run in runs:
            self._put_back(run)
        return corrections

    def _remake(self, remaking: list[tuple[_Run, FrameRecord]], corrections: dict) -> None:
        """One frame of each run re-made, in one step of the scratch batch, and its corrected
        frame's message added to `corrections`."""
        scratch = self.scratch
        controls = {}
        for run, record in remaking:
            if run.game is None:
                run.game = scratch.add_from_snapshot(run.records[0].before)
            controls[run.game] = self._inputs(run, record)
        results = scratch.step(controls)
        # As in a tick: the frames off the device once, for the recordings and the wire.
        recording = any(run.plan.session.recorder is not None for run, _ in remaking)
        stepped = SteppedFrames(scratch.batch_frame, record=recording)
        for run, record in remaking:
            session, result = run.plan.session, results[run.game]
            message = stepped.message(result.row, result.events, run.still_missing)
            if session.recorder is not None:
                session.recorder.correct(record.frame, stepped.recording_row(result.row))
            message["corrected"] = True
            corrections[session.id].append(protocol.encode(message))

    def _inputs(self, run: _Run, record: FrameRecord) -> dict[str, float | int]:
        """The controller columns `record`'s frame is re-made with, which the record keeps:
        the inputs that have arrived since, a port still missing reusing its latest real
        one. The state before the frame is kept again if a port is still missing."""
        columns = dict(record.used)
        still_missing = []
        for port in run.plan.session.human_ports:
            value = record.real.get(port)
            if value is None:
                still_missing.append(port)
                value = run.carry[port]
            else:
                run.carry[port] = value
            if value is not None:
                columns.update({f"p{port}_{k}": v for k, v in value.items()})
        record.before = self.scratch.snapshot(run.game) if still_missing else None
        record.used = columns
        record.late.clear()
        run.still_missing = still_missing
        return columns

    def _put_back(self, run: _Run) -> None:
        """The run's re-made state into the live batch, and its newer inputs into the frame
        about to be stepped."""
        session = run.plan.session
        self.live.restore(session.game_id, self.scratch.snapshot(run.game))
        self.scratch.remove_game(run.game)
        for port, value in run.carry.items():
            if value is None:
                continue
            session.last_input[port] = value
            if port in run.plan.missing:  # the frame about to be stepped reuses the newer input
                run.plan.controls.update({f"p{port}_{k}": v for k, v in value.items()})
        session.rollbacks += 1
        session.rolled_back_frames += len(run.records)


def _start(plan: SessionPlan) -> _Run | None:
    """The session's run: its records from `plan.rollback_from` to its last frame, or None
    if they cannot be re-made."""
    session, start = plan.session, plan.rollback_from
    records = [session.history.get(f) for f in range(start, session.frame + 1)]
    # The device thread drops the frames leaving the window while the loop takes inputs, so
    # the first frames may be gone (their late inputs are counted lost): the rest is still
    # re-made, from the first frame that kept its state before.
    while records and (records[0] is None or records[0].before is None):
        records.pop(0)
    if not records or any(r is None for r in records):
        log.warning("session %s: cannot roll back to frame %d", session.id, start)
        return None
    return _Run(plan, records, carry={port: None for port in session.human_ports})
