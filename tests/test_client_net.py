"""The client's network layer: against a small scripted websocket server (fast, no model),
and end to end against the real game server started as `python -m server serve`."""

import sys
import threading
import time

import pytest
from websockets.sync.server import serve

from client.connection import Connection, InputSender
from client.local_server import LocalServer, free_port
from client.rest import ServerError, create_session, delete_session, http_base, ws_url
from core.controller import Controller
from server.protocol import (
    Bye,
    Control,
    Error,
    Frame,
    Input,
    Player,
    Status,
    Welcome,
    decode_client,
    encode,
)


def player(port: int, stick_x: float = 0.0) -> Player:
    return Player(
        port=port, character=1, x=0.0, y=0.0, percent=0.0, shield=60.0, stocks=4, facing=1,
        action=14, action_name="STANDING", category="idle", state_age=0.0, airborne=False,
        jumps=2, hitlag=0.0, hitstun=0.0, invulnerable=False, stick_x=stick_x, stick_y=0.0,
        buttons=0,
    )  # fmt: skip


def welcome(frame: int = -123) -> Welcome:
    return Welcome(
        session_id="s1", role="player", ports=[1, 2], stage=31, stage_name="BATTLEFIELD",
        characters=[1, 18], character_names=["FOX", "MARTH"], input_delay=2, tick_rate=60.0,
        frame=frame, timer_frames=28800, status="running",
    )  # fmt: skip


class ScriptedServer:
    """One websocket endpoint: answers hello with a welcome, then runs `script(ws, self)`."""

    def __init__(self, script):
        self.script = script
        self.inputs: list[Input] = []
        self.query = ""
        self.port = free_port()
        self.server = serve(self._handle, "127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handle(self, ws):
        self.query = ws.request.path
        hello = decode_client(ws.recv())
        assert hello.type == "hello"
        self.script(ws, self)

    def read_inputs(self, ws, stop: threading.Event):
        while not stop.is_set():
            try:
                message = decode_client(ws.recv(timeout=0.05))
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - the client went away
                return
            if isinstance(message, Input):
                self.inputs.append(message)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/sessions/s1/play"


def stream_frames(count: int, first: int = -123):
    def script(ws, server):
        ws.send(encode(welcome(first - 1)))
        stop = threading.Event()
        reader = threading.Thread(target=server.read_inputs, args=(ws, stop), daemon=True)
        reader.start()
        for i in range(count):
            time.sleep(1 / 60)
            frame = first + i
            # like the real server: the frame shows the input stamped for it, if any arrived
            stick = next((m.stick_x for m in server.inputs if m.frame == frame), 0.0)
            ws.send(encode(Frame(frame=frame, players=[player(1, stick), player(2)])))
        time.sleep(0.1)
        stop.set()
        ws.send(encode(Bye(reason="done")))
        reader.join(timeout=1)

    return script


def run_inputs(connection: Connection, frames: int, timeout: float = 10.0) -> list[Frame]:
    """The app's loop without a window: a 60 Hz input clock, frames drained from the queue."""
    sender = InputSender(connection, connection.welcome.ports, connection.welcome.input_delay)
    received: list[Frame] = []
    start = next_tick = time.perf_counter()
    while len(received) < frames and time.perf_counter() - start < timeout:
        if time.perf_counter() >= next_tick:
            next_tick += 1 / 60
            sender.tick({1: Controller(stick_x=1.0), 2: Controller()})
        received += [m for m in connection.poll() if isinstance(m, Frame)]
        time.sleep(0.001)
    return received


def test_frames_arrive_in_order_and_inputs_are_stamped_with_their_frame():
    with ScriptedServer(stream_frames(90)) as server:
        connection = Connection(ws_url(server.url, ["tok1", "tok2"]))
        assert connection.open().ports == [1, 2]
        frames = run_inputs(connection, 90)
        connection.close()
    assert "token=tok1&token=tok2" in server.query
    numbers = [f.frame for f in frames]
    assert numbers == list(range(-123, -123 + 90))
    assert connection.stats.gaps == 0 and connection.stats.out_of_order == 0
    stamped = [m.frame for m in server.inputs if m.port == 1]
    assert stamped == sorted(set(stamped)), "one input per port per frame, in frame order"
    assert stamped[0] == -124 + 2  # the welcome's frame plus the input delay
    # the inputs reached their frames: most frames show port 1's stick held right
    assert sum(f.players[0].stick_x == 1.0 for f in frames) >= 80


def test_input_sender_stays_within_reach_of_the_last_frame():
    class Stub:
        last_frame = 10

        def send(self, message):
            pass

    stub = Stub()
    sender = InputSender(stub, [1], input_delay=3)
    state = {1: Controller()}
    assert [sender.tick(state) for _ in range(4)] == [13, 14, 15, None]  # at most 2 ahead
    stub.last_frame = 20  # the client fell behind: jump to the target
    assert sender.tick(state) == 23


def test_refused_connection_is_a_clear_error():
    def refuse(ws, server):
        ws.send(encode(Error(code="bad_token", message="wrong token for this session")))
        ws.close(1008, "wrong token")

    with ScriptedServer(refuse) as server, pytest.raises(ServerError, match="wrong token"):
        Connection(ws_url(server.url, ["nope"])).open(timeout=5)


def test_bye_and_status_reach_the_app():
    def script(ws, server):
        ws.send(encode(welcome()))
        ws.send(encode(Status(status="paused", frame=-123, reason="paused by a player")))
        time.sleep(0.05)
        ws.send(encode(Bye(reason="server shutting down")))
        ws.close(1001, "server shutting down")

    with ScriptedServer(script) as server:
        connection = Connection(server.url)
        connection.open()
        deadline = time.monotonic() + 5
        messages = []
        while connection.closed is None and time.monotonic() < deadline:
            messages += connection.poll()
            time.sleep(0.01)
        messages += connection.poll()
        connection.close()
    assert [type(m).__name__ for m in messages] == ["Status", "Bye"]
    assert "server shutting down" in connection.closed
    assert connection.send(Control(action="pause")) is False


def test_local_server_that_dies_is_reported_with_its_log():
    server = LocalServer(port=free_port(), reuse_default=False)
    server.command = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    server.start()
    with pytest.raises(ServerError, match=r"exited with code 3(.|\n)*boom"):
        server.wait(timeout=30)


def test_urls():
    assert http_base("ws://example.org:8000/v1/sessions/x/watch") == "http://example.org:8000"
    assert http_base("localhost:9000") == "http://localhost:9000"
    assert ws_url("http://h:1/v1/sessions/x/play", ["a", "b"]) == (
        "ws://h:1/v1/sessions/x/play?token=a&token=b"
    )


# ---------------------------------------------------------------------- the real server


def test_end_to_end_with_a_local_server():
    """120 frames of a real session with scripted inputs from both ports: frames arrive in
    order, and the server applied the inputs at the frames they were stamped for."""
    server = LocalServer(reuse_default=False)
    server.start()
    try:
        server.wait(timeout=120)
        session = create_session(server.url, {"stage": "battlefield", "characters": ["FOX", "FOX"]})
        connection = Connection(ws_url(session.play_url, list(session.tokens.values())))
        assert connection.open().ports == [1, 2]
        sender = InputSender(connection, [1, 2], session.input_delay)
        segments: list[list[Frame]] = [[]]  # a game the (demo) model ends early is reset
        start = next_tick = time.perf_counter()
        while sum(map(len, segments)) < 120 and time.perf_counter() - start < 25:
            if time.perf_counter() >= next_tick:
                next_tick += 1 / 60
                sender.tick({1: Controller(stick_x=1.0), 2: Controller(stick_x=-1.0)})
            for message in connection.poll():
                if isinstance(message, Frame) and message.corrected:
                    # A rollback re-made a frame already received (an input arrived late).
                    numbers = [f.frame for f in segments[-1]]
                    assert message.frame in numbers, message.frame
                    segments[-1][numbers.index(message.frame)] = message
                elif isinstance(message, Frame):
                    segments[-1].append(message)
                elif isinstance(message, Status) and message.status == "over":
                    connection.send(Control(action="reset"))
                    sender.reset()
                    segments.append([])
            time.sleep(0.001)
        connection.close()
        delete_session(server.url, session)
    finally:
        server.stop()
    frames = [f for segment in segments for f in segment]
    assert len(frames) >= 120, f"only {len(frames)} frames in 25 s"
    for numbers in ([f.frame for f in segment] for segment in segments if segment):
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert connection.stats.gaps == 0
    # After the input delay, every frame shows the sticks the client sent for it.
    late = [f for f in frames if f.frame >= segments[0][0].frame + session.input_delay + 2]
    assert late and all(f.players[0].stick_x == 1.0 for f in late)
    assert all(f.players[1].stick_x == -1.0 for f in late)


def test_corrected_frames_count_as_rollbacks_not_as_disorder():
    def script(ws, server):
        ws.send(encode(welcome()))
        for f in (-122, -121, -120):
            ws.send(encode(Frame(frame=f, players=[player(1), player(2)])))
        for f in (-121, -120):  # a rollback re-makes the last two frames
            ws.send(encode(Frame(frame=f, players=[player(1, 0.5), player(2)], corrected=True)))
        ws.send(encode(Frame(frame=-119, players=[player(1), player(2)])))
        time.sleep(0.2)
        ws.close()

    with ScriptedServer(script) as server:
        connection = Connection(server.url)
        connection.open()
        deadline = time.monotonic() + 5
        while connection.closed is None and time.monotonic() < deadline:
            connection.poll()
            time.sleep(0.01)
        connection.close()
    stats = connection.stats
    assert (stats.frames, stats.corrected, stats.out_of_order, stats.gaps) == (4, 2, 0, 0)
    assert len(stats.rollback_times) == 1
