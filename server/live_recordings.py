"""The live sessions' recordings, and the one thread every recording's files are written on.

Each game of a session is recorded from its start frame: a recorder (server/recorder.py, which
also describes the files) is started with the session and at each reset, fed each frame the
game makes on the device thread, and finished when the game ends, is reset or the session
closes. The file writes that fall due are queued on the device thread and handed by the loop
(`flush`) to the writer thread, which writes them in order at a lower priority than the tick;
the matches hand theirs to `submit`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.events import Event
from server.column_groups import GroupedRow, Layout
from server.recorder import GameRecorder
from server.sessions import Session

log = logging.getLogger(__name__)


class LiveRecordings:
    def __init__(self, folder: Path | None, tick_rate: float, model_name: str):
        """`folder`: where recordings go; None or "." records nothing (matches' writes are
        still run)."""
        self.folder = Path(folder) if folder and str(folder) != "." else None
        self.tick_rate = tick_rate
        # What every recording says of the server; the app adds the checkpoint and its hash.
        self.info: dict = {"model": model_name}
        self.writer = ThreadPoolExecutor(  # files, in order
            1, thread_name_prefix="recorder", initializer=_lower_this_threads_priority
        )
        self._started = 0  # recordings started, to stagger their parts
        self._writes: list[Callable[[], None]] = []  # due, queued by the device thread

    def start(self, session: Session) -> None:
        """A recorder for the session's next game, holding its start frame."""
        if self.folder is None:
            return
        game = session.games_recorded
        session.games_recorded += 1
        info = {
            "kind": "session",
            "id": f"{session.id}-{game}",
            "session_id": session.id,
            "game": game,
            "created": time.time(),
            **self.info,
            "setup": session.setup_info,
            "input_delay": session.input_delay,
            "tick_rate": self.tick_rate,
            "rollback_frames": session.rollback_window,
            "inputs": "the controller columns (p1_*, p2_*) are the inputs each frame was made "
            "with; 'substituted' lists the [frame, port] whose input had not arrived",
        }
        hold_back = session.rollback_window + 1
        # Parts of sessions started together fall due on different ticks (17 is prime to
        # PART_FRAMES: up to 60 sessions, each its own tick of the second).
        stagger = 17 * self._started
        self._started += 1
        session.recorder = GameRecorder(self.folder / info["id"], info, hold_back, stagger)
        if session.start_row is None:  # once per session: every game starts from this frame
            start = session.start_snapshot.tensors
            frame = {
                k[len("frame.") :]: v.cpu().numpy()
                for k, v in start.items()
                if k.startswith("frame.")
            }
            layout = Layout.of(frame, leading=0)
            session.start_row = (int(frame["frame"]), GroupedRow(layout, layout.pack(frame)))
        session.recorder.add(*session.start_row)

    def add(
        self,
        session: Session,
        frame: int,
        row: GroupedRow,
        events: Sequence[Event],
        missing: Sequence[int],
        over: bool,
    ) -> None:
        """On the device thread: a frame the session's game made (`missing`: the ports whose
        input it was made without). The game's recording is finished when the game is over."""
        if session.recorder is None:
            return
        session.recorder.add(frame, row, events, missing)
        if over or any(e.type == "game_end" for e in events):
            self.finish(session)
        else:
            self._writes += session.recorder.take_writes()

    def finish(self, session: Session) -> None:
        recorder, session.recorder = session.recorder, None  # never retried if it raises
        if recorder is not None:
            self._writes += recorder.take_writes(final=True)

    def finish_or_log(self, session: Session) -> None:
        """For a session that is over anyway (closed, shutdown): a failure is only logged."""
        try:
            self.finish(session)
        except Exception:
            log.exception("session %s: its recording could not be finished", session.id)

    def flush(self) -> None:
        """Hand the file writes queued by the device thread to the writer thread."""
        writes, self._writes = self._writes, []
        for write in writes:
            self.submit(write)

    def submit(self, write: Callable[[], None]) -> None:
        """Run `write` on the writer thread, after the writes handed to it before; a failure
        is logged."""
        self.writer.submit(_logged(write))

    def finish_all(self, sessions: Iterable[Session]) -> None:
        """At shutdown: every recording written out in full, then the writer stopped."""
        for session in sessions:
            self.finish_or_log(session)
        self.flush()
        self.writer.shutdown(wait=True)


def _logged(write: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            write()
        except Exception:
            log.exception("a recording write failed")

    return run


def _lower_this_threads_priority() -> None:
    """The recordings' writer thread runs at a lower priority (nice +10) than the tick's: its
    work can wait, a tick cannot. Linux sets a nice value per thread; elsewhere, nothing."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
