"""Recordings read back for the API: a session's or a match's game as parquet, from the
server's recordings folder (written by server/recorder.py; games a stopped server left are
finished by server/recovery.py). Reads files: callers run these off the event loop."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow.parquet as pq

from server.recorder import read_recording
from server.sessions import Session

# A recording's name: a session's id and its game number, or a match's id. Anything else is
# no recording, and never becomes a path.
RECORDING_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PARQUET = "application/vnd.apache.parquet"


class Recordings:
    """The recordings of one server; `folder` None or "." when it records nothing."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder and str(folder) != "." else None

    def parquet(self, recording_id: str) -> bytes | None:
        """A recording as a parquet file (zstd): the finished game, or the part recorded so
        far of one still playing; None if there is none (yet)."""
        if self.folder is None or not RECORDING_ID.fullmatch(recording_id):
            return None
        table = read_recording(self.folder / recording_id)
        if table is None:
            return None
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue()

    def session_game(self, session_id: str, session: Session | None, game: int | None) -> str:
        """The recording of a session's game `game` (counting resets); by default its current
        game, or after the session has ended, its last one."""
        if game is None:
            if session is not None:
                game = max(0, session.games_recorded - 1)
            else:
                games = [] if self.folder is None else self.folder.glob(f"{session_id}-*")
                game = max((int(p.name.rsplit("-", 1)[1]) for p in games), default=0)
        return f"{session_id}-{game}"
