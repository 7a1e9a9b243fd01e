"""Redundant inputs: every input carries copies of the controllers of the frames before it, so
an input that is lost, late or never sent is filled in from the next message (issue 22).

The session and engine tests drive the tick directly (no websockets), as tests/test_rollback.py
does, so the order in which messages arrive is exact; the client's sender is tested against a
stub connection. tests/test_server.py plays the same over real websockets.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from test_rollback import TINY, make_engine, state

from client.connection import InputSender
from core.controller import Controller
from model.world_model import WorldModel
from server import protocol as P
from server.sessions import controller_columns

STICKS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def pad(frame: int, port: int) -> P.Controller:
    """A distinct controller per frame and port."""
    buttons = [["A"], [], ["B"], [], ["Y"]][(frame + port) % 5]
    return P.Controller(stick_x=STICKS[(frame * 3 + port) % 5], buttons=buttons)


def message(frame: int, port: int, copies: int = P.REDUNDANT_INPUTS) -> P.Input:
    """Port `port`'s input for `frame` with copies of the `copies` frames before it."""
    previous = [pad(frame - 1 - i, port) for i in range(copies)]
    return P.Input(frame=frame, port=port, previous=previous, **dict(pad(frame, port)))


def deliver(session, m: P.Input) -> None:
    """What the server does with an input that passed its checks (server/live_socket.py)."""
    session.accept_input(m.frame, m.port, controller_columns(m))
    session.accept_copies(m)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WorldModel(TINY).eval()


def play(model, lost: set[int], late: set[int] = frozenset(), frames: int = 30):
    """Both ports send every frame's input one frame ahead (the server makes frame f after
    the input for f + 1 arrived); port 2's inputs for the frames in `lost` never arrive, and
    one for a frame in `late` arrives a frame late (after the frame before it was made)."""

    async def run():
        engine, (session,) = make_engine(model)
        first = session.frame + 1
        deliver(session, message(first, 1, copies=0))
        deliver(session, message(first, 2, copies=0))
        for f in range(first, first + frames):
            deliver(session, message(f + 1, 1))
            if f + 1 not in lost | late:
                deliver(session, message(f + 1, 2))
            await engine.tick()
            if f + 1 in late:
                deliver(session, message(f + 1, 2))
        return engine, session

    return asyncio.run(run())


def test_a_lost_input_is_filled_in_from_the_next_inputs_copy(model):
    engine, session = play(model, lost=set())
    first = session.frame - 29
    reference = state(engine, session)
    engine, session = play(model, lost={first + 5, first + 12, first + 14})
    assert session.substituted == {1: 0, 2: 0}, "no frame was made without its input"
    assert session.recovered == {1: 0, 2: 3}
    assert session.lost == {1: 0, 2: 0}
    assert session.rollbacks == 0
    assert engine.metrics.value("playmodel_recovered_inputs_total") == 3
    assert engine.metrics.value("playmodel_substituted_inputs_total") == 0
    for key, value in reference.items():
        assert torch.equal(state(engine, session)[key], value), key


def test_a_late_input_is_recovered_by_a_rollback_from_the_next_inputs_copy(model):
    """A frame's input is lost and the next input arrives after the frame was made: its copy
    rolls the game back, and the frame ends as if its input had been on time."""
    engine, session = play(model, lost=set())
    first = session.frame - 29
    reference = state(engine, session)
    engine, session = play(model, lost={first + 8}, late={first + 9})
    assert session.substituted[2] == 1  # frame first + 8, when it was made
    assert session.recovered[2] == 1  # from first + 9's copy
    assert session.lost == {1: 0, 2: 0}
    assert session.rollbacks == 1
    for key in ("frame.p1_x", "frame.p2_x", "frame.p1_y", "frame.p2_y", "frame.p2_action"):
        # the re-made frames ran in a batch of one: float rounding may differ in the last bits
        assert torch.allclose(state(engine, session)[key].float(), reference[key].float()), key


def test_copies_of_inputs_already_used_change_nothing(model):
    engine, session = play(model, lost=set(), frames=20)
    assert session.recovered == {1: 0, 2: 0}
    assert session.rollbacks == 0 and session.late_inputs == 0
    assert engine.metrics.value("playmodel_rollback_inputs_total") == 0


def test_an_input_lost_past_the_rollback_window_is_counted_as_lost(model):
    """Nine inputs in a row lost: the copies in the tenth reach back eight frames, so the
    first of the nine stays lost; the other eight are rolled back in."""
    engine, session = play(model, lost=set(), frames=1)
    first = session.frame
    engine, session = play(model, lost=set(range(first + 2, first + 11)), frames=20)
    assert session.lost == {1: 0, 2: 1}
    assert session.recovered[2] == 8
    assert engine.metrics.value("playmodel_lost_inputs_total") == session.lost[2]
    assert session.late_inputs == 0, "a copy too old to use is not a late input"


def test_an_old_single_input_is_still_accepted():
    raw = {"type": "input", "frame": -121, "port": 1, "stick_x": 0.5, "buttons": ["A"]}
    decoded = P.decode_client(P.encode(raw))
    assert decoded.previous == [] and decoded.stick_x == 0.5


def test_an_input_with_copies_round_trips_in_a_few_hundred_bytes():
    m = message(100, 2)
    data = P.encode(m)
    assert P.decode_client(data) == m
    assert len(data) < 400
    assert [f for f, _ in m.controllers()] == list(range(92, 100))


@pytest.mark.parametrize(
    ("previous", "problem"),
    [
        ([{}] * (P.REDUNDANT_INPUTS + 1), "previous: List should have at most 8 items"),
        ([{}, {}, {"stick_x": 1.5}], "previous.2.stick_x: Input should be less than or equal to 1"),
        ([{"frame": 3}], "previous.0.frame: Extra inputs are not permitted"),
        ([{"buttons": ["JUMP"]}], "previous.0.buttons.0: Input should be 'A'"),
        ({"1": {}}, "previous: Input should be a valid list"),
        ([None], "previous.0: Input should be a valid dictionary"),
    ],
)
def test_malformed_copies_are_refused_with_a_clear_error(previous, problem):
    raw = {"type": "input", "frame": 7, "port": 1, "previous": previous}
    with pytest.raises(P.ProtocolError) as refused:
        P.decode_client(P.encode(raw))
    assert refused.value.code == "invalid"
    assert str(refused.value).startswith(f"invalid input message: {problem}")


# ---------------------------------------------------------------------- the client's sender
class Stub:
    def __init__(self, last_frame: int):
        self.last_frame = last_frame
        self.sent: list[P.Input] = []

    def send(self, m: P.Input) -> bool:
        self.sent.append(P.decode_client(P.encode(m)))  # as the server will read it
        return True


def held(stick_x: float) -> dict:
    return {1: Controller(stick_x=stick_x)}


def test_each_input_carries_the_frames_before_it_newest_first():
    stub = Stub(last_frame=10)
    sender = InputSender(stub, [1], input_delay=2)
    for i in range(10):
        sender.tick(held(STICKS[i % 5]))
        stub.last_frame += 1
    last = stub.sent[-1]
    assert last.frame == 21
    assert len(last.previous) == P.REDUNDANT_INPUTS
    by_frame = {m.frame: m.stick_x for m in stub.sent}
    assert [c.stick_x for c in last.previous] == [by_frame[f] for f in range(20, 12, -1)]


def test_frames_the_sender_jumps_over_are_sent_as_copies_of_the_held_sample():
    stub = Stub(last_frame=10)
    sender = InputSender(stub, [1], input_delay=2)
    sender.tick(held(0.5))  # frame 12
    stub.last_frame = 14  # two frames came in one tick: the next input is for 16
    assert sender.tick(held(1.0)) == 16
    jump = stub.sent[-1]
    assert [(f, c.stick_x) for f, c in jump.controllers()] == [
        (12, 0.5),
        (13, 0.5),
        (14, 0.5),
        (15, 0.5),
    ]


def test_a_change_made_while_ahead_of_the_server_waits_instead_of_being_dropped():
    stub = Stub(last_frame=10)
    sender = InputSender(stub, [1], input_delay=3)
    state = held(0.0)
    assert [sender.tick(state) for _ in range(4)] == [13, 14, 15, None]  # at most 2 ahead
    assert sender.tick(held(1.0)) is None  # a press while no frame is free: it waits
    assert sender.tick(held(1.0)) is None  # the same sample again: nothing new to keep
    stub.last_frame = 11  # one frame free
    assert sender.tick(held(0.0)) == 16
    assert [(m.frame, m.stick_x) for m in stub.sent[-1:]] == [(16, 1.0)]
    stub.last_frame = 20  # the client fell behind: the waiting release goes to the target
    assert sender.tick(held(0.0)) == 24
    assert [(m.frame, m.stick_x) for m in stub.sent[-2:]] == [(23, 0.0), (24, 0.0)]
    assert sender.dropped == 0


def test_a_reset_forgets_the_copies():
    stub = Stub(last_frame=10)
    sender = InputSender(stub, [1], input_delay=2)
    sender.tick(held(1.0))
    sender.reset()
    stub.last_frame = -123
    sender.tick(held(0.0))
    assert stub.sent[-1].frame == -121 and stub.sent[-1].previous == []
