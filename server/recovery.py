"""What a server stopped mid-game (killed, crashed, the machine lost) leaves in its recordings
folder, finished at the next start; and matches looked up after the server that ran them has
gone.

At start-up, before any new game is recorded, `finish_interrupted_recordings` walks the
recordings folder once:
- a game with parts and no `game.parquet`: its parts merged into `game.parquet` (`status:
  interrupted`, with the events and substitutions the parts carry) and given a manifest row;
- a game whose `game.parquet` was written but not what follows it (parts removed, manifest
  row): those done;
- a match queued or running (`info.json` is written when it is submitted): `status: lost`; a
  session killed before its first part: `status: interrupted`, no frames;
- a temporary file of an unfinished atomic write: removed.

`match_from_recording` answers `GET /v1/matches/ID` for a match this server no longer holds:
`done` with its summary, `failed`, or `lost`, instead of 404.

One recordings folder belongs to one server: a second server starting on the same folder
would take the first one's games in progress for interrupted ones.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from core.atomic_file import TMP_SUFFIX
from core.manifest import load_manifest
from server.recorder import GAME_FILE, INFO_FILE, FinishGame, add_to_manifest, write_info

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
LOST = "lost"
LOST_MATCH = (
    "the server stopped (a restart or a crash) before this match finished; its frames are "
    "lost: submit it again"
)


def finish_interrupted_recordings(folder: Path) -> Counter:
    """Finish every game the last run left unfinished (module docstring); returns how many of
    each outcome. A folder that cannot be finished is logged and left as it is."""
    outcomes: Counter = Counter()
    if not folder.is_dir():
        return outcomes
    manifest = load_manifest(folder)
    for game in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            outcome = _finish(game, manifest)
        except Exception as e:  # noqa: BLE001 - one damaged folder must not stop the server
            log.warning(
                "recording %s: cannot be finished (%s: %s); left as it is",
                game.name,
                type(e).__name__,
                e,
            )
            outcome = "damaged"
        if outcome is not None:
            outcomes[outcome] += 1
    if outcomes:
        log.info(
            "recordings the last run left unfinished, in %s: %s",
            folder,
            ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items())),
        )
    return outcomes


def _finish(game: Path, manifest: dict[str, dict]) -> str | None:
    for stale in game.rglob(f"*{TMP_SUFFIX}"):  # an atomic write cut short
        stale.unlink(missing_ok=True)
    info = read_info(game)
    parts = sorted((game / "parts").glob("frames-*.parquet"))
    if (game / GAME_FILE).exists():
        # Killed while finishing: the game file is whole (written atomically, last but one),
        # the parts' removal and the manifest row may not have happened.
        shutil.rmtree(game / "parts", ignore_errors=True)
        if f"{game.name}/{GAME_FILE}" in manifest:
            return None
        table = pq.read_table(game / GAME_FILE)
        recorded = (table.schema.metadata or {}).get(b"recording")
        add_to_manifest(game, table, json.loads(recorded) if recorded else info or {})
        return "manifest rows added"
    if info is None and not parts:
        return None  # not a recording
    info = info or {"id": game.name}
    if parts:
        events, substituted, frames = [], [], 0
        for part in parts:
            metadata = pq.read_metadata(part)
            frames += metadata.num_rows
            recorded = json.loads((metadata.metadata or {}).get(b"recording", b"{}"))
            events += recorded.get("events", [])
            substituted += recorded.get("substituted", [])
        FinishGame(
            game,
            {
                **info,
                "status": INTERRUPTED,
                "reason": "the server stopped before the game ended: the frames written by then",
                "frames": frames,
                "events": events,
                "substituted": substituted,
            },
        )()
        return "merged"
    if info.get("status") in ("complete", "failed", LOST, INTERRUPTED):
        return None
    if info.get("kind") == "match":
        write_info(game, {**info, "status": LOST, "error": LOST_MATCH})
        return "matches lost"
    write_info(game, {**info, "status": INTERRUPTED, "frames": 0})
    return "sessions without frames"


def read_info(game: Path) -> dict | None:
    """A recording's `info.json`, or None if it has none or it cannot be read."""
    try:
        info = json.loads((game / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def match_from_recording(folder: Path | None, match_id: str) -> dict | None:
    """What the recordings folder knows of a match this server does not hold (finished and
    forgotten, or from an earlier run), as `GET /v1/matches/ID` answers it; None if nothing."""
    if folder is None or str(folder) == ".":
        return None
    info = read_info(Path(folder) / match_id)
    if info is None or info.get("kind") != "match":
        return None
    answer = {"match_id": match_id, "request": info.get("request"), "from_recording": True}
    status = info.get("status")
    if status == "complete":
        summary = info.get("summary") or {}
        return answer | {
            "status": "done",
            "frames_played": summary.get("frames", max(0, info.get("frames", 1) - 1)),
            "summary": summary,
            "events": info.get("events", []),
        }
    if status == "failed":
        return answer | {"status": "failed", "frames_played": 0, "error": info.get("error")}
    # queued or running when its server stopped (or marked lost at this server's start)
    return answer | {"status": LOST, "frames_played": 0, "error": LOST_MATCH}
