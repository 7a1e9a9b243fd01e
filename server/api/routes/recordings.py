"""Recordings as parquet downloads: a session's game (also after it has ended) or a match."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from server.api.deps import RecordingsDep, SessionsDep, require_api_key
from server.recordings import PARQUET, RECORDING_ID, Recordings

router = APIRouter(tags=["recordings"], dependencies=[Depends(require_api_key)])


@router.get("/v1/sessions/{session_id}/recording")
async def session_recording(
    session_id: str,
    sessions: SessionsDep,
    recordings: RecordingsDep,
    game: int | None = Query(None, ge=0),
) -> Response:
    """A session's recording as parquet: its current game (or `game` N, counting resets);
    also after the session has ended."""
    name = await asyncio.to_thread(
        recordings.session_game, session_id, sessions.get(session_id), game
    )
    return await parquet_download(recordings, name)


@router.get("/v1/matches/{match_id}/recording")
async def match_recording(match_id: str, recordings: RecordingsDep) -> Response:
    return await parquet_download(recordings, match_id)


async def parquet_download(recordings: Recordings, recording_id: str) -> Response:
    body = await asyncio.to_thread(recordings.parquet, recording_id)
    if body is None:
        known = RECORDING_ID.fullmatch(recording_id)
        raise HTTPException(404, f"no recording {recording_id!r}{' (yet)' if known else ''}")
    return Response(
        body,
        media_type=PARQUET,
        headers={"Content-Disposition": f'attachment; filename="{recording_id}.parquet"'},
    )
