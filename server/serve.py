"""`playmodel serve [--host H] [--port P]`: run the live game server on uvicorn.

Settings come from `PLAYMODEL_*` environment variables (server/settings.py); the options here
override them. On shutdown (Ctrl-C, SIGTERM) every connected client first receives a `bye`
message and a close with code 1001, then the server stops.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from model.quantize import QUANTIZE_CHOICES
from server.app import create_app
from server.security import with_api_key
from server.settings import ServerSettings
from server.websocket_keepalive import PING_INTERVAL_S, READ_TIMEOUT_S, GameWebSocketProtocol

log = logging.getLogger(__name__)

WS_MAX_BYTES = 64 * 1024  # uvicorn closes with 1009 above this; the app's own limit is lower


TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Port tokens are secrets: uvicorn logs each websocket's path with its query string,
    so `token=...` is replaced before any handler sees the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                TOKEN_IN_URL.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in args
            )
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = TOKEN_IN_URL.sub(r"\1[redacted]", record.msg)
        return True


def redact_tokens_in_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


class GameServer(uvicorn.Server):
    """uvicorn, but clients hear `bye` before uvicorn starts closing connections."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self.game_app = app

    async def shutdown(self, sockets=None) -> None:
        live = getattr(self.game_app.state, "sockets", None)
        if live is not None:
            await live.close_all("server shutting down")
        await super().shutdown(sockets)


def make_server(settings: ServerSettings, log_level: str = "info") -> GameServer:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # websockets' sans-I/O protocol, whose pings also find clients that stopped reading.
        ws=GameWebSocketProtocol,
        ws_ping_interval=PING_INTERVAL_S,
        ws_ping_timeout=READ_TIMEOUT_S,
        ws_max_size=WS_MAX_BYTES,
        # A frame message is a few hundred bytes of msgpack sent 60 times a second per client:
        # deflating it costs both ends more CPU than the bytes it saves (it showed in profiles
        # of the loaded server), so the extension is not offered.
        ws_per_message_deflate=False,
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )
    redact_tokens_in_logs()  # after uvicorn's logging set-up
    return GameServer(config, app)


class ServerThread:
    """The real server on a loopback port in a background thread (tests and benchmarks).

    with ServerThread(ServerSettings(port=0)) as server:
        requests.post(server.url + "/v1/sessions", json={})
    """

    def __init__(self, settings: ServerSettings, log_level: str = "warning"):
        if settings.port == 0:
            settings = settings.model_copy(update={"port": free_port(settings.host)})
        self.settings = settings
        self.url = f"http://{settings.host}:{settings.port}"
        self.ws_url = f"ws://{settings.host}:{settings.port}"
        self.server = make_server(settings, log_level)
        self.thread = threading.Thread(target=self._run, name="game-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    @property
    def app(self):
        return self.server.game_app

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def with_absolute_recordings(settings: ServerSettings) -> ServerSettings:
    """The recordings folder made absolute, against the folder the command runs in, and said:
    `playmodel play`'s local server (started in the repository's folder) is given the same
    folder, resolved against the folder `play` runs in, so both record to one place."""
    folder = settings.recordings_dir
    if not folder or str(folder) == ".":
        log.info("games are not recorded (RECORDINGS_DIR is empty)")
        return settings
    folder = folder.expanduser().resolve()
    log.info("games are recorded in %s", folder)
    return settings.model_copy(update={"recordings_dir": folder})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playmodel serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled demo checkpoint")
    parser.add_argument("--config", help="serve an UNTRAINED model of this config (load tests)")
    parser.add_argument("--device", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--max-sessions", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, help="on CPU, int8 mixer and head weights (faster)"
    )
    parser.add_argument("--tick-rate", type=float)
    parser.add_argument(
        "--recordings",
        metavar="DIR",
        help="where games are recorded (default runs/recordings in the current folder; '' "
        "records nothing)",
    )
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "checkpoint": args.checkpoint,
            "untrained_config": args.config,
            "device": args.device,
            "max_sessions": args.max_sessions,
            "tick_rate": args.tick_rate,
            "threads": args.threads,
            "quantize": args.quantize,
            "recordings_dir": args.recordings,
        }.items()
        if value is not None
    }
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as e:
        for error in e.errors():
            field = ".".join(str(p) for p in error["loc"])
            log.error("setting %s (PLAYMODEL_%s): %s", field, field.upper(), error["msg"])
        return 2
    settings = with_absolute_recordings(settings)
    checkpoint = settings.resolved_checkpoint()
    if checkpoint is not None and not checkpoint.is_file():
        log.error("checkpoint %s does not exist", checkpoint)
        return 2
    settings, made_up_key = with_api_key(settings)
    if made_up_key is not None:
        # Printed, not logged: the key is for the operator's eyes on this terminal, and log
        # files travel further than a terminal does.
        print(
            f"The server listens on {settings.host}, reachable from other machines, and "
            "PLAYMODEL_API_KEY is not set: REST calls need this key (header X-API-Key; "
            f"playmodel play --api-key KEY), until the server stops:\n\n    {made_up_key}\n\n"
            "Set PLAYMODEL_API_KEY to keep one key across restarts.",
            file=sys.stderr,
            flush=True,
        )
    make_server(settings, args.log_level).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
