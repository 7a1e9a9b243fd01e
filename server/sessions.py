"""Live sessions: who plays which port, the inputs waiting for their frames, and the
connections each frame goes out to. Everything here runs on the event loop; the simulation
itself is only touched by the engine's device thread (server/live_batch.py)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from core.controller import Controller
from model.policies import Policy
from model.snapshots import Snapshot
from server import protocol
from server.recorder import GameRecorder

log = logging.getLogger(__name__)

NEUTRAL: dict[str, float | int] = Controller().processed()


# Each reset finishes the game's recording and starts a new folder: unlimited, one client made
# 282 folders in 6 s (issue 21). A person pressing reset, or a script resetting at each game's
# end, stays far below this.
RESET_BURST = 5  # resets a session may make back to back
RESETS_PER_SECOND = 1.0  # then this many a second


class ResetLimit:
    """A token bucket for one session's resets: RESET_BURST at once, then RESETS_PER_SECOND."""

    def __init__(self, burst: int = RESET_BURST, rate: float = RESETS_PER_SECOND):
        self.burst, self.rate = burst, rate
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> float:
        """0 if a reset may go ahead now (and counts it), else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class TooManyResets(RuntimeError):
    """A reset refused by the session's `ResetLimit`; `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def new_id() -> str:
    """A session or match id: hex, so it can never start with `-` and be read as a
    command-line option (`playmodel play --session ID`), and is safe in any URL."""
    return secrets.token_hex(6)


def new_token() -> str:
    """A player's secret join token (192 bits), hex for the same reason as `new_id`."""
    return secrets.token_hex(24)


def controller_columns(message: protocol.Controller) -> dict[str, float | int]:
    """An input message (or one of its redundant copies) as one player's controller columns
    (without the `pN_` prefix), as Melee processes them (`core.controller.Controller.processed`:
    Z also presses A, ...)."""
    return message.to_controller().processed()


SPECTATOR_QUEUE_MESSAGES = 32  # a spectator's messages other than frames (welcome, errors, ...)


class Connection:
    """One websocket's outgoing side: a bounded queue drained by its own sender task, so a
    client that stops reading only ever blocks itself. A spectator keeps just the newest frame,
    beside its queue of other messages (welcome, status, error, bye), which are never dropped:
    a frame must not push out the error that answers the spectator's message."""

    def __init__(self, websocket: Any, role: str, ports: tuple[int, ...], queue_size: int):
        """`queue_size`: messages queued before the client counts as not reading (a player's
        are mostly frames; a spectator's frames are not queued)."""
        self.websocket = websocket
        self.role = role
        self.ports = ports
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.latest_frame: bytes | None = None  # a spectator's frame waiting to be sent
        self._ready = asyncio.Event()  # a spectator has something to send
        self.ended = asyncio.Event()  # set when the server ends this connection
        self.close_code = protocol.CLOSE_NORMAL
        self.close_reason = ""
        self.sent = 0

    def offer(self, data: bytes) -> bool:
        """Queue a message; False (and the connection ended: the client is not reading) if
        the queue is full."""
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.end(protocol.CLOSE_POLICY_VIOLATION, "not reading frames: send queue full")
            return False
        self._ready.set()
        return True

    def offer_frame(self, data: bytes) -> bool:
        """Queue a frame; for a spectator it replaces a frame not sent yet (False: one was
        dropped, the spectator is behind)."""
        if self.role != "spectator":
            return self.offer(data)
        dropped = self.latest_frame is not None
        self.latest_frame = data
        self._ready.set()
        return not dropped

    def end(self, code: int, reason: str) -> None:
        if not self.ended.is_set():
            self.close_code, self.close_reason = code, reason
            self.ended.set()

    async def send_loop(self) -> None:
        while True:
            data = await self._next()
            await self.websocket.send_bytes(data)
            self.sent += 1

    async def _next(self) -> bytes:
        """The next message to send: queued messages first, in order, then a spectator's
        latest frame (the welcome thus always goes before the first frame)."""
        if self.role != "spectator":
            return await self.queue.get()
        while True:
            if not self.queue.empty():
                return self.queue.get_nowait()
            if self.latest_frame is not None:
                data, self.latest_frame = self.latest_frame, None
                return data
            self._ready.clear()
            await self._ready.wait()


@dataclass
class FrameRecord:
    """What a stepped frame was made with, kept for the rollback window."""

    frame: int
    used: dict[str, float | int]  # both ports' controller columns, policies' included
    real: dict[int, dict | None]  # human port -> its input if it arrived, else None
    before: Snapshot | None = None  # the state before this frame, kept if an input was missing
    late: set[int] = field(default_factory=set)  # ports whose input came after, not applied yet


@dataclass
class Session:
    id: str
    tokens: dict[int, str]  # port -> secret
    policies: dict[int, Policy]  # ports driven by a scripted policy
    input_delay: int
    start_snapshot: Snapshot
    setup_info: dict  # stage, characters, start, seed: what GET shows
    # The creator's secret: resetting or deleting the session over REST needs it.
    owner_token: str = field(default_factory=new_token)
    game_id: int | None = None  # row id in the engine's simulation while it runs
    parked: Snapshot | None = None  # the game's state while it is out of the batch
    frame: int = 0  # the last frame stepped
    over: bool = False
    user_paused: bool = False
    pending_reset: bool = False  # a reset the device thread has yet to apply
    generation: int = 0  # bumped by every reset: frames stepped before it are discarded
    started: bool = False  # every human port has been connected once
    inputs: dict[int, dict[int, dict]] = field(default_factory=dict)  # port -> frame -> columns
    # Frames not stepped yet whose input came only as a redundant copy in a later input.
    copies: dict[int, dict[int, dict]] = field(default_factory=dict)  # port -> frame -> columns
    last_input: dict[int, dict] = field(default_factory=dict)
    substituted: dict[int, int] = field(default_factory=dict)  # missing when their frame was made
    recovered: dict[int, int] = field(default_factory=dict)  # inputs filled in from copies
    lost: dict[int, int] = field(default_factory=dict)  # frames that kept their substitute
    late_inputs: int = 0
    players: dict[int, Connection] = field(default_factory=dict)  # port -> connection
    # The start frame as a recording row (frame id, GroupedRow), made by the first recording.
    start_row: tuple | None = None
    spectators: set[Connection] = field(default_factory=set)
    created: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)  # a player was last connected
    result: dict | None = None  # the game_end event's detail once over
    rollback_window: int = 7  # frames a late input may still be applied to (Slippi's 7)
    history: dict[int, FrameRecord] = field(default_factory=dict)  # the last frames stepped
    rollback_from: int | None = None  # the earliest frame a late input arrived for
    rollbacks: int = 0
    rolled_back_frames: int = 0
    recorder: GameRecorder | None = None  # this game's recording (a reset starts a new one)
    games_recorded: int = 0
    reset_limit: ResetLimit = field(default_factory=ResetLimit)

    @classmethod
    def new(
        cls,
        policies: dict[int, Policy],
        input_delay: int,
        start_snapshot: Snapshot,
        setup_info: dict,
        rollback_window: int = 7,
    ) -> Session:
        human = [p for p in protocol.PORTS if p not in policies]
        return cls(
            id=new_id(),
            tokens={p: new_token() for p in human},
            policies=policies,
            input_delay=input_delay,
            start_snapshot=start_snapshot,
            setup_info=setup_info,
            frame=int(start_snapshot.tensors["frame.frame"]),
            inputs={p: {} for p in protocol.PORTS},
            copies={p: {} for p in protocol.PORTS},
            last_input={p: dict(NEUTRAL) for p in protocol.PORTS},
            substituted={p: 0 for p in protocol.PORTS},
            recovered={p: 0 for p in protocol.PORTS},
            lost={p: 0 for p in protocol.PORTS},
            rollback_window=rollback_window,
        )

    # ------------------------------------------------------------------ access
    def ports_for(self, tokens: list[str]) -> tuple[int, ...] | None:
        """The ports these tokens open, or None if any token is wrong. Every comparison runs
        in constant time, and every port is compared whatever matched before."""
        ports = []
        for token in tokens:
            matched = None
            for port, secret in self.tokens.items():
                if hmac.compare_digest(token.encode(), secret.encode()):
                    matched = port
            if matched is None:
                return None
            ports.append(matched)
        return tuple(sorted(set(ports)))

    @property
    def human_ports(self) -> tuple[int, ...]:
        return tuple(sorted(self.tokens))

    @property
    def status(self) -> str:
        if self.over:
            return "over"
        if not self.started:
            return "waiting"
        if self.user_paused or any(p not in self.players for p in self.human_ports):
            return "paused"
        return "running"

    def update_started(self) -> None:
        if all(p in self.players for p in self.human_ports):
            self.started = True

    # ------------------------------------------------------------------ inputs
    def accept_input(self, frame: int, port: int, columns: dict) -> str | None:
        """Store an input for `frame`. Returns None for an input in time, 'rollback' for a
        late input the session will roll back for, 'late' for one too old to use, and
        'duplicate' for a second input for a frame already made with a real one (ignored)."""
        if frame > self.frame:
            self.inputs[port][frame] = columns
            return None
        return self._late_input(frame, port, columns)

    def _late_input(self, frame: int, port: int, columns: dict, copy: bool = False) -> str:
        record = self.history.get(frame)
        if record is None or self.frame - frame >= self.rollback_window:
            if not copy:  # a copy of an input is repeated by every message: not a late input
                self.late_inputs += 1
            return "late"
        if record.real.get(port) is not None:
            return "duplicate"  # that frame was already made with a real input of this port
        record.real[port] = columns
        record.late.add(port)
        if copy:
            self.recovered[port] += 1
        if self.rollback_from is None or frame < self.rollback_from:
            self.rollback_from = frame
        return "rollback"

    def accept_copies(self, message: protocol.Input) -> int:
        """Fill in, from an input's redundant copies (`message.previous`), the inputs of its
        port this session lacks: a frame not stepped yet whose own input never came takes its
        copy (and is not substituted); a frame made with a substitute, still inside the
        rollback window, takes it by a rollback. Copies of frames that have their input, or
        are too old to change, are ignored: every message repeats them. Returns how many
        copies start a rollback. Call it after `accept_input` of the message's own input."""
        port, rollbacks = message.port, 0
        for frame, copy in message.controllers():
            if frame > self.frame:
                if frame not in self.inputs[port] and frame not in self.copies[port]:
                    self.copies[port][frame] = controller_columns(copy)
                continue
            record = self.history.get(frame)
            if record is None or record.real.get(port) is not None:
                continue  # the common case: made with its own input (or long gone)
            outcome = self._late_input(frame, port, controller_columns(copy), copy=True)
            rollbacks += outcome == "rollback"
        return rollbacks

    def controls_for_next_frame(self) -> tuple[dict[str, float | int], list[int], FrameRecord]:
        """The human ports' controller columns for frame `self.frame + 1`, the ports whose
        input had not arrived (their last input is reused), and the frame's record. Inputs for
        frames already stepped (they arrived while a step ran) become late inputs."""
        target = self.frame + 1
        columns: dict[str, float | int] = {}
        missing = []
        real: dict[int, dict | None] = {}
        for port in self.human_ports:
            pending, copies = self.inputs[port], self.copies[port]
            for stale in sorted(f for f in pending if f < target):
                self._late_input(stale, port, pending.pop(stale))
            for stale in sorted(f for f in copies if f < target):
                self._late_input(stale, port, copies.pop(stale), copy=True)
            value = pending.pop(target, None)
            copied = copies.pop(target, None)
            if value is None and copied is not None:
                value = copied
                self.recovered[port] += 1
            real[port] = value
            if value is None:
                value = self.last_input[port]
                missing.append(port)
                self.substituted[port] += 1
            else:
                self.last_input[port] = value
            prefix = f"p{port}_"
            columns.update({prefix + k: v for k, v in value.items()})
        return columns, missing, FrameRecord(target, dict(columns), real)

    def retire(self, record: FrameRecord) -> int:
        """`record`'s frame has left the rollback window: its inputs are final. Returns (and
        counts per port) how many of its human inputs were never applied: they never came, or
        came too late for a rollback to apply them; their substitute stays in the game."""
        lost = 0
        for port, value in record.real.items():
            if value is None or port in record.late:
                self.lost[port] += 1
                lost += 1
        return lost

    def reset_inputs(self) -> int:
        """Forget every input and the history (a reset); returns the inputs lost in the
        frames that were still inside the rollback window."""
        lost = sum(self.retire(record) for record in self.history.values())
        for port in protocol.PORTS:
            self.inputs[port].clear()
            self.copies[port].clear()
            self.last_input[port] = dict(NEUTRAL)
        self.history.clear()
        self.rollback_from = None
        return lost

    # ------------------------------------------------------------------ output
    def connections(self) -> list[Connection]:
        """Every connection once (one connection may play both ports)."""
        return [*dict.fromkeys(self.players.values()), *self.spectators]

    def describe(self) -> dict:
        return {
            "session_id": self.id,
            "status": self.status,
            "frame": self.frame,
            "input_delay": self.input_delay,
            "human_ports": list(self.human_ports),
            "players_connected": sorted(self.players),
            "spectators": len(self.spectators),
            "substituted_inputs": {str(p): n for p, n in self.substituted.items()},
            "recovered_inputs": {str(p): n for p, n in self.recovered.items()},
            "lost_inputs": {str(p): n for p, n in self.lost.items()},
            "late_inputs": self.late_inputs,
            "rollbacks": self.rollbacks,
            "recordings": [f"{self.id}-{n}" for n in range(self.games_recorded)],
            "rolled_back_frames": self.rolled_back_frames,
            "result": self.result,
            **self.setup_info,
        }
