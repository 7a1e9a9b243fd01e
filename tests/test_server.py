"""The live server, for real: uvicorn on loopback, websockets and REST from client threads.

The model is the untrained small config (no demo checkpoint is bundled yet): its games end
quickly, so long sessions reset themselves when a game ends, which also exercises reset.
"""

from __future__ import annotations

import threading
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from server_client import (
    create_session,
    delete_session,
    open_play,
    open_watch,
    receive,
    receive_until,
)
from websockets.exceptions import ConnectionClosed

from core.controller import BUTTON_BITS, Controller
from server import protocol as P
from server.serve import ServerThread
from server.settings import ServerSettings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    recordings = tmp_path_factory.mktemp("recordings")
    settings = ServerSettings(port=0, max_sessions=16, recordings_dir=recordings)
    with ServerThread(settings) as running:
        yield running


def stick_for(frame: int, port: int) -> float:
    """A distinct, exactly representable stick value per frame and port."""
    return round(((frame * 7 + port * 3) % 17) / 16 - 0.5, 4)


def play_both_ports(
    ws, frames: int, delay: int, check_echo: bool = True, copies: int = 0, drop=None
) -> list[P.Frame]:
    """Drive both ports from one connection for `frames` frames, resetting whenever the game
    ends; checks frame order and that each frame was made with the inputs stamped for it.
    `copies`: each input carries the controllers of that many frames before it; `drop(frame,
    port)`: True for the inputs never sent (lost on the way)."""
    received: list[P.Frame] = []
    welcome, _ = receive_until(ws, P.Welcome)
    last = welcome.frame
    sent: dict[tuple[int, int], float] = {}

    def send(frame: int, port: int) -> None:
        sent[(frame, port)] = stick_for(frame, port)
        if drop is not None and drop(frame, port):
            return
        previous = [P.Controller(stick_x=stick_for(frame - 1 - i, port)) for i in range(copies)]
        message = P.Input(frame=frame, port=port, stick_x=sent[(frame, port)], previous=previous)
        ws.send(P.encode(message))

    def send_inputs(current: int) -> None:
        for port in (1, 2):
            send(current + delay, port)

    for f in range(last + 1, last + 1 + delay):  # the first `delay` frames
        for port in (1, 2):
            send(f, port)
    while len(received) < frames:
        message = receive(ws)
        if isinstance(message, P.Status) and message.status == "over":
            ws.send(P.encode(P.Control(action="reset")))
            while True:  # frames stepped before the reset may still arrive
                status = receive(ws)
                if isinstance(status, P.Status) and status.reason == "reset":
                    break
            last = status.frame
            sent.clear()
            for f in range(last + 1, last + 1 + delay):
                for port in (1, 2):
                    send(f, port)
            continue
        if not isinstance(message, P.Frame):
            continue
        if message.corrected:  # a rollback re-made a frame already received: replace it
            index = max(i for i, f in enumerate(received) if f.frame == message.frame)
            received[index] = message
            continue
        assert message.frame == last + 1, f"frame {message.frame} after {last}"
        last = message.frame
        received.append(message)
        if check_echo:
            for player in message.players:
                if player.port not in message.substituted:
                    assert player.stick_x == pytest.approx(sent[(message.frame, player.port)])
        send_inputs(message.frame)
    return received


def test_two_players_and_a_spectator_for_600_frames(server):
    session = create_session(server.url, input_delay=2)
    p1 = open_play(session, ports=(1,))
    p2 = open_play(session, ports=(2,))
    spectator = open_watch(session)
    seen = {1: [], 2: []}

    def player(ws, port):
        welcome, _ = receive_until(ws, P.Welcome)
        assert welcome.ports == [port]
        last = welcome.frame
        for f in range(last + 1, last + 3):
            ws.send(
                P.encode(P.Input(frame=f, port=port, stick_x=stick_for(f, port), buttons=["A"]))
            )
        while len(seen[port]) < 600:
            message = receive(ws)
            if isinstance(message, P.Status) and message.status == "over" and port == 1:
                ws.send(P.encode(P.Control(action="reset")))
            if not isinstance(message, P.Frame):
                continue
            if message.corrected:  # a rollback re-made a frame already received: replace it
                index = max(i for i, f in enumerate(seen[port]) if f.frame == message.frame)
                seen[port][index] = message
                continue
            seen[port].append(message)
            target = message.frame + 2
            ws.send(
                P.encode(
                    P.Input(frame=target, port=port, stick_x=stick_for(target, port), buttons=["A"])
                )
            )

    threads = [threading.Thread(target=player, args=(ws, p)) for ws, p in ((p1, 1), (p2, 2))]
    for t in threads:
        t.start()
    watched = []
    receive_until(spectator, P.Welcome)
    while any(t.is_alive() for t in threads):
        try:
            message = receive(spectator, timeout=5)
        except TimeoutError:
            continue
        if isinstance(message, P.Frame):
            watched.append(message.frame)
    for t in threads:
        t.join()

    # Both players saw the same frames, in order (a reset restarts the count at the start).
    assert [f.frame for f in seen[1]] == [f.frame for f in seen[2]]
    starts = 0
    for before, after in zip(seen[1], seen[1][1:], strict=False):
        if after.frame != before.frame + 1:
            assert after.frame == -122, "frames only jump back to the start, on a reset"
            starts += 1
    # Both players' inputs took effect at the frame they were stamped for.
    checked = 0
    for frame in seen[1]:
        for player in frame.players:
            if player.port not in frame.substituted:
                assert player.stick_x == pytest.approx(stick_for(frame.frame, player.port))
                assert player.buttons & BUTTON_BITS["A"]
                checked += 1
    assert checked > 1000, "most inputs arrived in time"
    assert len(watched) > 100
    delete_session(server.url, session)
    for ws in (p1, p2, spectator):
        ws.close()


def test_one_connection_drives_both_ports_and_inputs_land_on_their_frame(server):
    session = create_session(server.url, input_delay=3, stage="fd", characters=["MARTH", "SHEIK"])
    assert session["stage"] == 32
    with open_play(session, ports=(1, 2)) as ws:
        frames = play_both_ports(ws, 200, delay=3)
    assert len(frames) == 200
    state = httpx.get(f"{server.url}/v1/sessions/{session['session_id']}").json()
    assert state["status"] in ("paused", "running", "over")
    delete_session(server.url, session)


def test_inputs_lost_on_the_way_are_recovered_from_the_next_inputs_copies(server):
    """Every fourth input of port 2 is never sent, and each input carries copies of the 8
    frames before it: every frame ends up made with the input stamped for it (from the copy
    at its step, or by a rollback when the copy came after it) and the server loses none."""
    session = create_session(server.url, input_delay=2)
    with open_play(session, ports=(1, 2)) as ws:
        frames = play_both_ports(
            ws,
            300,
            delay=2,
            copies=P.REDUNDANT_INPUTS,
            drop=lambda f, port: port == 2 and f % 4 == 0,
        )
    settled = [f for f in frames[:-10] if f.frame > -120]  # the last ones may still be re-made
    for frame in settled:
        assert frame.substituted == [], f"frame {frame.frame} was kept with a substitute"
        for player in frame.players:
            assert player.stick_x == pytest.approx(stick_for(frame.frame, player.port))
    state = httpx.get(f"{server.url}/v1/sessions/{session['session_id']}").json()
    assert state["lost_inputs"] == {"1": 0, "2": 0}
    assert state["recovered_inputs"]["2"] >= 60  # about one in four of port 2's inputs
    assert "playmodel_recovered_inputs_total" in httpx.get(f"{server.url}/metrics").text
    delete_session(server.url, session)


def test_eight_concurrent_sessions(server):
    sessions = [create_session(server.url) for _ in range(8)]
    results: dict[int, list] = {}
    errors = []

    def run(i):
        try:
            with open_play(sessions[i]) as ws:
                results[i] = play_both_ports(ws, 120, delay=2)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(len(results[i]) == 120 for i in range(8))
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "playmodel_tick_seconds_count" in metrics
    # The tests' server runs the trace (conftest turns the compiled step off).
    assert httpx.get(f"{server.url}/healthz").json()["step"] == "trace"
    for s in sessions:
        delete_session(server.url, s)


def test_a_client_that_stops_reading_does_not_hold_up_others(server):
    stuck_session = create_session(server.url)
    stuck = open_play(stuck_session)  # says hello, then never reads again
    stuck_spectator = open_watch(stuck_session)
    healthy = create_session(server.url)
    start = time.monotonic()
    with open_play(healthy) as ws:
        frames = play_both_ports(ws, 240, delay=2)
    assert len(frames) == 240
    assert time.monotonic() - start < 120
    delete_session(server.url, stuck_session)
    delete_session(server.url, healthy)
    stuck.close()
    stuck_spectator.close()


def test_policy_port_and_reset_from_rest(server):
    session = create_session(server.url, policies={"2": "approach"})
    assert list(session["tokens"]) == ["1"]
    with open_play(session, ports=(1,)) as ws:
        welcome, _ = receive_until(ws, P.Welcome)
        assert welcome.status == "running"
        _frame, _ = receive_until(ws, P.Frame)
        sid = session["session_id"]
        reset = httpx.post(
            f"{server.url}/v1/sessions/{sid}/reset",
            headers={"X-Session-Token": session["session_token"]},
        ).json()
        assert reset["frame"] == -123
        status, _ = receive_until(ws, P.Status)
        while status.reason != "reset":
            status, _ = receive_until(ws, P.Status)
        after, _ = receive_until(ws, P.Frame)
        while after.frame != -122:  # a frame already in flight may arrive first
            after, _ = receive_until(ws, P.Frame)
    delete_session(server.url, session)


def test_match_endpoint_end_to_end(server):
    response = httpx.post(
        f"{server.url}/v1/matches",
        json={"p1": "approach", "p2": "random:3", "stage": "yoshis", "max_frames": 400, "seed": 1},
    )
    assert response.status_code == 202, response.text
    match_id = response.json()["match_id"]
    done = httpx.get(f"{server.url}/v1/matches/{match_id}", params={"wait": "true"}, timeout=300)
    info = done.json()
    assert info["status"] == "done"
    summary = info["summary"]
    assert 1 <= summary["frames"] <= 400
    assert set(summary) >= {"winner", "stocks", "percents", "kos", "frames"}
    frames = httpx.get(f"{server.url}/v1/matches/{match_id}/frames", timeout=60).json()
    assert len(frames) == summary["frames"] + 1
    assert [f["frame"] for f in frames] == list(range(-123, -123 + len(frames)))
    assert frames[-1]["players"][0]["stocks"] == summary["stocks"][0]
    parquet = httpx.get(
        f"{server.url}/v1/matches/{match_id}/frames", params={"format": "parquet"}, timeout=60
    )
    table = pq.read_table(pa.BufferReader(parquet.content))
    assert table.num_rows == len(frames)
    assert table.column("stage").to_pylist()[0] == 8


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1\x00garbage", "bad_message"),
        (P.encode({"type": "teleport"}), "unknown_type"),
        (P.encode({"type": "input", "frame": 5, "port": 1, "stick_x": 3.0}), "invalid"),
        (P.encode({"type": "input", "frame": 5, "port": 1, "buttons": ["TURBO"]}), "invalid"),
        (P.encode(P.Input(frame=100_000, port=1)), "future_input"),
        (P.encode(P.Input(frame=-100_000, port=1)), "stale_input"),
        (P.encode(P.Input(frame=0, port=2)), "wrong_port"),
        (P.encode(P.Hello()), "unexpected"),
    ],
)
def test_bad_messages_get_an_error_and_the_connection_lives_on(server, data, code):
    session = create_session(server.url, policies={"2": "noop"})
    with open_play(session, ports=(1,)) as ws:
        receive_until(ws, P.Welcome)
        ws.send(data)
        error, _ = receive_until(ws, P.Error)
        assert error.code == code
        assert error.message
        ws.send(P.encode(P.Ping(t=1.5)))
        pong, _ = receive_until(ws, P.Pong)
        assert pong.t == 1.5
    delete_session(server.url, session)


def close_code(ws) -> int:
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=30)
    return ws.close_code if ws.close_code is not None else ws.protocol.close_rcvd.code


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_token", P.CLOSE_POLICY_VIOLATION),
        ("wrong_token", P.CLOSE_POLICY_VIOLATION),
        ("unknown_session", P.CLOSE_POLICY_VIOLATION),
        ("text", P.CLOSE_UNSUPPORTED_DATA),
        ("oversized", P.CLOSE_MESSAGE_TOO_BIG),
        ("flood", P.CLOSE_POLICY_VIOLATION),
        ("no_hello", P.CLOSE_PROTOCOL_ERROR),
        ("old_version", P.CLOSE_PROTOCOL_ERROR),
    ],
)
def test_refused_connections_close_with_the_right_code(server, case, expected):
    from websockets.sync.client import connect

    session = create_session(server.url, policies={"2": "noop"})
    token = session["tokens"]["1"]
    url = session["play_url"]
    if case == "no_token":
        ws = connect(url).__enter__()
    elif case == "wrong_token":
        ws = connect(url + "?token=" + "x" * len(token)).__enter__()
    elif case == "unknown_session":
        ws = connect(
            url.replace(session["session_id"], "nosuchsession") + f"?token={token}"
        ).__enter__()
    else:
        ws = connect(url + f"?token={token}").__enter__()
    if case in ("text", "oversized", "flood"):
        ws.send(P.encode(P.Hello()))
        receive_until(ws, P.Welcome)
    if case == "text":
        ws.send('{"type": "input"}')
    elif case == "oversized":
        ws.send(b"\x00" * (P.MAX_CLIENT_MESSAGE_BYTES + 1))
    elif case == "flood":
        ping = P.encode(P.Ping(t=0))
        try:
            for _ in range(5000):
                ws.send(ping)
        except ConnectionClosed:
            pass
    elif case == "no_hello":
        ws.send(P.encode(P.Input(frame=0, port=1)))
    elif case == "old_version":
        ws.send(P.encode(P.Hello(version=0)))
    assert close_code(ws) == expected
    # The server and other sessions carry on.
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    delete_session(server.url, session)


def test_rest_refuses_bad_requests_with_a_reason(server):
    bad = httpx.post(f"{server.url}/v1/sessions", json={"stage": "hyrule"})
    assert bad.status_code == 400 and "stage" in bad.json()["detail"]
    bad = httpx.post(f"{server.url}/v1/sessions", json={"characters": ["FOX", "NOBODY"]})
    assert bad.status_code == 400 and "characters[1]" in bad.json()["detail"]
    bad = httpx.post(f"{server.url}/v1/sessions", json={"start": {"replay": "../pyproject.toml"}})
    assert bad.status_code == 400 and "outside" in bad.json()["detail"]
    bad = httpx.post(f"{server.url}/v1/sessions", json={"start": {"data": "bm90IGEgcmVwbGF5"}})
    assert bad.status_code == 400 and "start.data" in bad.json()["detail"]
    bad = httpx.post(f"{server.url}/v1/matches", json={"p1": "os:system"})
    assert bad.status_code == 400 and "disabled" in bad.json()["detail"]
    bad = httpx.post(f"{server.url}/v1/sessions", json={"input_delay": 99})
    assert bad.status_code == 422
    assert httpx.get(f"{server.url}/v1/sessions/nope").status_code == 404
    assert httpx.get(f"{server.url}/v1/matches/nope").status_code == 404


def test_session_from_a_replay_in_the_replay_folder(server):
    session = create_session(server.url, start={"replay": "v3.18.slp", "frame": 600})
    with open_play(session) as ws:
        welcome, _ = receive_until(ws, P.Welcome)
        assert welcome.frame == 600 - 123
        frame, _ = receive_until(ws, P.Frame)
        assert frame.frame == welcome.frame + 1
    delete_session(server.url, session)


def test_limits_api_key_and_shutdown_with_clients_connected():
    settings = ServerSettings(port=0, max_sessions=2, api_key="s3cret", recordings_dir=None)
    server = ServerThread(settings).__enter__()
    try:
        headers = {"X-API-Key": "s3cret"}
        assert httpx.post(f"{server.url}/v1/sessions", json={}).status_code == 401
        wrong = httpx.post(f"{server.url}/v1/sessions", json={}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        sessions = [
            httpx.post(f"{server.url}/v1/sessions", json={}, headers=headers).json()
            for _ in range(2)
        ]
        full = httpx.post(f"{server.url}/v1/sessions", json={}, headers=headers)
        assert full.status_code == 503 and "full" in full.json()["detail"]
        player = open_play(sessions[0])
        spectator = open_watch(sessions[1])
        receive_until(player, P.Welcome)
        receive_until(spectator, P.Welcome)
    finally:
        server.stop()
    for ws in (player, spectator):
        bye, _ = receive_until(ws, P.Bye)
        assert "shutting down" in bye.reason
        assert close_code(ws) == P.CLOSE_GOING_AWAY


def test_protocol_needs_no_torch_and_carries_the_core_controller():
    import subprocess
    import sys

    code = "import sys, server.protocol; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    controller = Controller(stick_x=-0.5, trigger_r=1.0, buttons=frozenset({"Z", "A"}))
    message = P.Input.stamped(controller, frame=7, port=2)
    assert message.buttons == ["A", "Z"]  # sorted: the same controller makes the same bytes
    assert P.decode_client(P.encode(message)) == message
    assert message.to_controller() == controller


def test_tokens_never_reach_the_logs():
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn.access", "server")]
    with ServerThread(ServerSettings(port=0, recordings_dir=None), log_level="info") as server:
        for logger in loggers:
            logger.addHandler(keep)
        try:
            session = create_session(server.url)
            with open_play(session) as ws:
                receive_until(ws, P.Welcome)
            wrong = open_play(session | {"tokens": {"1": "guess", "2": "guess"}}, hello=False)
            close_code(wrong)
        finally:
            for logger in loggers:
                logger.removeHandler(keep)
    text = "\n".join(records)
    assert "[redacted]" in text  # the websocket lines were logged, without their tokens
    for token in session["tokens"].values():
        assert token not in text


def test_torch_threads_leave_a_core_to_the_event_loop_on_cpu():
    import os

    cores = len(os.sched_getaffinity(0))
    assert ServerSettings().resolved_threads("cpu") == max(1, cores - 1)
    assert ServerSettings(threads=3).resolved_threads("cpu") == 3
    assert ServerSettings().resolved_threads("cuda") is None
    assert ServerSettings(threads=2).resolved_threads("cuda") == 2


def test_an_overloaded_cpu_server_suggests_int8_weights():
    assert "QUANTIZE=int8" in ServerSettings().overload_hint("cpu")
    assert ServerSettings(quantize="int8").overload_hint("cpu") == ""
    assert ServerSettings().overload_hint("cuda") == ""
    assert ServerSettings().overload_hint("cuda:1") == ""
