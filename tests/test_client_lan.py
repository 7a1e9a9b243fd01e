"""Inviting a friend: `playmodel play --lan` binds the local server to an address other
machines reach, with an API key, and prints the commands and the browser page a second
player and spectators use. The end-to-end test runs the host and the friend as two
processes, as two machines would, on addresses of this machine."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import httpx
import pytest

from client import app, lan
from client.app import App, parse_args
from client.rest import ws_url

ROOT = Path(__file__).resolve().parent.parent


def test_lan_address_is_an_address_of_this_machine_other_than_loopback():
    address = lan.lan_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    assert not address.startswith("127.")
    with socket.socket() as s:  # only an address of this machine can be bound
        s.bind((address, 0))


class _NoRoute:
    """A socket whose connect fails as it does on a machine with no default route."""

    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def connect(self, address):
        raise OSError(101, "Network is unreachable")


def test_without_a_route_the_address_comes_from_the_host_name(monkeypatch):
    def resolve(addresses):
        return lambda *args: [(socket.AF_INET, 0, 0, "", (a, 0)) for a in addresses]

    monkeypatch.setattr(lan.socket, "socket", _NoRoute)
    monkeypatch.setattr(lan.socket, "getaddrinfo", resolve(["127.0.1.1", "192.168.1.23"]))
    assert lan.lan_address() == "192.168.1.23"
    monkeypatch.setattr(lan.socket, "getaddrinfo", resolve(["127.0.1.1"]))
    assert lan.lan_address() is None


def test_no_lan_address_falls_back_to_loopback_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(lan, "lan_address", lambda: None)
    server = App(parse_args(["--lan"]))._local_server()
    assert server.host == "127.0.0.1" and server.api_key
    assert "--lan ADDRESS" in capsys.readouterr().err


def test_lan_options():
    args = parse_args(["--lan"])
    assert args.lan == "auto" and args.port is None
    assert parse_args(["--lan", "10.0.0.5", "--port", "8123"]).lan == "10.0.0.5"
    with pytest.raises(SystemExit):
        parse_args(["--lan", "--server", "http://x:8000"])
    # an explicit key is used, not replaced
    server = App(parse_args(["--lan", "127.0.0.2", "--api-key", "k3y"]))._local_server()
    assert (server.host, server.api_key, server._reuse) == ("127.0.0.2", "k3y", False)


def test_invitation_names_the_other_port_and_both_ways_to_watch():
    lines = lan.invitation(
        "http://10.0.0.5:8123",
        "abc123",
        "ws://10.0.0.5:8123/v1/sessions/abc123/watch",
        {"1": "t1", "2": "t2"},
        mine=["1"],
    )
    assert lines == [
        "player 2: playmodel play --server http://10.0.0.5:8123 --session abc123 --token t2",
        "spectators: playmodel play --watch ws://10.0.0.5:8123/v1/sessions/abc123/watch",
        "  or in a browser: http://10.0.0.5:8123/watch/abc123",
    ]


def test_play_prints_the_browser_page_beside_the_watch_command(capsys):
    """`make play` (a local game for two at one machine): the spectators' lines only."""
    assert app.main(["--no-menu", "--cpu", "2:noop", "--frames", "5", "--recordings", ""]) == 0
    out = capsys.readouterr().out
    watch = next(line for line in out.splitlines() if line.startswith("spectators:"))
    page = next(line for line in out.splitlines() if "in a browser:" in line)
    session_id = watch.rsplit("/", 2)[-2]
    assert page.endswith(f"/watch/{session_id}") and page.split()[-1].startswith("http://127.")
    assert "player 2:" not in out


def _playmodel(*args: str, frames: int) -> subprocess.CompletedProcess:
    """A printed `playmodel play ...` command, run as a user on another machine would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SDL_VIDEODRIVER": "dummy"}
    return subprocess.run(
        [sys.executable, "-m", "playmodel", *args, "--frames", str(frames)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.parametrize("address", ["127.0.0.2", "auto"])
def test_a_friend_joins_and_watches_with_the_printed_commands(address, tmp_path):
    if address == "auto" and lan.lan_address() is None:
        pytest.skip("this machine has no network address besides loopback")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SDL_VIDEODRIVER": "dummy",
        "PLAYMODEL_RECORDINGS_DIR": "",
    }
    env.pop("PLAYMODEL_API_KEY", None)
    argv = [sys.executable, "-m", "playmodel", "play", "--lan"]
    argv += [] if address == "auto" else [address]
    host = subprocess.Popen(
        [*argv, "--no-menu", "--frames", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        # Ctrl-C as in a terminal: a suite run in the background (nohup, `&`) passes its
        # children SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(host.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 150
        while not any("in a browser:" in line for line in printed):
            assert host.poll() is None, "".join(printed)
            assert time.monotonic() < deadline, "".join(printed)
            time.sleep(0.2)
        lines = dict(
            (key.strip(), value.strip())
            for key, sep, value in (line.partition(":") for line in printed)
            if sep
        )
        base = next(line for line in printed if "The server listens on" in line).split()[4]
        base = base.rstrip(".")
        bound = lan.lan_address() if address == "auto" else address
        assert base.startswith(f"http://{bound}:")
        port = int(base.rsplit(":", 1)[1])

        # The server listens on the chosen address, and only there.
        assert httpx.get(f"{base}/healthz", timeout=10).json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        # It has an API key: the REST API refuses a caller without it.
        assert httpx.get(f"{base}/v1/sessions", timeout=10).status_code == 401
        # The browser page answers, with no key.
        page = httpx.get(lines["or in a browser"], timeout=10)
        assert page.status_code == 200 and "<canvas" in page.text

        # The second player and a spectator, with the commands as printed.
        join = shlex.split(lines["player 2"])
        watch = shlex.split(lines["spectators"])
        assert join[:2] == watch[:2] == ["playmodel", "play"]
        assert "player 1" not in lines  # this window plays port 1
        results = {}
        threads = [
            threading.Thread(target=lambda: results.update(join=_playmodel(*join[1:], frames=90))),
            threading.Thread(
                target=lambda: results.update(watch=_playmodel(*watch[1:], frames=60))
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results["join"].returncode == 0, results["join"].stderr[-2000:]
        assert "ports [2]" in results["join"].stderr  # the friend played port 2
        assert results["watch"].returncode == 0, results["watch"].stderr[-2000:]
        assert "watching session" in results["watch"].stderr
        assert ws_url(lines["spectators"].split()[-1]).startswith(f"ws://{bound}:{port}/")
    finally:
        # Ctrl-C, as a user closes it from the terminal: the window stops its server.
        host.send_signal(signal.SIGINT)
        host.wait(timeout=30)
    reader.join(timeout=10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=5)
