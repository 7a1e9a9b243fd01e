"""`playmodel play`: the window where people play the model (docs/CLIENT.md).

    playmodel play                               # local server, start screen, two players
    playmodel play --stage fd --characters fox,marth --no-menu
    playmodel play --cpu 2:approach              # play against a scripted policy
    playmodel play --lan                         # a friend on the LAN plays port 2
    playmodel play --server http://HOST:8000     # create a session on another server
    playmodel play --server http://HOST:8000 --session ID --token T   # join one
    playmodel play --watch ws://HOST:8000/v1/sessions/ID/watch        # spectate
    playmodel play --replay game.slp             # play back a real game (or a .parquet)

The loop is the usual one: handle events, sample the controllers at a fixed 60 Hz (an
accumulator, independent of the drawing rate) and send them stamped with the frame they are
for, take whatever frames the network thread received, draw the latest, flip.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pygame

from client import assets, lan
from client.connection import Connection
from client.controls import ControllerState, Controls, ControlsConfig, InputClock
from client.input_sender import InputSender
from client.local_server import LocalServer
from client.render import PORT_COLOURS, TEXT, Renderer, event_port
from client.replay import Recording
from client.rest import ServerError, Session, create_session, delete_session, http_base, ws_url
from server.protocol import Bye, Control, Error, Frame, Status

log = logging.getLogger(__name__)

INPUT_HZ = 60.0  # Melee polls the controllers once per frame
INPUT_STEP = 1.0 / INPUT_HZ
MAX_CATCH_UP = 0.25  # seconds of input ticks made up after a stall; beyond that they are dropped
PING_EVERY = 1.0  # seconds
DEFAULT_SIZE = (1280, 720)
MENU_POLICIES = ("human", "cpu: approach", "cpu: random", "cpu: noop")
# Key hints in words: pygame's default font (freesansbold) has no arrow glyphs, which it
# draws as empty boxes on every machine.
MENU_KEYS = "Up/Down choose   Left/Right change   Enter start   Esc quit"
REPLAY_KEYS = "Space resume   Left/Right seek 5 s   Up/Down speed   Home restart"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="playmodel play", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--server", metavar="URL", help="a server to play on (default: start one)")
    mode.add_argument("--watch", metavar="URL", help="spectate a session (its watch URL)")
    mode.add_argument("--replay", metavar="FILE", type=Path, help="play back a .slp or .parquet")
    p.add_argument("--session", metavar="ID", help="join this session on --server")
    p.add_argument(
        "--token", action="append", default=[], metavar="T", help="a port token (repeatable)"
    )
    p.add_argument("--stage", default="battlefield", help="stage name or id (default battlefield)")
    p.add_argument("--characters", default="fox,falco", help="P1,P2 (names or internal ids)")
    p.add_argument("--delay", type=int, default=None, help="input delay in frames (server's)")
    p.add_argument(
        "--cpu",
        action="append",
        default=[],
        metavar="PORT:POLICY",
        help="a port played by a scripted policy, e.g. 2:approach (repeatable)",
    )
    p.add_argument(
        "--ports",
        default=None,
        help="ports this window plays when it creates a session (default: every human port); "
        "the other ports' tokens are printed for a friend to join with",
    )
    p.add_argument("--seek", type=int, default=0, metavar="ROW", help="--replay: start at row")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="weights for the local server (default: demo)"
    )
    p.add_argument(
        "--recordings",
        metavar="DIR",
        default=None,
        help="where the local server records games (default: $PLAYMODEL_RECORDINGS_DIR, else "
        "runs/recordings in the current folder, as playmodel serve; '' records nothing)",
    )
    p.add_argument("--start-replay", metavar="NAME[:ROW]", help="start from a server replay")
    p.add_argument(
        "--lan",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="bind the local server to this machine's LAN address (or ADDRESS) with an API "
        "key, play port 1 here and print the commands a second player and spectators on "
        "other machines use",
    )
    p.add_argument(
        "--port", type=int, default=None, help="the local server's port (default: a free one)"
    )
    p.add_argument("--api-key", default=os.environ.get("PLAYMODEL_API_KEY"), help="X-API-Key")
    p.add_argument("--no-menu", action="store_true", help="skip the start screen")
    p.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="window WxH")
    p.add_argument("--fps", type=int, default=60, help="drawing rate cap (input is always 60 Hz)")
    p.add_argument("--controls", type=Path, default=None, help="controls file (JSON)")
    p.add_argument(
        "--server-timeout", type=float, default=120.0, help="seconds to wait for a local server"
    )
    p.add_argument("--frames", type=int, default=None, help="quit after this many frames")
    p.add_argument("--screenshot", type=Path, default=None, help="save the last frame as PNG")
    p.add_argument("--overlay", action="store_true", help="start with the F1 overlay shown")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if (args.session or args.token) and not args.server:
        p.error("--session and --token join a session on --server URL")
    if (args.lan or args.port is not None) and (args.server or args.watch or args.replay):
        p.error("--lan and --port are for the local server: not with --server, --watch, --replay")
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        args.size = (w, h)
    except ValueError:
        p.error(f"--size: expected WIDTHxHEIGHT, got {args.size!r}")
    args.policies = {}
    for spec in args.cpu:
        port, _, policy = spec.partition(":")
        if port not in ("1", "2") or not policy:
            p.error(f"--cpu: expected PORT:POLICY with PORT 1 or 2, got {spec!r}")
        args.policies[port] = policy
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.replay:
            return App(args).run_replay(args.replay)
        if args.watch:
            return App(args).run_watch(args.watch)
        return App(args).run_live()
    except (ServerError, ValueError) as e:
        print(f"playmodel play: {e}", file=sys.stderr)
        return 1
    finally:
        pygame.quit()


@dataclass
class GameChoice:
    stage: int
    characters: list[int]
    policies: dict[str, str] = field(default_factory=dict)

    def request(self, args: argparse.Namespace) -> dict:
        body: dict = {"stage": self.stage, "characters": self.characters}
        if self.policies:
            body["policies"] = self.policies
        if args.delay is not None:
            body["input_delay"] = args.delay
        if args.start_replay:
            name, _, row = args.start_replay.partition(":")
            body["start"] = {"replay": name, "frame": int(row or 0)}
        return body


class App:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Only what the client uses: no mixer (it would complain on machines without sound).
        pygame.display.init()
        pygame.font.init()
        pygame.joystick.init()
        pygame.display.set_caption("Play the Model")
        self.screen = pygame.display.set_mode(args.size, pygame.RESIZABLE)
        self.clock = pygame.time.Clock()
        self.controls = Controls(ControlsConfig.load(args.controls))
        self.font = pygame.font.Font(None, 30)
        self.big_font = pygame.font.Font(None, 72)
        self.show_overlay = args.overlay
        self.frames_drawn = 0
        # What is made so far (pygame, fonts, assets) lives as long as the window: frozen out
        # of the collector's sight, a full collection does not walk it again. One that did
        # would hold this process for tens of milliseconds, and a local player's inputs,
        # due 33 ms after each frame, would miss their frames (the server's does the same).
        gc.collect()
        gc.freeze()

    # ------------------------------------------------------------------ shared pieces
    def _events(self) -> list[pygame.event.Event]:
        """Every pending event, after the controls have seen it. Quit raises SystemExit-like
        `_Quit` so that every loop ends the same way."""
        events = pygame.event.get()
        for event in events:
            self.controls.handle_event(event)
            if event.type == pygame.QUIT:
                raise _Quit
            if event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
                raise _Quit
            if event.type == pygame.KEYDOWN and event.key == pygame.K_F1:
                self.show_overlay = not self.show_overlay
            if event.type == pygame.VIDEORESIZE:
                self.screen = pygame.display.set_mode(event.size, pygame.RESIZABLE)
        return events

    def _present(self) -> bool:
        """Flip; False once --frames is reached (after saving --screenshot)."""
        pygame.display.flip()
        self.frames_drawn += 1
        if self.args.frames is not None and self.frames_drawn >= self.args.frames:
            self._screenshot()
            return False
        return True

    def _screenshot(self) -> None:
        if self.args.screenshot:
            self.args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            pygame.image.save(self.screen, str(self.args.screenshot))
            log.info("screenshot saved to %s", self.args.screenshot)

    def _message(self, title: str, lines: Sequence[str] = ()) -> None:
        self.screen.fill((14, 16, 28))
        w, h = self.screen.get_size()
        text = self.big_font.render(title, True, TEXT)
        self.screen.blit(text, (w // 2 - text.get_width() // 2, h // 3))
        for i, line in enumerate(lines):
            t = self.font.render(line, True, (150, 152, 170))
            self.screen.blit(t, (w // 2 - t.get_width() // 2, h // 3 + 90 + 34 * i))

    # ------------------------------------------------------------------ replay
    def run_replay(self, path: Path) -> int:
        from client import replay

        recording = replay.load(path)
        log.info("%s: %d frames on %s", path, len(recording), assets.stage_name(recording.stage))
        return ReplayLoop(self, recording).run()

    # ------------------------------------------------------------------ watch
    def run_watch(self, url: str) -> int:
        connection = Connection(ws_url(url), role="spectator")
        welcome = connection.open()
        log.info("watching session %s", welcome.session_id)
        try:
            return LiveLoop(self, connection, local=False).run()
        finally:
            connection.close()

    # ------------------------------------------------------------------ live
    def run_live(self) -> int:
        args = self.args
        server: LocalServer | None = None
        session: Session | None = None
        if args.server:
            base = http_base(args.server)
        else:
            server = self._local_server()
            server.start()
            base = server.url
        try:
            if args.session:
                url = ws_url(f"{base}/v1/sessions/{args.session}/play", args.token)
                return self._play(Connection(url), local=False)
            choice = GameChoice(
                assets.resolve_stage(args.stage),
                [assets.resolve_character(c) for c in args.characters.split(",")],
                dict(args.policies),
            )
            if len(choice.characters) != 2:
                raise ValueError(f"--characters: expected two, got {args.characters!r}")
            if not args.no_menu:
                choice = StartScreen(self, choice, server).run()
                if choice is None:
                    return 0
            if server is not None and not self._wait_for(server):
                return 0
            session = create_session(base, choice.request(args), api_key=args.api_key)
            humans = [p for p in ("1", "2") if p not in choice.policies]
            mine = args.ports.split(",") if args.ports else humans
            if args.lan and not args.ports:
                mine = humans[:1]  # the second human port is the friend's
            if args.lan:
                print(f"\nThe server listens on {base}. On another machine:", flush=True)
            for line in lan.invitation(
                base, session.session_id, session.watch_url, session.tokens, mine
            ):
                print(line, flush=True)
            tokens = [session.tokens[p] for p in mine if p in session.tokens]
            if not tokens:
                raise ValueError("no port to play: every port is a --cpu policy or not in --ports")
            connection = Connection(ws_url(session.play_url, tokens))
            return self._play(connection, local=server is not None and set(mine) >= set(humans))
        finally:
            if session is not None and server is not None:
                delete_session(base, session, args.api_key)
            if server is not None:
                server.stop()  # the server writes each game's game.parquet as it stops
                if session is not None and server.process is not None and server.recordings:
                    folder = server.recordings / f"{session.session_id}-0"
                    print(f"recorded: {folder} (a rematch adds -1, -2, ...)")

    def _local_server(self) -> LocalServer:
        """The local server: on loopback, or with --lan on the LAN address with an API key
        (a server other machines reach needs one; this window sends it, and the people it
        invites need none: a port's token admits its player, the session id a spectator)."""
        args = self.args
        if not args.lan:
            return LocalServer(
                port=args.port, checkpoint=args.checkpoint, recordings=args.recordings
            )
        host = args.lan
        if host == "auto":
            host = lan.lan_address()
            if host is None:
                host = "127.0.0.1"
                print(
                    "playmodel play --lan: this machine has no network address besides "
                    "loopback (no interface up with an address, no default route): the "
                    "server listens on 127.0.0.1, where only this machine can join. Give "
                    "the address with --lan ADDRESS.",
                    file=sys.stderr,
                    flush=True,
                )
        args.api_key = args.api_key or secrets.token_urlsafe(24)
        return LocalServer(
            port=args.port,
            reuse_default=False,
            checkpoint=args.checkpoint,
            recordings=args.recordings,
            host=host,
            api_key=args.api_key,
        )

    def _wait_for(self, server: LocalServer) -> bool:
        """Keep the window alive while the local server loads; False if the user quits."""
        deadline = time.monotonic() + self.args.server_timeout
        try:
            while not server.ready():
                if time.monotonic() > deadline:
                    raise server.gave_up(self.args.server_timeout)
                self._events()
                self._message("Starting the model…", ["loading the local server"])
                pygame.display.flip()
                self.clock.tick(10)
        except _Quit:
            return False
        return True

    def _play(self, connection: Connection, local: bool) -> int:
        welcome = connection.open()
        log.info(
            "session %s: ports %s, delay %d, stage %s",
            welcome.session_id,
            welcome.ports,
            welcome.input_delay,
            welcome.stage_name,
        )
        try:
            return LiveLoop(self, connection, local=local).run()
        finally:
            connection.close()


class _Quit(Exception):
    """The user closed the window or pressed Escape."""


# ---------------------------------------------------------------------- start screen
class StartScreen:
    """Pick the stage, both characters and who plays port 2, with the arrow keys (or a
    gamepad's stick / d-pad) and Enter (or A / Start)."""

    def __init__(self, app: App, choice: GameChoice, server: LocalServer | None):
        self.app = app
        self.server = server
        self.stages = assets.legal_stages()
        self.characters = assets.playable_characters()
        ids = [c for c, _ in self.characters]
        self.values = [
            self.stages.index(choice.stage) if choice.stage in self.stages else 0,
            ids.index(choice.characters[0]) if choice.characters[0] in ids else 0,
            ids.index(choice.characters[1]) if choice.characters[1] in ids else 0,
            _menu_policy_index(choice.policies.get("2")),
        ]
        self.row = 0
        self._previous: ControllerState = ControllerState()

    def choice(self) -> GameChoice:
        stage = self.stages[self.values[0]]
        characters = [self.characters[self.values[1]][0], self.characters[self.values[2]][0]]
        policy = MENU_POLICIES[self.values[3]]
        policies = {} if policy == "human" else {"2": policy.split(": ")[1]}
        return GameChoice(stage, characters, policies)

    def _sizes(self) -> list[int]:
        return [len(self.stages), len(self.characters), len(self.characters), len(MENU_POLICIES)]

    def move(self, d_row: int, d_value: int) -> None:
        self.row = (self.row + d_row) % 4
        self.values[self.row] = (self.values[self.row] + d_value) % self._sizes()[self.row]

    def run(self) -> GameChoice | None:
        try:
            while True:
                for event in self.app._events():
                    if event.type != pygame.KEYDOWN:
                        continue
                    if event.key in (pygame.K_RETURN, pygame.K_KP_ENTER):
                        return self.choice()
                    self.move(
                        {pygame.K_UP: -1, pygame.K_DOWN: 1}.get(event.key, 0),
                        {pygame.K_LEFT: -1, pygame.K_RIGHT: 1}.get(event.key, 0),
                    )
                if self._gamepad_confirms():
                    return self.choice()
                self.draw()
                if not self.app._present():
                    return self.choice()
                self.app.clock.tick(30)
        except _Quit:
            return None

    def _gamepad_confirms(self) -> bool:
        """Gamepads navigate on the edges of the stick and d-pad; A or Start confirms."""
        pad = self.app.controls.pad_for(0)
        if pad is None:
            return False
        now, before = pad.state(), self._previous
        self._previous = now

        def edge(value: float, old: float) -> int:
            return (value > 0.5 and old <= 0.5) - (value < -0.5 and old >= -0.5)

        self.move(-edge(now.stick_y, before.stick_y), edge(now.stick_x, before.stick_x))
        pressed = now.buttons - before.buttons
        return bool(pressed & {"A", "START"})

    def draw(self) -> None:
        screen = self.app.screen
        screen.fill((14, 16, 28))
        w, _ = screen.get_size()
        font, big = self.app.font, self.app.big_font
        title = big.render("PLAY THE MODEL", True, TEXT)
        screen.blit(title, (w // 2 - title.get_width() // 2, 50))
        choice = self.choice()
        rows = [
            ("Stage", assets.stage(choice.stage).display_name, TEXT),
            ("P1", assets.character_name(choice.characters[0]), PORT_COLOURS[1]),
            ("P2", assets.character_name(choice.characters[1]), PORT_COLOURS[2]),
            ("P2 played by", MENU_POLICIES[self.values[3]], PORT_COLOURS[2]),
        ]
        for i, (label, value, colour) in enumerate(rows):
            y = 170 + 60 * i
            text = font.render(f"{label}:", True, (150, 152, 170))
            screen.blit(text, (w // 2 - 220, y))
            value_text = big.render(value.replace("_", " ").title(), True, colour)
            screen.blit(value_text, (w // 2 - 40, y - 14))
            if i == self.row:  # a drawn marker: the default font has no arrow glyphs
                tip, mid = (w // 2 - 232, y + 10), (w // 2 - 246, y + 10)
                pygame.draw.polygon(screen, TEXT, [tip, (mid[0], mid[1] - 8), (mid[0], mid[1] + 8)])
        cpu = {int(port): policy for port, policy in choice.policies.items()}
        lines = [*self.app.controls.describe(cpu), ""]
        if self.server is not None:
            ready = self.server.ready()  # raises ServerError if the server died
            lines.append("server ready" if ready else "starting the local server…")
        lines.append(MENU_KEYS)
        for i, line in enumerate(lines):
            t = font.render(line, True, (150, 152, 170))
            screen.blit(t, (w // 2 - t.get_width() // 2, 440 + 30 * i))


def _menu_policy_index(policy: str | None) -> int:
    for i, name in enumerate(MENU_POLICIES):
        if policy and name.endswith(policy):
            return i
    return 0


# ---------------------------------------------------------------------- live game
class LiveLoop:
    """A session over the network: the players' inputs go up, frames come down."""

    def __init__(self, app: App, connection: Connection, local: bool):
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

    def run(self) -> int:
        app = self.app
        clock, last_ping = InputClock(INPUT_HZ, MAX_CATCH_UP), 0.0
        try:
            while True:
                for event in app._events():
                    if event.type == pygame.KEYDOWN:
                        self._key(event.key)
                now = time.perf_counter()
                for _ in range(clock.due(now)):  # the fixed 60 Hz input clock
                    self._input_tick()
                if now - last_ping > PING_EVERY:
                    self.connection.ping()
                    last_ping = now
                self._receive()
                self._draw()
                if not app._present():
                    return 0
                app.clock.tick(app.args.fps)
        except _Quit:
            return 0

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
        states = {
            port: self.app.controls.state(slot) for slot, port in enumerate(self.welcome.ports)
        }
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


# ---------------------------------------------------------------------- replay
class ReplayLoop:
    """A recorded game at 60 frames per second: Space pauses, Left/Right seek 5 s, Up/Down
    change the speed, Home restarts."""

    SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)

    def __init__(self, app: App, recording: Recording):
        self.app = app
        self.recording = recording
        self.renderer = Renderer(
            app.screen.get_size(), recording.stage, recording.characters, recording.timer_frames
        )
        self.index = float(min(max(app.args.seek, 0), len(recording) - 1))
        self.speed = 2
        self.paused = False

    def run(self) -> int:
        app, rec = self.app, self.recording
        shown, last = -1, time.perf_counter()
        try:
            while True:
                for event in app._events():
                    if event.type == pygame.KEYDOWN:
                        self._key(event.key)
                now = time.perf_counter()
                if not self.paused:
                    self.index += (now - last) * INPUT_HZ * self.SPEEDS[self.speed]
                last = now
                if app.args.frames is not None:  # a fixed number of frames: one per loop
                    self.index = float(app.args.seek + app.frames_drawn)
                self.index = min(max(self.index, 0.0), len(rec) - 1)
                target = int(self.index)
                if target != shown:
                    # Walk through skipped frames so their events still start effects.
                    start = target if target < shown or target - shown > 30 else shown + 1
                    for i in range(max(0, start), target + 1):
                        self.renderer.update(rec.frame(i), INPUT_STEP, snap=shown < 0)
                    shown = target
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
                if not app._present():
                    return 0
                app.clock.tick(app.args.fps)
        except _Quit:
            return 0

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
