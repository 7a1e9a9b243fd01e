"""A tick's work as it travels between the event loop and the device thread.

The loop plans a tick (`TickPlan`: each running session's inputs for its next frame, the
sessions that left, the resets asked for); the device thread makes it
(`live_batch.LiveBatch.tick`) and answers a `TickResult`: each session's frame, ready for the
wire, and the sessions whose own work failed. The frames a step made are taken off the device
once (`SteppedFrames`), and both the recordings and the wire read them from there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from core.events import Event
from core.wire_frame import frame_message
from model.frames import Frames
from server.column_groups import BatchCopy, GroupedRow
from server.sessions import FrameRecord, Session
from server.wire_frames import batch_columns

log = logging.getLogger(__name__)

FAILURE_DETAIL_CHARS = 200  # of an exception's text, in the error a failed session's clients get


@dataclass
class SessionPlan:
    """One running session's part of a tick: what its next frame is made with."""

    session: Session
    generation: int  # the session's when planned: a reset since voids the frame made
    controls: dict[str, float | int]  # the human ports' columns (a rollback may fix them up)
    missing: list[int]  # human ports whose input had not arrived: their last one is reused
    record: FrameRecord  # what the frame is made with, kept for the rollback window
    rollback_from: int | None = None  # the earliest frame a late input arrived for


@dataclass
class TickPlan:
    """What the loop hands the device thread for one tick."""

    stepping: list[SessionPlan]  # the running sessions, each to make its next frame
    retired: list[Session]  # closed or failed since the last tick: their games leave
    resets: list[Session]  # back to their start before this tick's step

    def is_empty(self) -> bool:
        return not (self.stepping or self.retired or self.resets)


@dataclass
class SessionFrame:
    """One session's frame made by a tick, for the loop to send to its players."""

    session: Session
    generation: int  # as planned: the loop drops the frame if the session was reset since
    frame: int  # the frame's number
    message: bytes  # the encoded `frame` message
    corrected: list[bytes]  # the frames a rollback re-made, sent before this one
    events: list[Event]
    over: bool  # the game ended with this frame


@dataclass
class SessionFailure:
    session: Session
    reason: str  # what failed and why, as the session's clients are told


class TickFailures:
    """The sessions whose own work failed in a tick, with why. A failed session drops out of
    the rest of the tick's work; the loop ends it (`Engine.fail_session`) when the tick is
    over, and the other sessions get their frame."""

    def __init__(self) -> None:
        self._by_id: dict[str, SessionFailure] = {}

    def add(self, session: Session, what: str, error: Exception | str) -> None:
        """`session`'s own `what` raised `error` (or, for a module policy that caught its own
        failure, `error` says what went wrong). The first failure of a session is kept."""
        if session.id in self._by_id:
            return
        if isinstance(error, str):  # already bounded (policy_modules.GuardedPolicy)
            log.error("session %s: its %s failed: %s", session.id, what, error)
            detail = error
        else:
            log.error("session %s: its %s failed", session.id, what, exc_info=error)
            detail = f"{type(error).__name__}: {error}"[:FAILURE_DETAIL_CHARS]
        self._by_id[session.id] = SessionFailure(
            session, f"this session's {what} failed ({detail})"
        )

    def __contains__(self, session: Session) -> bool:
        return session.id in self._by_id

    def __iter__(self) -> Iterator[SessionFailure]:
        return iter(list(self._by_id.values()))

    def reason(self, session: Session) -> str:
        return self._by_id[session.id].reason


@dataclass
class TickResult:
    """What the device thread answers for a tick."""

    frames: list[SessionFrame]
    failures: TickFailures


class SteppedFrames:
    """The frames one step of a batch made, taken off the device once, for the recordings and
    the wire alike.

    When any game of the batch is recorded, a numpy copy (`BatchCopy`): the simulation later
    writes into its own tensors in place (a restore, the next step) while a recording keeps
    rows of it. The wire's columns (Python lists, `batch_columns`) are then read from that
    copy; with nothing to record, from the batch itself."""

    def __init__(self, batch: Frames, record: bool):
        self.copy = BatchCopy(batch) if record else None
        self.wire = batch_columns(batch if self.copy is None else self.copy.columns)

    def frame(self, row: int) -> int:
        """The frame number of the game in `row`."""
        return int(self.wire["frame"][row])

    def recording_row(self, row: int) -> GroupedRow:
        """The game in `row`'s frame, for its recording."""
        assert self.copy is not None, "frames to record are taken with record=True"
        return self.copy.row(row)

    def message(self, row: int, events: Sequence[Event], missing: Sequence[int]) -> dict:
        """The game in `row`'s frame as a `frame` message, not yet encoded."""
        return frame_message(self.wire, row, events, missing)
