"""Live play and watching: the play and watch websockets (their tokens are checked by
server/live_socket.py), the browser spectator page and the character data it draws with. No
API key: a spectator's browser has none (docs/SERVER.md, Security)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from fastapi import APIRouter, WebSocket
from fastapi.responses import HTMLResponse, Response

from server.api.deps import SessionDep, SocketsDep

router = APIRouter(tags=["live"])

STATIC = Path(__file__).resolve().parents[2] / "static"
WATCH_PAGE = STATIC / "watch.html"
CHARACTERS_JSON = Path(__file__).resolve().parents[3] / "assets" / "characters.json"


@router.websocket("/v1/sessions/{session_id}/play")
async def play(websocket: WebSocket, session_id: str, sockets: SocketsDep) -> None:
    await sockets.play(websocket, session_id)


@router.websocket("/v1/sessions/{session_id}/watch")
async def watch(websocket: WebSocket, session_id: str, sockets: SocketsDep) -> None:
    await sockets.watch(websocket, session_id)


@router.get("/watch/{session_id}", response_class=HTMLResponse)
async def watch_page(session: SessionDep) -> HTMLResponse:
    """The browser spectator page: static HTML drawing the watch websocket on a canvas."""
    return HTMLResponse(WATCH_PAGE.read_text(encoding="utf-8"))


@router.get("/assets/characters.json")
async def characters() -> Response:
    """Public data (libmelee's tables), like the page itself: no key."""
    return Response(
        character_data(),
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@functools.cache
def character_data() -> bytes:
    """What the spectator page draws characters with, as the pygame client does
    (client/figures.py): assets/characters.json's sizes and hitboxes, compact."""
    table = json.loads(CHARACTERS_JSON.read_text(encoding="utf-8"))
    subset = {key: table[key] for key in ("source", "characters", "hitboxes")}
    return json.dumps(subset, separators=(",", ":")).encode()
