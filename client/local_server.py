"""A game server in a subprocess for `playmodel play`: started on a free port (or the one
already answering on the default port), watched until /healthz answers, stopped at the end.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client.rest import ServerError, healthy

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
