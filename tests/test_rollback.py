"""Rollback: a late input re-makes the frames it belonged to, exactly as if it had been on time.

These drive the engine's tick directly (no websockets), so that the order in which inputs
arrive is exact and the test is deterministic.
"""

from __future__ import annotations

import asyncio
import random

import torch

from core.controller import BUTTON_BITS
from model.config import ModelConfig
from model.game_start import GameSetup
from model.world_model import WorldModel
from server import protocol as P
from server.engine import Engine
from server.sessions import Connection
from server.settings import ServerSettings

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


class QuietSocket:
    async def send_bytes(self, data: bytes) -> None:  # frames are read from the queue instead
        pass


def controller(frame: int, port: int, seed: int = 0) -> dict:
    rng = random.Random(frame * 31 + port * 7 + seed)
    buttons = rng.choice([0, 0, 0, BUTTON_BITS["A"], BUTTON_BITS["B"], BUTTON_BITS["Y"]])
    return {
        "joystick_x": rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0]),
        "joystick_y": rng.choice([-1.0, 0.0, 0.0, 1.0]),
        "cstick_x": 0.0,
        "cstick_y": 0.0,
        "trigger": 0.0,
        "buttons": buttons,
        "buttons_physical": buttons,
        "trigger_l": 0.0,
        "trigger_r": 0.0,
    }


def make_engine(model: WorldModel, sessions: int = 1) -> tuple[Engine, list]:
    engine = Engine(model, "tiny", ServerSettings(rollback_frames=7))
    made = []
    for i in range(sessions):
        snapshot = engine.prepare_start(GameSetup(stage=31, seed=i))
        session = engine.add_session(snapshot, {}, 2, {"stage": 31, "characters": [1, 22]})
        player = Connection(QuietSocket(), "player", (1, 2), 10**6)
        session.players = {1: player, 2: player}
        session.update_started()
        made.append(session)
    return engine, made


def state(engine: Engine, session) -> dict[str, torch.Tensor]:
    return engine.sim.snapshot(session.game_id).tensors


def test_inputs_three_frames_late_end_in_the_same_state_as_on_time():
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    frames = 40

    async def run(late_by: int):
        engine, (session,) = make_engine(model)
        first = session.frame + 1
        for f in range(first, first + frames + 1):
            session.accept_input(f, 1, controller(f, 1))
            if late_by == 0 or f == first + frames:
                owed = [f] if late_by == 0 else range(f - late_by, f + 1)
            else:
                owed = [f - late_by] if f - late_by >= first else []
            for g in owed:
                session.accept_input(g, 2, controller(g, 2))
            await engine.tick()
        return engine, session

    on_time, reference = asyncio.run(run(0))
    late, session = asyncio.run(run(3))
    assert reference.rollbacks == 0
    assert session.rollbacks == frames - 3 + 1  # every frame from the 4th on, and the last
    assert session.frame == reference.frame
    ours, theirs = state(late, session), state(on_time, reference)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_random_delays_lose_no_input_within_the_window():
    """Four sessions, every input 0-6 frames late at random: each frame ends up made with the
    inputs that were sent for it, and every late one was applied by a rollback."""
    torch.manual_seed(1)
    model = WorldModel(TINY).eval()
    rng = random.Random(5)
    frames = 60

    async def run(late: bool):
        engine, sessions = make_engine(model, sessions=4)
        first = sessions[0].frame + 1
        arrivals: dict[int, list] = {}
        for s_index in range(len(sessions)):
            for f in range(first, first + frames):
                for port in (1, 2):
                    delay = rng.randint(0, 6) if late else 0
                    arrive = f + delay if f + delay < first + frames else f  # the last on time
                    arrivals.setdefault(arrive, []).append((s_index, f, port))
        for now in range(first, first + frames):
            for s_index, f, port in arrivals.get(now, []):
                sessions[s_index].accept_input(f, port, controller(f, port, s_index))
            await engine.tick()
        return engine, sessions

    reference_engine, reference = asyncio.run(run(late=False))
    engine, sessions = asyncio.run(run(late=True))
    for ours, theirs in zip(sessions, reference, strict=True):
        # Re-stepped frames run in a batch of one, the reference in a batch of four, so
        # float rounding may differ in the last bits; a lost input would differ by far more.
        a, b = state(engine, ours), state(reference_engine, theirs)
        for key in ("frame.p1_x", "frame.p2_x", "frame.p1_y", "frame.p2_y", "frame.p1_action"):
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-3), key
    total_rollbacks = sum(s.rollbacks for s in sessions)
    assert total_rollbacks > 20
    for s_index, session in enumerate(sessions):
        assert session.late_inputs == 0, "no input fell outside the rollback window"
        for f, record in session.history.items():
            if f > session.frame - 7 + 1 and all(v is not None for v in record.real.values()):
                for port in (1, 2):
                    expected = controller(f, port, s_index)
                    assert record.used[f"p{port}_joystick_x"] == expected["joystick_x"]
                    assert record.used[f"p{port}_buttons"] == expected["buttons"]


def test_a_reset_made_while_a_step_runs_restarts_cleanly():
    """A reset that lands while the device thread is stepping (the REST handler runs on the
    loop meanwhile) must not be half applied by that step: the next frame sent is the start's
    next frame, and the session's frame count agrees with the simulation."""
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()

    async def run():
        engine, (session,) = make_engine(model)
        for _ in range(5):
            await engine.tick()
        player = session.players[1]
        while not player.queue.empty():
            player.queue.get_nowait()
        step = engine.live_batch.tick

        def step_with_a_reset_landing(plan):
            engine.reset_session(session)  # as if the REST call arrived right now
            return step(plan)

        engine.live_batch.tick = step_with_a_reset_landing
        await engine.tick()
        engine.live_batch.tick = step
        await engine.tick()
        sent = []
        while not player.queue.empty():
            sent.append(P.decode_server(player.queue.get_nowait()))
        return engine, session, [m.frame for m in sent if isinstance(m, P.Frame)]

    engine, session, frames = asyncio.run(run())
    start = int(session.start_snapshot.tensors["frame.frame"])
    assert frames == [start + 1]
    assert session.frame == start + 1
    assert int(engine.sim.frame(session.game_id)["frame"]) == start + 1
