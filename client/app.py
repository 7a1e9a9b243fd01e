"""`playmodel play`: the window where people play the model (docs/CLIENT.md).

    playmodel play                               # local server, start screen, two players
    playmodel play --stage fd --characters fox,marth --no-menu
    playmodel play --cpu 2:approach              # play against a scripted policy
    playmodel play --lan                         # a friend on the LAN plays port 2
    playmodel play --server http://HOST:8000     # create a session on another server
    playmodel play --server http://HOST:8000 --session ID --token T   # join one
    playmodel play --watch ws://HOST:8000/v1/sessions/ID/watch        # spectate
    playmodel play --replay game.slp             # play back a real game (or a .parquet)

The window and its screens live in their own modules: `client.window` (events, flip, the
frame loop), `client.start_screen`, and `client.loops` (a live game, a replay).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pygame

from client import assets, lan
from client.connection import Connection
from client.local_server import LocalServer
from client.loops import LiveLoop, ReplayLoop
from client.rest import ServerError, Session, create_session, delete_session, http_base, ws_url
from client.start_screen import GameChoice, StartScreen
from client.window import Window, WindowClosed

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1280, 720)


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


class App(Window):
    """`playmodel play`'s three modes in the window: a live game, spectating, a replay."""

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
        except WindowClosed:
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
