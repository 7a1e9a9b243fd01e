"""What the server trusts a request with: the API key a server reachable from other machines
requires, a session's own token for changing it, and the size of request bodies.

- Bound to a loopback address (the default, 127.0.0.1) the server needs no key: only this
  machine can reach it. Bound to anything else it needs one (`X-API-Key` on every REST call
  under `/v1`); if `PLAYMODEL_API_KEY` is not set, `with_api_key` makes one up and
  `playmodel serve` prints it.
- Every session has a `session_token`, handed out once to whoever created it: resetting or
  deleting the session needs it (`X-Session-Token`); the API key is shared by every client of a
  server, so it cannot tell one client's session from another's.
- `BodySizeLimit` refuses a request body over the limit with 413 as it streams in, before the
  application reads and decodes it.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import traceback

from fastapi import HTTPException
from pydantic import SecretStr

from server.settings import ServerSettings

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
SESSION_TOKEN_HEADER = "X-Session-Token"
MATCH_TOKEN_HEADER = "X-Match-Token"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1 or localhost.
    Anything else, including 0.0.0.0 and :: (every interface), is reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def with_api_key(settings: ServerSettings) -> tuple[ServerSettings, str | None]:
    """The settings to serve with, and the key made up for them (None if none was needed):
    a server reachable from other machines never runs without a key."""
    if settings.api_key is not None or is_loopback(settings.host):
        return settings, None
    key = secrets.token_urlsafe(24)  # 192 bits, safe in a header and a shell
    # model_copy does not validate: the key goes in as the SecretStr a validated one would be.
    return settings.model_copy(update={"api_key": SecretStr(key)}), key


def check_api_key(settings: ServerSettings, given: str | None) -> None:
    """Raise 401 unless the server has no key or `given` is it (compared in constant time)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header")


def check_session_token(session, given: str | None, action: str, ports_too: bool) -> None:
    """Raise 401/403 unless `given` is the session's own token (or, with `ports_too`, one of
    its port tokens: a player may reset its game over its websocket anyway)."""
    tokens = [session.owner_token, *(session.tokens.values() if ports_too else ())]
    _check_owner_token(given, tokens, f"session {session.id!r}", action)


def check_match_token(job, given: str | None, action: str) -> None:
    """Raise 401/403 unless `given` is the match's own token (`match_token`)."""
    _check_owner_token(given, [job.owner_token], f"match {job.id!r}", action)


_OWNER_TOKENS = {  # what a token belongs to: its header, and where its owner was given it
    "session": (SESSION_TOKEN_HEADER, "session_token in the answer to POST /v1/sessions"),
    "match": (MATCH_TOKEN_HEADER, "match_token in the answer to POST /v1/matches"),
}


def _check_owner_token(given: str | None, tokens: list[str], what: str, action: str) -> None:
    """401 without a token, 403 unless it is one of `tokens`: every token is compared, in
    constant time, whatever matched before."""
    kind = what.split()[0]
    header, handed_out = _OWNER_TOKENS[kind]
    if not given:
        raise HTTPException(
            401, f"{action} needs the {kind}'s token in the {header} header ({handed_out})"
        )
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given.encode(), token.encode())
    if not matched:
        raise HTTPException(403, f"{header} is not a token of {what}: {action} refused")


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: a request whose body is over `max_bytes` gets 413 without being read.

    A declared `Content-Length` over the limit is refused before a byte of the body is read;
    a body without one (chunked) is counted as it arrives and refused at the first chunk past
    the limit, so the server never holds more than the limit of it. (FastAPI reads a JSON body
    whole before validating it: a 256 MB body cost a gigabyte and froze every session.)"""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(send, 400, "the Content-Length header is not a number")
                    return
                if declared > self.max_bytes:
                    await self._refuse(send, 413, self._message(declared))
                    return
        received = 0
        exceeded: BodyTooLarge | None = None
        started = False

        async def counting_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = BodyTooLarge()
                    raise exceeded
            return message

        async def watching_send(message):
            nonlocal started
            if exceeded:  # FastAPI turns the error into its own 400; the 413 is sent instead
                return
            started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):  # answered below
            await self.app(scope, counting_receive, watching_send)
        if exceeded is not None:
            # The framework wraps the error in its own (`raise ... from`), and that chain's
            # frames hold the chunks it had read, up to the limit: cleared here, else 21 MB
            # stayed in use after the request until a later one pushed the chain out.
            traceback.clear_frames(exceeded.__traceback__)
            exceeded.__traceback__ = None
            if not started:
                await self._refuse(send, 413, self._message(None))

    def _message(self, declared: int | None) -> str:
        size = "the request body" if declared is None else f"a request body of {declared:,} bytes"
        return (
            f"{size} is over this server's limit of {self.max_bytes:,} bytes "
            "(PLAYMODEL_MAX_BODY_BYTES; uploads: PLAYMODEL_MAX_UPLOAD_BYTES)"
        )

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is not wanted: the client should not send it.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
