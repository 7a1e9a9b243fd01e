"""Stamping the local ports' inputs with the frame they are for and sending them, one call per
60 Hz input tick (docs/PROTOCOL.md).
"""

from __future__ import annotations

from collections import deque

from client.connection import Connection
from server.protocol import REDUNDANT_INPUTS, Controller, Input


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
