"""A small synchronous test client for the real server on loopback."""

from __future__ import annotations

import httpx
from websockets.sync.client import ClientConnection, connect

from server import protocol as P


def create_session(base_url: str, **body) -> dict:
    response = httpx.post(f"{base_url}/v1/sessions", json=body, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()


def delete_session(base_url: str, session: dict) -> None:
    """Delete a session as its creator does: with its own token."""
    headers = {"X-Session-Token": session["session_token"]}
    response = httpx.delete(f"{base_url}/v1/sessions/{session['session_id']}", headers=headers)
    assert response.status_code in (204, 404), response.text


def open_play(session: dict, ports=(1, 2), hello: bool = True) -> ClientConnection:
    query = "&".join(f"token={session['tokens'][str(p)]}" for p in ports)
    ws = connect(f"{session['play_url']}?{query}", open_timeout=30).__enter__()
    if hello:
        ws.send(P.encode(P.Hello(role="player")))
    return ws


def open_watch(session: dict) -> ClientConnection:
    ws = connect(session["watch_url"], open_timeout=30).__enter__()
    ws.send(P.encode(P.Hello(role="spectator")))
    return ws


def receive(ws: ClientConnection, timeout: float = 30.0):
    return P.decode_server(ws.recv(timeout=timeout))


def receive_until(ws: ClientConnection, kind: type, timeout: float = 30.0):
    """Messages until one of `kind`; returns (that message, the ones before it)."""
    skipped = []
    while True:
        message = receive(ws, timeout)
        if isinstance(message, kind):
            return message, skipped
        skipped.append(message)
