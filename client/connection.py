"""The websocket to a session, in background threads, so that the window never waits on the
network, and the inputs sent on it.

`Connection` runs two daemon threads, one reading and one writing: the main loop puts messages
on `send` (non-blocking) and drains received ones with `poll()`. Messages are the pydantic
models of `server/protocol.py` (docs/PROTOCOL.md). `InputSender` stamps the local ports'
inputs with the frame they are for, from the last frame the connection received, and sends
them, one call per 60 Hz input tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from client.rest import LOOPBACK, ServerError
from server.protocol import (
    REDUNDANT_INPUTS,
    Bye,
    Controller,
    Error,
    Frame,
    Hello,
    Input,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Status,
    Welcome,
    decode_server,
    encode,
)

log = logging.getLogger(__name__)


@dataclass
class NetStats:
    """Counters for the overlay."""

    frames: int = 0
    gaps: int = 0  # frames skipped between two received frames
    out_of_order: int = 0
    substituted: dict[int, int] = field(default_factory=dict)  # port -> count
    corrected: int = 0  # frames re-made by a server rollback
    rollback_times: deque = field(default_factory=lambda: deque(maxlen=600))
    ping_ms: float | None = None
    errors: deque = field(default_factory=lambda: deque(maxlen=5))

    def rollbacks_per_second(self, window: float = 5.0) -> float:
        now = time.monotonic()
        return sum(1 for t in self.rollback_times if now - t <= window) / window


class Connection:
    """A websocket to a session's play or watch URL, with reader and writer threads.

    `poll()` returns the messages received since the last call (Welcome, Frame, Status, Pong,
    Error, Bye); `send()` queues one. `closed` says why the connection ended, once it has."""

    def __init__(self, url: str, role: str = "player", name: str = "playmodel-client"):
        self.url = url
        self.role = role
        self.name = name
        self.stats = NetStats()
        self.welcome: Welcome | None = None
        self.closed: str | None = None
        self.last_frame: int | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue(maxsize=256)
        self._ws = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self, timeout: float = 10.0) -> Welcome:
        """Connect, say hello and wait for the welcome; then start the threads."""
        try:
            return self._open(timeout)
        except ServerError:
            if self._ws is not None:
                self._ws.close()
            raise

    def _open(self, timeout: float) -> Welcome:
        host = urllib.parse.urlsplit(self.url).hostname or ""
        try:
            # Entering the connection (websockets >= 17 asks for it) keeps it open until
            # close(); the threads below own it from then on.
            self._ws = connect(
                self.url,
                open_timeout=timeout,
                proxy=None if host in LOOPBACK else True,
                compression=None,  # small binary messages at 60 Hz: latency over bytes
                max_size=2**22,
            ).__enter__()
            self._ws.send(encode(Hello(role=self.role, client=self.name)))
            deadline = time.monotonic() + timeout
            while True:
                message = decode_server(
                    self._ws.recv(timeout=max(0.01, deadline - time.monotonic()))
                )
                if isinstance(message, Welcome):
                    break
                if isinstance(message, Error | Bye):
                    raise ServerError(f"the server refused the connection: {_describe(message)}")
        except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as e:
            raise ServerError(f"cannot connect to {_redact(self.url)}: {e}") from None
        except ConnectionClosed as e:
            raise ServerError(
                f"{_redact(self.url)} closed the connection: {_close_reason(e)}"
            ) from None
        except ProtocolError as e:
            raise ServerError(f"{_redact(self.url)} sent a bad message: {e}") from None
        self.welcome = message
        self.last_frame = message.frame
        for target in (self._read, self._write):
            thread = threading.Thread(target=target, name=f"net-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return message

    def send(self, message: Message) -> bool:
        """Queue a message; False (and dropped) if the writer is far behind or closed."""
        if self.closed:
            return False
        try:
            self._outbox.put_nowait(encode(message))
            return True
        except queue.Full:
            return False

    def ping(self) -> None:
        self.send(Ping(t=time.monotonic()))

    def poll(self) -> list[Message]:
        out = []
        while True:
            try:
                out.append(self._inbox.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        if self._ws is not None:
            self._ws.close()
        for thread in self._threads:
            thread.join(timeout=2)
        self.closed = self.closed or "closed by the client"

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._ws.recv()
                try:
                    message = decode_server(data)
                except ProtocolError as e:
                    log.warning("bad message from the server: %s", e)
                    continue
                self._account(message)
                self._inbox.put(message)
        except ConnectionClosed as e:
            self.closed = self.closed or _close_reason(e)
        except OSError as e:
            self.closed = self.closed or f"network error: {e}"
        finally:
            self._stop.set()

    def _write(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    data = self._outbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                self._ws.send(data)
        except (ConnectionClosed, OSError) as e:
            self.closed = self.closed or f"send failed: {e}"

    def _account(self, message: Message) -> None:
        """Statistics for the overlay, kept by the reader thread."""
        if isinstance(message, Frame) and message.corrected:
            # A rollback re-made a frame already received: it is not a new frame.
            self.stats.corrected += 1
            if message.frame == self.last_frame:  # the last corrected frame of a rollback
                self.stats.rollback_times.append(time.monotonic())
        elif isinstance(message, Frame):
            self.stats.frames += 1
            if self.last_frame is not None:
                if message.frame <= self.last_frame:
                    self.stats.out_of_order += 1
                elif message.frame > self.last_frame + 1:
                    self.stats.gaps += message.frame - self.last_frame - 1
            self.last_frame = message.frame
            for port in message.substituted:
                self.stats.substituted[port] = self.stats.substituted.get(port, 0) + 1
        elif isinstance(message, Pong):
            self.stats.ping_ms = (time.monotonic() - message.t) * 1000.0
        elif isinstance(message, Error):
            self.stats.errors.append(f"{message.code}: {message.message}")
        elif isinstance(message, Status) and message.reason == "reset":
            self.last_frame = message.frame  # the game starts over from this frame
        elif isinstance(message, Bye):
            self.closed = f"server closed: {message.reason}"


def _describe(message: Error | Bye) -> str:
    return f"{message.code}: {message.message}" if isinstance(message, Error) else message.reason


def _close_reason(e: ConnectionClosed) -> str:
    frame = e.rcvd or e.sent
    if frame is None:
        return "connection lost"
    return f"code {frame.code}" + (f" ({frame.reason})" if frame.reason else "")


def _redact(url: str) -> str:
    """The URL without its tokens, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, "…" if k == "token" else v) for k, v in urllib.parse.parse_qsl(parts.query)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class InputSender:
    """Stamps and sends the local ports' inputs, one call per 60 Hz input tick.

    An input is for frame `last received frame + input delay`. When the input clock runs a
    little ahead of the server's frames, the next tick takes the next frame, at most
    `MAX_AHEAD` frames past that target; further ahead, a sample that changes the controller
    waits (at most `MAX_WAITING` of them) and goes out, in order, as frames come free, so a
    press is never dropped (a sample that changes nothing is). When the clock falls behind,
    the next input jumps to the target and the frames in between hold the previous sample.

    Every input carries copies of the port's controllers for the `REDUNDANT_INPUTS` frames
    before it (the held ones included), as netplay clients send theirs: the server fills in,
    from the next message, a frame whose own input came late or was never sent."""

    MAX_AHEAD = 2
    # Changed samples kept while the input clock is ahead of the server's frames (a server
    # falling behind its 60 Hz): 4 frames, 67 ms; past that the oldest is dropped and counted.
    MAX_WAITING = 4

    def __init__(self, connection: Connection, ports: list[int], input_delay: int):
        self.connection = connection
        self.ports = list(ports)
        self.delay = input_delay
        self.last_sent: int | None = None
        self.sent = 0
        self.dropped = 0  # changed samples dropped: the clock ran ahead for too long
        self._waiting: deque[dict] = deque()  # samples waiting for a frame, oldest first
        self._held: dict | None = None  # the last sample sent
        # port -> the controllers sent for frames last_sent - 7 .. last_sent, oldest first
        self._history = {port: deque(maxlen=REDUNDANT_INPUTS) for port in self.ports}

    def next_frame(self) -> int | None:
        last = self.connection.last_frame
        if last is None:
            return None
        target = last + self.delay
        frame = target if self.last_sent is None else max(target, self.last_sent + 1)
        return frame if frame <= target + self.MAX_AHEAD else None

    def tick(self, states: dict) -> int | None:
        """Send `states` (port -> `core.controller.Controller`) for the next free frame, after
        any samples still waiting for one; returns the last frame sent, None if none was free."""
        if self.connection.last_frame is None:
            return None
        newest = self._waiting[-1] if self._waiting else self._held
        if self.next_frame() is None and states == newest:
            return None  # ahead of the server's frames, and nothing changed: nothing to keep
        self._waiting.append(dict(states))
        if len(self._waiting) > self.MAX_WAITING:
            self._waiting.popleft()
            self.dropped += 1
        sent = None
        while self._waiting and (frame := self.next_frame()) is not None:
            self._send(frame, self._waiting.popleft())
            sent = frame
        return sent

    def _send(self, frame: int, states: dict) -> None:
        if self.last_sent is not None:  # frames jumped over hold the last sample sent
            for _ in range(max(self.last_sent + 1, frame - REDUNDANT_INPUTS), frame):
                for history in self._history.values():
                    history.append(history[-1])
        for port in self.ports:
            history = self._history[port]
            previous = list(reversed(history))  # newest first: frame - 1, frame - 2, ...
            self.connection.send(Input.stamped(states[port], frame, port, previous))
            history.append(Controller.of(states[port]))
        self._held = states
        self.last_sent = frame
        self.sent += 1

    def reset(self) -> None:
        """After a reset the server's frames start again from the beginning."""
        self.last_sent = None
        self._held = None
        self._waiting.clear()
        for history in self._history.values():
            history.clear()
