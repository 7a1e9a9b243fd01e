"""The game server's REST API as the client calls it: JSON requests, creating and deleting
sessions, and the server's http and websocket URLs (docs/PROTOCOL.md).

`ServerError` is the one error every network failure of the client becomes: its text names the
request and what went wrong, and `playmodel play` prints it.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServerError(RuntimeError):
    """The server could not be reached or refused a request; the text says which and why."""


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    # A proxy set in the environment must not swallow calls to our own machine.
    handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK else []
    return urllib.request.build_opener(*handlers)


def http_json(
    method: str,
    url: str,
    body: dict | None = None,
    api_key: str | None = None,
    timeout: float = 10.0,
    session_token: str | None = None,
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body). Raises ServerError when the server
    cannot be reached or answers with an error status (its message included). `api_key`: the
    server's key, if it has one; `session_token`: the session's own token, which deleting or
    resetting a session needs."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("X-API-Key", api_key)
    if session_token:
        request.add_header("X-Session-Token", session_token)
    try:
        with _opener(url).open(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise ServerError(f"{method} {url} failed: HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise ServerError(f"{method} {url} failed: {getattr(e, 'reason', e)}") from None


def healthy(base_url: str, timeout: float = 1.0) -> bool:
    try:
        status, body = http_json("GET", f"{base_url}/healthz", timeout=timeout)
    except ServerError:
        return False
    return status == 200 and isinstance(body, dict) and body.get("status") == "ok"


@dataclass
class Session:
    """A session on a server, as `POST /v1/sessions` describes it."""

    session_id: str
    tokens: dict[str, str]
    play_url: str
    watch_url: str
    input_delay: int
    stage: int
    characters: list[int]
    session_token: str | None = None  # the creator's: deleting or resetting the session needs it

    @classmethod
    def from_json(cls, body: dict) -> Session:
        try:
            return cls(
                session_id=body["session_id"],
                tokens={str(k): v for k, v in body["tokens"].items()},
                play_url=body["play_url"],
                watch_url=body["watch_url"],
                input_delay=int(body.get("input_delay", 2)),
                stage=int(body.get("stage", 0)),
                characters=[int(c) for c in body.get("characters", [])],
                session_token=body.get("session_token"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ServerError(f"unexpected answer to POST /v1/sessions: {body!r} ({e})") from None


def create_session(base_url: str, request: dict, api_key: str | None = None) -> Session:
    _, body = http_json("POST", f"{base_url}/v1/sessions", request, api_key=api_key)
    return Session.from_json(body)


def delete_session(base_url: str, session: Session, api_key: str | None = None) -> None:
    try:
        http_json(
            "DELETE",
            f"{base_url}/v1/sessions/{session.session_id}",
            api_key=api_key,
            timeout=2,
            session_token=session.session_token,
        )
    except ServerError as e:
        log.info("could not delete session %s: %s", session.session_id, e)


def http_base(url: str) -> str:
    """http://host:port of any server URL (http, https, ws or wss, with or without a path)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def ws_url(url: str, tokens: list[str] = ()) -> str:
    """A websocket URL with the `token` query parameters added (one per port)."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = urllib.parse.parse_qsl(parts.query) + [("token", t) for t in tokens]
    return urllib.parse.urlunsplit(
        (scheme, parts.netloc, parts.path, urllib.parse.urlencode(query), "")
    )
