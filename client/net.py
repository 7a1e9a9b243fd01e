"""Talking to the game server: REST calls, a websocket connection in background threads, and a
local server in a subprocess.

`Connection` runs two daemon threads, one reading and one writing, so the window never waits
on the network: the main loop puts messages on `send` (non-blocking) and drains received ones
with `poll()`. Messages are the pydantic models of `server/protocol.py` (docs/PROTOCOL.md).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

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

DEFAULT_PORT = 8000
# Where games are recorded unless told otherwise: as `playmodel serve`'s RECORDINGS_DIR,
# relative to the folder the command runs in (server/settings.py).
RECORDINGS_ENV = "PLAYMODEL_RECORDINGS_DIR"
DEFAULT_RECORDINGS = Path("runs/recordings")
API_KEY_ENV = "PLAYMODEL_API_KEY"  # the server's key (server/settings.py)


def recordings_folder(value: str | Path | None = None) -> Path | None:
    """The recordings folder, absolute: `value`, else $PLAYMODEL_RECORDINGS_DIR, else
    runs/recordings, each relative to the current folder; None when it is empty (no
    recordings), as the server reads an empty RECORDINGS_DIR."""
    if value is None:
        value = os.environ.get(RECORDINGS_ENV, DEFAULT_RECORDINGS)
    if str(value).strip() in ("", "."):
        return None
    return Path(value).expanduser().resolve()


READY_POLL_SECONDS = 0.2  # how often a starting local server is asked whether it is up
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServerError(RuntimeError):
    """The server could not be reached or refused a request; the text says which and why."""


# ------------------------------------------------------------------------------ REST
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


# ------------------------------------------------------------------------------ local server
def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def url_host(host: str) -> str:
    """A host as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class LocalServer:
    """`python -m server serve` in a subprocess on a free loopback port, or the server
    already answering on the default port. Stop it with `stop()` (only if we started it).

    `host`: the address to bind instead of 127.0.0.1 (`play --lan`: the LAN address, so that
    other machines can join); `api_key`: the key the server is started with
    (PLAYMODEL_API_KEY), which a server reachable from other machines needs."""

    def __init__(
        self,
        port: int | None = None,
        reuse_default: bool = True,
        checkpoint: Path | None = None,
        recordings: str | Path | None = None,
        host: str = "127.0.0.1",
        api_key: str | None = None,
    ):
        self.process: subprocess.Popen | None = None
        self.host = host
        self.api_key = api_key
        # The server runs in the repository's folder: its recordings folder is resolved here,
        # against the folder this command runs in, as `playmodel serve` resolves its own
        # (None: $PLAYMODEL_RECORDINGS_DIR or runs/recordings; "": no recordings).
        self.recordings = recordings_folder(recordings)
        self.log_path: Path | None = None
        self._reuse = reuse_default
        self.port = port
        self.url = ""
        self.command: list[str] | None = None  # default: python -m server serve on `port`
        self.checkpoint = checkpoint
        self._up = False  # /healthz has answered: from then on only the process is watched
        self._asked_at = -1.0  # when /healthz was last asked

    def start(self) -> None:
        """Start without waiting (the start screen shows while the model loads)."""
        default = f"http://127.0.0.1:{DEFAULT_PORT}"
        if self._reuse and self.port is None and self.checkpoint is None and healthy(default):
            log.info("using the server already running at %s", default)
            self.url = default
            return
        self.port = self.port or free_port(self.host)
        self.url = f"http://{url_host(self.host)}:{self.port}"
        handle, name = tempfile.mkstemp(prefix="playmodel-server-", suffix=".log")
        self.log_path = Path(name)
        command = self.command or [
            *(sys.executable, "-m", "server", "serve"),
            *("--host", self.host, "--port", str(self.port)),
            *(("--checkpoint", str(self.checkpoint.resolve())) if self.checkpoint else ()),
        ]
        log.info("starting a local server: %s (log: %s)", " ".join(command), name)
        repo = Path(__file__).resolve().parent.parent
        env = {**os.environ, RECORDINGS_ENV: str(self.recordings or "")}
        if self.api_key is not None:
            env[API_KEY_ENV] = self.api_key  # in the environment: never on a command line
        if self.recordings is not None:
            log.info("games are recorded in %s", self.recordings)
        with open(handle, "wb", closefd=True) as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=repo,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def ready(self) -> bool:
        """True once /healthz answers; raises ServerError if the process has died. Cheap
        enough for every frame of the start screen: /healthz is asked at most 5 times a
        second, and not at all once it has answered."""
        if self.process is not None and self.process.poll() is not None:
            raise ServerError(
                f"the local server exited with code {self.process.returncode}. "
                f"Its log ({self.log_path}) ends with:\n{self.log_tail()}"
            )
        now = time.monotonic()
        if not self._up and now - self._asked_at >= READY_POLL_SECONDS:
            self._asked_at = now
            self._up = healthy(self.url)
        return self._up

    def wait(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise self.gave_up(timeout)
            time.sleep(READY_POLL_SECONDS)
        return self.url

    def gave_up(self, timeout: float) -> ServerError:
        """Stop the server that did not come up in time; the error to raise, log included."""
        self.stop()
        return ServerError(
            f"the local server at {self.url} did not answer /healthz within {timeout:.0f} s. "
            f"Its log ({self.log_path}) ends with:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


# ------------------------------------------------------------------------------ websocket
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
        """Send `states` (port -> ControllerState) for the next free frame, after any samples
        still waiting for one; returns the last frame sent, None if none was free."""
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
            controller: Controller = states[port].to_controller()
            history = self._history[port]
            previous = list(reversed(history))  # newest first: frame - 1, frame - 2, ...
            self.connection.send(
                Input(frame=frame, port=port, previous=previous, **dict(controller))
            )
            history.append(controller)
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
