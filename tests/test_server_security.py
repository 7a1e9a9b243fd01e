"""Attacks on a live server on loopback (issue 21: items 2-5 and 11), each with what the
server must answer and, where one client could hurt another, a healthy two-player session that
must keep receiving its frames meanwhile."""

from __future__ import annotations

import itertools
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import BaseModel
from server_client import create_session, delete_session, open_play, open_watch, receive_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from core.manifest import load_manifest
from model.config import load_config
from model.game_start import GameSetup
from model.simulation import Simulation
from model.world_model import WorldModel
from server import protocol as P
from server import serve
from server.app import create_app
from server.frame_log import FrameLog
from server.security import is_loopback, with_api_key
from server.serve import ServerThread
from server.settings import ServerSettings

pytestmark = pytest.mark.timeout(300)

MAX_UPLOAD = 1024  # bytes: the body limit is then 64 KiB and a little
MATCH_FRAMES_HELD = 500
POLICIES = """
import time
from os import getcwd  # imported: not a policy of this module
from core.controller import Controller

def explode(frame, player):
    raise RuntimeError("boom")

def sleepy(frame, player):
    time.sleep(0.2)
    return Controller()

def wild(frame, player):
    return Controller(stick_x=float("nan"))

def fine(frame, player):
    return Controller(stick_x=1.0)

def slowish(frame, player):  # well under the time limit: a match that takes a while
    time.sleep(0.01)
    return Controller()
"""


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("policies")
    (folder / "bad.py").write_text(POLICIES, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, policy_folder):
    settings = ServerSettings(
        port=0,
        recordings_dir=tmp_path_factory.mktemp("recordings"),
        max_upload_bytes=MAX_UPLOAD,
        max_spectators=2,
        max_bot_sessions=1,
        max_match_frames_held=MATCH_FRAMES_HELD,
        allow_policy_modules=True,
        policy_folder=policy_folder,
    )
    with ServerThread(settings) as running:
        yield running


class Healthy:
    """A two-player session played from one connection in a thread, for the length of a
    `with` block: both ports send an input for every frame received. Counts the frames and
    the longest wait between two."""

    def __init__(self, server):
        self.server = server
        self.session = create_session(server.url)
        self.times: list[float] = []
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with open_play(self.session) as ws:
                welcome, _ = receive_until(ws, P.Welcome)
                for f in (welcome.frame + 1, welcome.frame + 2):
                    for port in (1, 2):
                        ws.send(P.encode(P.Input(frame=f, port=port)))
                while not self.stop.is_set():
                    message = P.decode_server(ws.recv(timeout=30))
                    if isinstance(message, P.Status) and message.status == "over":
                        ws.send(P.encode(P.Control(action="reset")))
                    if isinstance(message, P.Frame) and not message.corrected:
                        self.times.append(time.monotonic())
                        for port in (1, 2):
                            ws.send(P.encode(P.Input(frame=message.frame + 2, port=port)))
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def __enter__(self) -> Healthy:
        self.thread.start()
        deadline = time.monotonic() + 60
        while len(self.times) < 10:  # playing before the attack starts
            assert self.error is None and time.monotonic() < deadline, self.error
            time.sleep(0.05)
        self.attack_started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.attack_ended = time.monotonic()
        deadline = self.attack_ended + 10
        while len(self.frames_since(self.attack_ended)) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)  # frames after the attack, too
        self.stop.set()
        self.thread.join(timeout=35)
        delete_session(self.server.url, self.session)

    def frames_since(self, start: float) -> list[float]:
        return [t for t in self.times if t >= start]

    def check(self) -> None:
        """It played on through the attack and after it, with no long silence. (Loose bounds:
        these tests run on loaded 2-core machines, where a session may get 15 frames a
        second; what they catch is a tick loop or event loop stalled for seconds.)"""
        assert self.error is None, self.error
        after = self.frames_since(self.attack_ended)
        assert len(after) >= 5, f"the healthy session got {len(after)} frames after the attack"
        during = self.frames_since(self.attack_started)
        gaps = [b - a for a, b in itertools.pairwise(during)]
        assert max(gaps) < 2.0, f"the healthy session waited {max(gaps):.2f} s for a frame"


def close_code(ws) -> int:
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=30)
    return ws.close_code if ws.close_code is not None else ws.protocol.close_rcvd.code


def http_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the HTTP response on `sock` (read until the server closes)."""
    data = b""
    sock.settimeout(30)
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ---------------------------------------------------------------------------- 2: body size
def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(server):
    limit = server.settings.body_limit()
    with (
        Healthy(server) as healthy,
        socket.create_connection(("127.0.0.1", server.settings.port)) as s,
    ):
        # 256 MB announced; not a byte of it sent: the answer must not wait for it.
        s.sendall(
            b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 268435456\r\n\r\n"
        )
        status, body = http_response(s)
    assert status == 413
    assert b"268,435,456" in body and f"{limit:,}".encode() in body
    assert b"PLAYMODEL_MAX_BODY_BYTES" in body
    healthy.check()


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(server):
    limit = server.settings.body_limit()
    chunk = b"x" * 4096
    with (
        Healthy(server) as healthy,
        socket.create_connection(("127.0.0.1", server.settings.port)) as s,
    ):
        s.sendall(
            b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        # One chunk past the limit, and the body never ends (no last chunk): a server that
        # waits for the whole body never answers. (Sending on would race the server's close:
        # closed with unread data, its socket resets and the answer is lost.)
        for _ in range(limit // len(chunk) + 1):
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        status, body = http_response(s)
    assert status == 413
    assert b"the request body is over this server's limit" in body
    healthy.check()


class UploadBody(BaseModel):  # at module level: FastAPI resolves the annotation from here
    data: str


def test_a_refused_body_is_not_held_after_its_request():
    """The framework wraps the limit's error in its own, and that chain's frames held every
    chunk read up to the limit, kept by uvicorn after the answer: 21 MB stayed in use after
    each refused upload."""
    import tracemalloc

    import uvicorn
    from fastapi import FastAPI

    from server.security import BodySizeLimit

    app = FastAPI()

    @app.post("/upload")
    async def upload(body: UploadBody) -> dict:
        return {}

    limit, chunk = 4 << 20, b"A" * 4096
    config = uvicorn.Config(BodySizeLimit(app, limit), host="127.0.0.1", port=0, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(limit // len(chunk) + 1):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            status, _ = http_response(s)
        time.sleep(0.5)  # the server done with the request
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        server.should_exit = True
        thread.join(timeout=10)
    assert status == 413
    assert held < limit // 4, f"{held:,} bytes still held after the request"


def test_the_default_body_limit_fits_the_largest_upload():
    settings = ServerSettings()
    base64_upload = -(-settings.max_upload_bytes // 3) * 4
    assert base64_upload < settings.body_limit() <= base64_upload + 64 * 1024
    assert ServerSettings(max_body_bytes=1000).body_limit() == 1000


# ---------------------------------------------------------------------------- 3: matches' memory
def test_a_match_in_flight_holds_its_frames_compactly():
    torch.manual_seed(0)
    sim = Simulation(WorldModel(load_config("mamba2-small")), 0.0, "cpu", False, False)
    game = sim.new_game(GameSetup(stage=31, characters=(1, 22)))
    frame = sim.frame(game)
    raw = sum(v.numel() * v.element_size() for v in frame.values())
    log = FrameLog(limit=600)
    expected = []
    for _ in range(300):  # a frame at a time, as a match between live ticks advances
        sim.step({})
        one = {k: v.unsqueeze(0) for k, v in sim.frame(game).items()}
        expected.append(one)
        log.extend(one)
    assert len(log) == 300
    # The arrays are at most twice what they hold (growth by doubling), ~1 KB a frame; a
    # dict of tensors per frame held 41 KB.
    assert log.nbytes <= 2 * 300 * raw
    frames = log.frames()
    for name in frame:
        assert torch.equal(frames[name], torch.cat([e[name] for e in expected])), name


def test_matches_past_the_memory_limit_get_503_and_the_oldest_results_make_room(server):
    first = httpx.post(f"{server.url}/v1/matches", json={"max_frames": 300, "p2": "noop"})
    assert first.status_code == 202, first.text
    # 301 + 301 frames held > 500 while the first is queued or running.
    second = httpx.post(f"{server.url}/v1/matches", json={"max_frames": 300})
    assert second.status_code == 503
    assert "PLAYMODEL_MAX_MATCH_FRAMES_HELD" in second.json()["detail"]
    assert second.headers["Retry-After"]
    match_id = first.json()["match_id"]
    done = httpx.get(f"{server.url}/v1/matches/{match_id}", params={"wait": True}, timeout=120)
    assert done.json()["status"] == "done"
    # Finished, its frames are forgotten to make room for a new one...
    third = httpx.post(f"{server.url}/v1/matches", json={"max_frames": 300})
    assert third.status_code == 202, third.text
    assert match_id not in server.app.state.matches.jobs
    # ...and it is still answered, from its recording.
    time.sleep(1.0)  # the recording is written by the writer thread
    again = httpx.get(f"{server.url}/v1/matches/{match_id}").json()
    assert again["status"] == "done" and again["from_recording"]
    assert again["summary"] == done.json()["summary"]
    httpx.get(f"{server.url}/v1/matches/{third.json()['match_id']}?wait=true", timeout=120)


# ---------------------------------------------------------------------------- 4: authorization
def test_reset_and_delete_need_the_sessions_own_token(server):
    with Healthy(server) as healthy:
        victim = healthy.session["session_id"]
        other = create_session(server.url, policies={"2": "noop"})
        url = f"{server.url}/v1/sessions/{victim}"
        anonymous = httpx.delete(url)
        assert anonymous.status_code == 401
        assert "X-Session-Token" in anonymous.json()["detail"]
        for token in (other["session_token"], other["tokens"]["1"], "x" * 48):
            wrong = httpx.delete(url, headers={"X-Session-Token": token})
            assert wrong.status_code == 403, wrong.text
            assert victim in wrong.json()["detail"]
            reset = httpx.post(f"{url}/reset", headers={"X-Session-Token": token})
            assert reset.status_code == 403
        # A port token of its own session resets it (as the player's control message does),
        # but only the creator's token deletes it.
        own_port = {"X-Session-Token": healthy.session["tokens"]["2"]}
        assert httpx.delete(url, headers=own_port).status_code == 403
        assert httpx.post(f"{url}/reset", headers=own_port).status_code == 200
        time.sleep(1.0)
        assert httpx.get(url).json()["status"] == "running"
        delete_session(server.url, other)
    healthy.check()


def test_a_finished_match_is_deleted_only_with_its_own_token(server):
    accepted = httpx.post(f"{server.url}/v1/matches", json={"max_frames": 400})  # a second or so
    other = httpx.post(f"{server.url}/v1/matches", json={"max_frames": 30})
    assert accepted.status_code == other.status_code == 202, accepted.text
    match_id, token = accepted.json()["match_id"], accepted.json()["match_token"]
    url = f"{server.url}/v1/matches/{match_id}"
    anonymous = httpx.delete(url)
    assert anonymous.status_code == 401 and "X-Match-Token" in anonymous.json()["detail"]
    for wrong in (other.json()["match_token"], "x" * 48):
        refused = httpx.delete(url, headers={"X-Match-Token": wrong})
        assert refused.status_code == 403 and match_id in refused.json()["detail"]
    playing = httpx.delete(url, headers={"X-Match-Token": token})
    assert playing.status_code == 409 and "once it has ended" in playing.json()["detail"]
    done = httpx.get(url, params={"wait": True}, timeout=120).json()
    assert done["status"] == "done"
    assert httpx.get(f"{url}/frames").status_code == 200  # made and kept by the cache
    assert httpx.delete(url, headers={"X-Match-Token": token}).status_code == 204
    assert match_id not in server.app.state.matches.jobs
    assert not [key for key in server.app.state.downloads.bodies if key[0] == match_id]
    assert httpx.get(f"{url}/frames").status_code == 404  # its frames are gone...
    time.sleep(1.0)  # (the recording is written by the writer thread)
    again = httpx.get(url).json()  # ...its recording stays
    assert again["from_recording"] and again["summary"] == done["summary"]
    other_id = other.json()["match_id"]
    httpx.get(f"{server.url}/v1/matches/{other_id}", params={"wait": True}, timeout=120)


def test_spectators_past_the_cap_are_refused(server):
    with Healthy(server) as healthy:
        watchers = [open_watch(healthy.session) for _ in range(2)]
        for ws in watchers:
            receive_until(ws, P.Welcome)
        # Refused before its hello: the answer may come before the client could send one.
        with connect(healthy.session["watch_url"], open_timeout=30) as extra:
            error, _ = receive_until(extra, P.Error)
            assert error.code == "full" and "PLAYMODEL_MAX_SPECTATORS=2" in error.message
            assert close_code(extra) == P.CLOSE_TRY_AGAIN_LATER
        receive_until(watchers[0], P.Frame)  # the admitted ones still watch
        for ws in watchers:
            ws.close()
    healthy.check()


def test_sessions_of_two_policies_are_capped(server):
    bots = {"policies": {"1": "approach", "2": "random"}}
    first = create_session(server.url, **bots)
    refused = httpx.post(f"{server.url}/v1/sessions", json=bots)
    assert refused.status_code == 503
    assert "PLAYMODEL_MAX_BOT_SESSIONS=1" in refused.json()["detail"]
    delete_session(server.url, first)
    second = create_session(server.url, **bots)  # room again
    delete_session(server.url, second)


def test_a_server_reachable_from_outside_needs_a_key(monkeypatch, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.5")
    assert with_api_key(ServerSettings()) == (ServerSettings(), None)  # loopback: keyless
    kept, made = with_api_key(ServerSettings(host="0.0.0.0", api_key="mine"))
    assert made is None and kept.api_key.get_secret_value() == "mine"
    with pytest.raises(ValueError, match="PLAYMODEL_API_KEY"):
        create_app(ServerSettings(host="0.0.0.0"))
    # `playmodel serve --host 0.0.0.0` without a key makes one up, prints it, serves with it.
    served = []

    class NoServer:
        def run(self):
            pass

    monkeypatch.setattr(serve, "make_server", lambda s, level: served.append(s) or NoServer())
    assert serve.main(["--host", "0.0.0.0", "--port", "8123"]) == 0
    key = served[0].api_key.get_secret_value()
    assert len(key) >= 32 and key in capsys.readouterr().err


# ---------------------------------------------------------------------------- 5: module policies
def test_module_policies_outside_the_allow_list_are_never_imported(server):
    for module in ("wave", "tabnanny"):  # in the standard library, not imported yet
        assert module not in sys.modules
        bad = httpx.post(f"{server.url}/v1/matches", json={"p1": f"{module}:open"})
        assert bad.status_code == 400
        assert f"module {module!r} is not in an allowed package" in bad.json()["detail"]
        assert module not in sys.modules
    for spec, reason in (
        ("os:getpid", "module 'os' is not in an allowed package"),
        ("../bad:explode", "is not a policy"),
        ("bad:_private", "is private"),
        ("bad:nothing", "has no 'nothing'"),
        ("bad:getcwd", "comes from 'posix'"),
    ):
        bad = httpx.post(f"{server.url}/v1/sessions", json={"policies": {"2": spec}})
        assert bad.status_code == 400, spec
        assert bad.json()["detail"].startswith("policies.2: ") and reason in bad.json()["detail"]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("bad:explode", "raised RuntimeError: boom"),
        ("bad:sleepy", "over the limit of 50 ms"),
        ("bad:wild", "raised ValueError: stick_x nan is outside -1..1"),
    ],
)
def test_a_failing_policy_ends_only_its_own_session(server, spec, reason):
    with Healthy(server) as healthy:
        session = create_session(server.url, policies={"2": spec})
        with open_play(session, ports=(1,)) as ws:
            error, _ = receive_until(ws, P.Error)
            assert error.code == "session_failed" and reason in error.message
            assert f"policy {spec!r}" in error.message  # names the policy
            assert close_code(ws) == P.CLOSE_INTERNAL_ERROR
        gone = httpx.get(f"{server.url}/v1/sessions/{session['session_id']}")
        assert gone.status_code == 404
    healthy.check()


def test_a_failing_policy_fails_only_its_own_match(server):
    # (No live session meanwhile: matches run in the time ticks leave, which a loaded 2-core
    # machine may not leave at all.)
    bad = httpx.post(f"{server.url}/v1/matches", json={"p1": "bad:explode", "max_frames": 60})
    good = httpx.post(f"{server.url}/v1/matches", json={"p1": "bad:fine", "max_frames": 60})
    assert bad.status_code == good.status_code == 202
    results = {
        name: httpx.get(
            f"{server.url}/v1/matches/{r.json()['match_id']}?wait=true", timeout=120
        ).json()
        for name, r in (("bad", bad), ("good", good))
    }
    assert results["bad"]["status"] == "failed"
    assert "raised RuntimeError: boom" in results["bad"]["error"]
    assert results["good"]["status"] == "done"
    assert results["good"]["summary"]["frames"] == 60


# ---------------------------------------------------------------------------- 11: a killed server
def test_what_a_killed_server_left_is_finished_at_the_next_start(server, tmp_path):
    """The recordings folder as a kill -9 leaves it (copied while a game and a match were in
    progress) is finished by the next server: parts merged, manifest rows, the match `lost`."""
    recordings = Path(server.settings.recordings_dir)
    left = tmp_path / "recordings"
    left.mkdir()
    session = create_session(server.url)
    game = f"{session['session_id']}-0"
    with open_play(session) as ws:
        welcome, _ = receive_until(ws, P.Welcome)
        for f in (welcome.frame + 1, welcome.frame + 2):
            for port in (1, 2):
                ws.send(P.encode(P.Input(frame=f, port=port)))
        deadline = time.monotonic() + 60
        while len(list((recordings / game / "parts").glob("*.parquet"))) < 2:
            frame, _ = receive_until(ws, P.Frame)
            for port in (1, 2):
                ws.send(P.encode(P.Input(frame=frame.frame + 2, port=port)))
            assert time.monotonic() < deadline
        shutil.copytree(recordings / game, left / game)  # mid-game: parts, no game.parquet
    delete_session(server.url, session)
    match = httpx.post(
        f"{server.url}/v1/matches", json={"p1": "bad:slowish", "max_frames": 300}
    ).json()["match_id"]
    deadline = time.monotonic() + 30
    while not (recordings / match / "info.json").exists():  # written by the writer thread
        assert time.monotonic() < deadline
        time.sleep(0.05)
    shutil.copytree(recordings / match, left / match)  # queued or running: info.json only
    assert '"queued"' in (left / match / "info.json").read_text()
    httpx.get(f"{server.url}/v1/matches/{match}?wait=true", timeout=120)
    assert not (left / game / "game.parquet").exists()
    written = sum(pq.read_metadata(p).num_rows for p in (left / game / "parts").glob("*.parquet"))

    with ServerThread(ServerSettings(port=0, recordings_dir=left)) as restarted:
        lost = httpx.get(f"{restarted.url}/v1/matches/{match}")
        assert lost.status_code == 200
        assert lost.json()["status"] == "lost" and "submit it again" in lost.json()["error"]
        recording = httpx.get(f"{restarted.url}/v1/sessions/{session['session_id']}/recording")
        assert recording.status_code == 200
        assert httpx.get(f"{restarted.url}/v1/matches/nosuchmatch").status_code == 404
    assert (left / game / "game.parquet").exists() and not (left / game / "parts").exists()
    manifest = load_manifest(left)
    row = manifest[f"{game}/game.parquet"]
    assert row["status"] == "ok" and row["frames"] == written
    assert '"interrupted"' in (left / game / "info.json").read_text()
