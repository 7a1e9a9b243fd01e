"""The two screens that show a game: `LiveLoop`, a session over the network (the players'
inputs go up, frames come down), and `ReplayLoop`, a recorded game played back.

Each runs in `Window.run_frames`: handle events, then a step that, in a live game, samples the
controllers at a fixed 60 Hz (`InputClock`, independent of the drawing rate) and sends them
stamped with the frame they are for, takes whatever frames the network thread received, and
draws the latest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pygame

from client.connection import Connection, InputSender
from client.render import Renderer, event_port
from client.replay import Recording
from client.window import Window
from server.protocol import Bye, Control, Error, Frame, Status

log = logging.getLogger(__name__)

INPUT_HZ = 60.0  # Melee polls the controllers once per frame
INPUT_STEP = 1.0 / INPUT_HZ
MAX_CATCH_UP = 0.25  # seconds of input ticks made up after a stall; beyond that they are dropped
PING_EVERY = 1.0  # seconds
REPLAY_KEYS = "Space resume   Left/Right seek 5 s   Up/Down speed   Home restart"


class InputClock:
    """Fixed-rate input ticks from a loop that runs at any rate (the accumulator of "Fix Your
    Timestep!"): `due(now)` says how many ticks to sample since the last call. After a stall
    longer than `max_catch_up` seconds the missed ticks are dropped, not replayed in a burst."""

    def __init__(self, hz: float = 60.0, max_catch_up: float = 0.25):
        self.step = 1.0 / hz
        self.max_catch_up = max_catch_up
        self.accumulator = 0.0
        self.last: float | None = None

    def due(self, now: float) -> int:
        if self.last is None:
            self.last = now
            return 0
        self.accumulator = min(self.accumulator + now - self.last, self.max_catch_up)
        self.last = now
        ticks = int(self.accumulator / self.step + 1e-9)
        self.accumulator -= ticks * self.step
        return ticks


class LiveLoop:
    """A session over the network: the players' inputs go up, frames come down."""

    def __init__(self, app: Window, connection: Connection, local: bool):
        self.app = app
        self.connection = connection
        self.local = local  # every human port is on this machine: pause is ours to use
        welcome = connection.welcome
        self.welcome = welcome
        self.renderer = Renderer(
            app.screen.get_size(), welcome.stage, welcome.characters, welcome.timer_frames
        )
        self.sender = InputSender(connection, welcome.ports, welcome.input_delay)
        self.status = welcome.status
        self.paused = welcome.status == "paused"
        self.game_over = ""
        self.notice, self.notice_until = "", 0.0
        self._start_down: set[int] = set()
        # The Return that started the game (Start on the keyboard) is no tap for its frames:
        # counted, it paused the game on its first sample.
        app.controls.forget_taps()
        self._input_clock = InputClock(INPUT_HZ, MAX_CATCH_UP)
        self._last_ping = 0.0

    def run(self) -> int:
        return self.app.run_frames(self._key, self._step)

    def _step(self) -> None:
        now = time.perf_counter()
        for _ in range(self._input_clock.due(now)):  # the fixed 60 Hz input clock
            self._input_tick()
        if now - self._last_ping > PING_EVERY:
            self.connection.ping()
            self._last_ping = now
        self._receive()
        self._draw()

    def _key(self, key: int) -> None:
        if self.welcome.role != "player":
            return
        if key == pygame.K_F5:
            self.connection.send(Control(action="reset"))
        elif key == pygame.K_p:
            self._toggle_pause()

    def _toggle_pause(self) -> None:
        if not self.local:
            self._notify("pause is for local games only")
            return
        self.connection.send(Control(action="resume" if self.paused else "pause"))

    def _input_tick(self) -> None:
        if self.welcome.role != "player":
            return
        sampled = self.app.controls.sample()
        states = {port: sampled[slot] for slot, port in enumerate(self.welcome.ports)}
        # Start pauses a local game, like Melee's (on the press, not while held).
        start_down = {port for port, state in states.items() if "START" in state.buttons}
        if start_down - self._start_down:
            self._toggle_pause()
        self._start_down = start_down
        if self.status == "running":
            self.sender.tick(states)

    def _receive(self) -> None:
        for message in self.connection.poll():
            if isinstance(message, Frame) and message.corrected:
                # A rollback re-made frames already shown: replace the one on screen; older
                # corrected frames are history and are not drawn.
                if self.renderer.frame is not None and message.frame == self.renderer.frame.frame:
                    self.renderer.replace(message)
            elif isinstance(message, Frame):
                if self.renderer.frame is not None and message.frame < self.renderer.frame.frame:
                    self.sender.reset()  # a reset: the game starts over
                    self.game_over = ""
                self.renderer.update(message, INPUT_STEP)
                for event in message.events:
                    if event.type == "game_end":
                        port = event_port(event)
                        self.game_over = f"P{port} wins" if port else "a draw"
            elif isinstance(message, Status):
                self.status = message.status
                self.paused = message.status == "paused"
                if message.reason == "reset":
                    self.sender.reset()
                    self.game_over = ""
            elif isinstance(message, Error):
                log.warning("server error %s: %s", message.code, message.message)
                self._notify(f"server: {message.message}")
            elif isinstance(message, Bye):
                self._notify(f"server closed: {message.reason}")

    def _notify(self, text: str, seconds: float = 4.0) -> None:
        self.notice, self.notice_until = text, time.monotonic() + seconds

    def _draw(self) -> None:
        hud = self.renderer.hud
        hud.banner, hud.subtitle = "", ""
        hud.notice = self.notice if time.monotonic() < self.notice_until else ""
        if self.game_over:
            hud.banner = "GAME!"
            hud.subtitle = f"{self.game_over}   —   F5 rematch, Esc quit"
        elif self.status == "waiting":
            hud.banner, hud.subtitle = "WAITING", "for every player to connect"
        elif self.paused:
            hud.banner = "PAUSED"
            hud.subtitle = "P or Start to resume, F5 reset, Esc quit"
        elif self.connection.closed:
            hud.banner, hud.subtitle = "DISCONNECTED", self.connection.closed
        hud.show_overlay = self.app.show_overlay
        stats = self.connection.stats
        ping = "–" if stats.ping_ms is None else f"{stats.ping_ms:.0f} ms"
        substituted = ", ".join(f"P{p} {n}" for p, n in sorted(stats.substituted.items()))
        frame = self.renderer.frame.frame if self.renderer.frame else self.welcome.frame
        hud.overlay = [
            f"fps {self.app.clock.get_fps():.0f}",
            f"frame {frame}   status {self.status}",
            f"ping {ping}   delay {self.welcome.input_delay} f",
            f"frames received {stats.frames}   skipped {stats.gaps}",
            f"inputs sent {self.sender.sent}   dropped {self.sender.dropped}   "
            f"substituted {substituted or '0'}",
            f"rollbacks {stats.rollbacks_per_second():.1f}/s   corrected frames {stats.corrected}",
            *(f"error {e}" for e in list(stats.errors)[-2:]),
        ]
        self.renderer.draw(self.app.screen)


class ReplayLoop:
    """A recorded game at 60 frames per second: Space pauses, Left/Right seek 5 s, Up/Down
    change the speed, Home restarts."""

    SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)

    def __init__(self, app: Window, recording: Recording):
        self.app = app
        self.recording = recording
        self.renderer = Renderer(
            app.screen.get_size(), recording.stage, recording.characters, recording.timer_frames
        )
        self.index = float(min(max(app.args.seek, 0), len(recording) - 1))
        self.speed = 2
        self.paused = False
        self._shown = -1  # the recording's index of the frame on screen
        self._last = time.perf_counter()

    def run(self) -> int:
        return self.app.run_frames(self._key, self._step)

    def _step(self) -> None:
        app, rec = self.app, self.recording
        now = time.perf_counter()
        if not self.paused:
            self.index += (now - self._last) * INPUT_HZ * self.SPEEDS[self.speed]
        self._last = now
        if app.args.frames is not None:  # a fixed number of frames: one per loop
            self.index = float(app.args.seek + app.frames_drawn)
        self.index = min(max(self.index, 0.0), len(rec) - 1)
        target = int(self.index)
        if target != self._shown:
            # Walk through skipped frames so their events still start effects.
            shown = self._shown
            start = target if target < shown or target - shown > 30 else shown + 1
            for i in range(max(0, start), target + 1):
                self.renderer.update(rec.frame(i), INPUT_STEP, snap=shown < 0)
            self._shown = target
        hud = self.renderer.hud
        hud.banner = "PAUSED" if self.paused else ""
        hud.subtitle = REPLAY_KEYS
        hud.show_overlay = app.show_overlay
        hud.overlay = [
            f"fps {app.clock.get_fps():.0f}",
            f"frame {rec.frame_ids[target]}  ({target + 1}/{len(rec)})",
            f"speed x{self.SPEEDS[self.speed]}",
            f"{Path(rec.source).name}",
        ]
        self.renderer.draw(app.screen)

    def _key(self, key: int) -> None:
        if key == pygame.K_SPACE:
            self.paused = not self.paused
        elif key in (pygame.K_LEFT, pygame.K_RIGHT):
            self.index += (5 * INPUT_HZ) * (1 if key == pygame.K_RIGHT else -1)
        elif key == pygame.K_UP:
            self.speed = min(self.speed + 1, len(self.SPEEDS) - 1)
        elif key == pygame.K_DOWN:
            self.speed = max(self.speed - 1, 0)
        elif key == pygame.K_HOME:
            self.index = 0.0
