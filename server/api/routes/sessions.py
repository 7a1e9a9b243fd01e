"""Live sessions over REST: create, list, get, reset, delete (the play and watch websockets
are in live.py)."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from server.api.deps import (
    SessionDep,
    SessionsDep,
    SessionToDelete,
    SessionToReset,
    require_api_key,
)
from server.api.schemas import SessionCreated, SessionInfo
from server.engine import ServerFull
from server.requests import SessionRequest
from server.sessions import TooManyResets

router = APIRouter(
    prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(require_api_key)]
)
RETRY_FULL_S = "30"


@router.post("", status_code=201, response_model_exclude_unset=True)
async def create_session(
    body: SessionRequest, request: Request, sessions: SessionsDep
) -> SessionCreated:
    """{} is enough: a standard start, default everything."""
    try:
        session = await sessions.create(body)
    except ServerFull as e:
        raise HTTPException(503, str(e), headers={"Retry-After": RETRY_FULL_S}) from None
    base = str(request.base_url).rstrip("/")
    ws_base = "ws" + base[len("http") :] if base.startswith("http") else base
    return SessionCreated.model_validate(
        {
            **session.describe(),
            "tokens": {str(p): t for p, t in session.tokens.items()},
            "session_token": session.owner_token,
            "play_url": f"{ws_base}/v1/sessions/{session.id}/play",
            "watch_url": f"{ws_base}/v1/sessions/{session.id}/watch",
            "spectator_page": f"{base}/watch/{session.id}",
        }
    )


@router.get("", response_model_exclude_unset=True)
async def list_sessions(sessions: SessionsDep) -> list[SessionInfo]:
    return [SessionInfo.model_validate(s.describe()) for s in sessions.all()]


@router.get("/{session_id}", response_model_exclude_unset=True)
async def get_session(session: SessionDep) -> SessionInfo:
    return SessionInfo.model_validate(session.describe())


@router.delete("/{session_id}", status_code=204)
async def delete_session(sessions: SessionsDep, session: SessionToDelete) -> Response:
    sessions.delete(session)
    return Response(status_code=204)


@router.post("/{session_id}/reset", response_model_exclude_unset=True)
async def reset_session(sessions: SessionsDep, session: SessionToReset) -> SessionInfo:
    # The token is checked first (a dependency): a refused caller does not use up its resets.
    try:
        sessions.reset(session)
    except TooManyResets as e:
        retry = str(math.ceil(e.retry_after))
        raise HTTPException(429, str(e), headers={"Retry-After": retry}) from None
    return SessionInfo.model_validate(session.describe())
