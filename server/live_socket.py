"""The play and watch websockets: authentication, the hello handshake, inputs in, frames out.

Each connection runs three tasks: a receiver (validates every client message), a sender
(drains the connection's bounded queue), and a watcher for the server ending the connection
(session closed, client too slow, shutdown). Whatever a client sends, the worst outcome is an
error message or the close of that one connection with an RFC 6455 code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from core import melee_ids
from server import protocol
from server.engine import Engine
from server.sessions import (
    SPECTATOR_QUEUE_MESSAGES,
    Connection,
    Session,
    TooManyResets,
    controller_columns,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
FLUSH_ON_CLOSE_S = 1.0
BURST_SECONDS = 0.5  # the rate limit lets a connection catch up on half a second of messages


class RateLimit:
    """A token bucket: `rate` messages per second, bursts of `rate * BURST_SECONDS`."""

    def __init__(self, rate: float):
        self.rate, self.capacity = rate, max(1.0, rate * BURST_SECONDS)
        self.tokens, self.stamp = self.capacity, time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _tokens(websocket: WebSocket) -> list[str]:
    values = websocket.query_params.getlist("token")
    return [t for value in values for t in value.split(",") if t]


async def _refuse(websocket: WebSocket, code: str, message: str, close_code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_bytes(protocol.encode(protocol.Error(code=code, message=message)))
        await websocket.close(close_code, reason=message[:120])


class LiveSockets:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.connections: set[Connection] = set()

    async def _accept(self, websocket: WebSocket, session_id: str) -> Session | None:
        """Accept the websocket; None (after telling the client why) if there is no session."""
        await websocket.accept()
        session = self.engine.sessions.get(session_id)
        if session is None:
            await _refuse(
                websocket,
                "not_found",
                f"no session {session_id!r}",
                protocol.CLOSE_POLICY_VIOLATION,
            )
        return session

    async def play(self, websocket: WebSocket, session_id: str) -> None:
        session = await self._accept(websocket, session_id)
        if session is None:
            return
        tokens = _tokens(websocket)
        if not tokens:
            await _refuse(
                websocket,
                "unauthorized",
                "missing token: connect with ?token=PORT_TOKEN (one per port you play)",
                protocol.CLOSE_POLICY_VIOLATION,
            )
            return
        ports = session.ports_for(tokens)
        if ports is None:
            log.warning("session %s: play connection with a wrong token refused", session.id)
            await _refuse(
                websocket,
                "unauthorized",
                "wrong token for this session",
                protocol.CLOSE_POLICY_VIOLATION,
            )
            return
        if not await self._hello(websocket, session, "player"):
            return
        for port in ports:  # a reconnecting player replaces its stale connection
            old = session.players.get(port)
            if old is not None:
                old.end(
                    protocol.CLOSE_POLICY_VIOLATION, f"port {port} was taken by a new connection"
                )
        connection = Connection(websocket, "player", ports, self.engine.settings.send_queue_frames)
        for port in ports:
            session.players[port] = connection
        was = session.status
        session.update_started()
        log.info("session %s: player connected on ports %s", session.id, list(ports))
        await self._serve(connection, session, was)
        for port in ports:
            if session.players.get(port) is connection:
                del session.players[port]
        session.last_seen = time.monotonic()
        if session.id in self.engine.sessions and session.status != "over":
            self.engine.broadcast_status(session, f"player on ports {list(ports)} left")
        log.info("session %s: player on ports %s left", session.id, list(ports))

    async def watch(self, websocket: WebSocket, session_id: str) -> None:
        session = await self._accept(websocket, session_id)
        if session is None:
            return
        if await self._spectators_full(websocket, session):
            return
        if not await self._hello(websocket, session, "spectator"):
            return
        if await self._spectators_full(websocket, session):  # others came in meanwhile
            return
        connection = Connection(websocket, "spectator", (), SPECTATOR_QUEUE_MESSAGES)
        session.spectators.add(connection)
        await self._serve(connection, session, session.status)
        session.spectators.discard(connection)

    async def _spectators_full(self, websocket: WebSocket, session: Session) -> bool:
        """Refuse a spectator past the session's cap (each costs a frame's send per tick)."""
        limit = self.engine.settings.max_spectators
        if len(session.spectators) < limit:
            return False
        await _refuse(
            websocket,
            "full",
            f"session {session.id} has {len(session.spectators)} spectators, this server's "
            f"limit (PLAYMODEL_MAX_SPECTATORS={limit}); try again later",
            protocol.CLOSE_TRY_AGAIN_LATER,
        )
        return True

    async def _hello(self, websocket: WebSocket, session: Session, role: str) -> bool:
        """Wait for the client's hello and answer with a welcome; False if refused."""
        try:
            message = await asyncio.wait_for(websocket.receive(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await _refuse(
                websocket, "no_hello", "send a hello message first", protocol.CLOSE_PROTOCOL_ERROR
            )
            return False
        if message["type"] == "websocket.disconnect":
            return False
        data = message.get("bytes")
        if data is None:
            await _refuse(
                websocket,
                "text_message",
                "messages are binary msgpack, not text",
                protocol.CLOSE_UNSUPPORTED_DATA,
            )
            return False
        if len(data) > protocol.MAX_CLIENT_MESSAGE_BYTES:  # as for any later message
            await _refuse(
                websocket,
                "too_big",
                f"message of {len(data)} bytes; limit {protocol.MAX_CLIENT_MESSAGE_BYTES}",
                protocol.CLOSE_MESSAGE_TOO_BIG,
            )
            return False
        try:
            hello = protocol.decode_client(data)
        except protocol.ProtocolError as e:
            await _refuse(websocket, e.code, str(e), protocol.CLOSE_PROTOCOL_ERROR)
            return False
        if not isinstance(hello, protocol.Hello):
            await _refuse(
                websocket,
                "no_hello",
                f"the first message must be hello, not {hello.type}",
                protocol.CLOSE_PROTOCOL_ERROR,
            )
            return False
        if hello.version != protocol.PROTOCOL_VERSION:
            await _refuse(
                websocket,
                "version",
                f"protocol version {hello.version} is not supported; this server speaks "
                f"{protocol.PROTOCOL_VERSION}",
                protocol.CLOSE_PROTOCOL_ERROR,
            )
            return False
        if hello.role != role:
            await _refuse(
                websocket,
                "wrong_role",
                f"this endpoint is for {role}s, the hello says {hello.role}",
                protocol.CLOSE_PROTOCOL_ERROR,
            )
            return False
        return True

    def _welcome(self, session: Session, connection: Connection) -> bytes:
        info = session.setup_info
        characters = info["characters"]
        start = session.start_snapshot
        return protocol.encode(
            protocol.Welcome(
                session_id=session.id,
                role=connection.role,
                ports=list(connection.ports),
                stage=info["stage"],
                stage_name=melee_ids.stage_name(info["stage"]),
                characters=characters,
                character_names=[melee_ids.character_name_internal(c) for c in characters],
                input_delay=session.input_delay,
                tick_rate=self.engine.settings.tick_rate,
                frame=session.frame,
                timer_frames=start.setup.timer_frames,
                status=session.status,
            )
        )

    async def _serve(self, connection: Connection, session: Session, status_before: str) -> None:
        websocket = connection.websocket
        self.connections.add(connection)
        connection.offer(self._welcome(session, connection))
        if session.status != status_before:
            self.engine.broadcast_status(session, "all players connected")
        tasks = {
            asyncio.create_task(connection.send_loop()),
            asyncio.create_task(self._receive(connection, session)),
            asyncio.create_task(connection.ended.wait()),
        }
        try:
            _done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if (
                connection.ended.is_set()
                and connection.close_code != protocol.CLOSE_POLICY_VIOLATION
            ):
                # Let the sender deliver what is queued (the bye) before closing.
                deadline = time.monotonic() + FLUSH_ON_CLOSE_S
                while not connection.queue.empty() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.connections.discard(connection)
        if connection.ended.is_set() and websocket.application_state != WebSocketState.DISCONNECTED:
            if connection.close_code == protocol.CLOSE_POLICY_VIOLATION and connection.close_reason:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        websocket.send_bytes(
                            protocol.encode(
                                protocol.Error(code="closed", message=connection.close_reason)
                            )
                        ),
                        0.2,
                    )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    websocket.close(connection.close_code, reason=connection.close_reason[:120]),
                    1.0,
                )

    async def _receive(self, connection: Connection, session: Session) -> None:
        websocket = connection.websocket
        limit = RateLimit(self.engine.settings.messages_per_second)
        metrics = self.engine.metrics
        while True:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            if not limit.allow():
                connection.end(protocol.CLOSE_POLICY_VIOLATION, "too many messages")
                return
            data = message.get("bytes")
            if data is None:
                connection.end(
                    protocol.CLOSE_UNSUPPORTED_DATA, "messages are binary msgpack, not text"
                )
                return
            if len(data) > protocol.MAX_CLIENT_MESSAGE_BYTES:
                connection.end(
                    protocol.CLOSE_MESSAGE_TOO_BIG,
                    f"message of {len(data)} bytes; limit {protocol.MAX_CLIENT_MESSAGE_BYTES}",
                )
                return
            try:
                error = self._handle(protocol.decode_client(data), connection, session)
            except protocol.ProtocolError as e:
                error = (e.code, str(e))
            if error is not None:
                metrics.rejected_messages.inc()
                connection.offer(protocol.encode(protocol.Error(code=error[0], message=error[1])))

    def _handle(self, message, connection: Connection, session: Session) -> tuple[str, str] | None:
        """Apply one valid message; returns (code, text) when it is refused."""
        if isinstance(message, protocol.Input):
            if connection.role != "player" or message.port not in connection.ports:
                return "wrong_port", f"this connection does not play port {message.port}"
            settings = self.engine.settings
            if message.frame > session.frame + settings.max_input_lead:
                return (
                    "future_input",
                    f"input for frame {message.frame} is more than {settings.max_input_lead} "
                    f"frames ahead of the game (frame {session.frame})",
                )
            if message.frame < session.frame - settings.max_input_lag:
                self.engine.metrics.late_inputs.inc()
                session.late_inputs += 1
                return (
                    "stale_input",
                    f"input for frame {message.frame} is more than {settings.max_input_lag} "
                    f"frames behind the game (frame {session.frame}); stamp inputs with the "
                    "last frame received plus the input delay",
                )
            metrics = self.engine.metrics
            outcome = session.accept_input(message.frame, message.port, controller_columns(message))
            if outcome == "late":
                metrics.late_inputs.inc()
            elif outcome == "rollback":
                metrics.rollback_inputs.inc()
            if message.previous:  # copies of the frames before: fill in what never came
                rollbacks = session.accept_copies(message)
                metrics.rollback_inputs.inc(rollbacks)
                metrics.recovered_inputs.inc(rollbacks)
            return None
        if isinstance(message, protocol.Ping):
            connection.offer(
                protocol.encode(protocol.Pong(t=message.t, server_frame=session.frame))
            )
            return None
        if isinstance(message, protocol.Control):
            if connection.role != "player":
                return "forbidden", "spectators cannot pause or reset"
            if message.action == "reset":
                try:
                    self.engine.reset_session(session)
                except TooManyResets as e:
                    return "rate_limited", str(e)
                self.engine.broadcast_status(session, "reset")
            else:
                session.user_paused = message.action == "pause"
                self.engine.broadcast_status(session, f"{message.action}d by a player")
            return None
        return "unexpected", f"{message.type} is only valid as the first message"

    async def close_all(self, reason: str) -> None:
        """Tell every client the server is going away and close its connection (1001)."""
        bye = protocol.encode(protocol.Bye(reason=reason))
        for connection in list(self.connections):
            connection.offer(bye)
            connection.end(protocol.CLOSE_GOING_AWAY, reason)
        deadline = time.monotonic() + FLUSH_ON_CLOSE_S + 1.0
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
