"""Recordings: every live session and match lands on disk in the ingestion schema, part by
part while it runs, and the recordings folder reads back as a dataset."""

from __future__ import annotations

import json

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from server_client import create_session, delete_session, open_play, receive, receive_until

from core import game_state as gs
from model.frames import frames_from_table
from server import protocol as P
from server.recorder import PART_FRAMES
from server.serve import ServerThread
from server.settings import ServerSettings
from training.dataset import GameDataset

pytestmark = pytest.mark.timeout(300)


def play_frames(ws, count: int) -> list[P.Frame]:
    """Both ports, stick right for p1; stops early if the game ends."""
    welcome, _ = receive_until(ws, P.Welcome)
    frames = []
    for f in range(welcome.frame + 1, welcome.frame + 3):
        for port in (1, 2):
            ws.send(P.encode(P.Input(frame=f, port=port, stick_x=0.5 if port == 1 else 0.0)))
    while len(frames) < count:
        message = receive(ws)
        if isinstance(message, P.Status) and message.status == "over":
            break
        if not isinstance(message, P.Frame):
            continue
        frames.append(message)
        for port in (1, 2):
            ws.send(P.encode(P.Input(frame=message.frame + 2, port=port, stick_x=0.5)))
    return frames


def test_sessions_and_matches_are_recorded_and_read_back_as_a_dataset(tmp_path):
    recordings = tmp_path / "recordings"
    settings = ServerSettings(port=0, recordings_dir=recordings)
    with ServerThread(settings) as server:
        session = create_session(server.url, seed=3)
        sid = session["session_id"]
        with open_play(session) as ws:
            frames = play_frames(ws, 150)
            # While it runs, the parts written so far are downloadable.
            live = httpx.get(f"{server.url}/v1/sessions/{sid}/recording", timeout=30)
        if len(frames) > PART_FRAMES + 8:
            assert live.status_code == 200
            table = pq.read_table(pa.BufferReader(live.content))
            assert table.num_rows >= PART_FRAMES
            game_over = len(frames) < 150
            if not game_over:  # whole seconds so far; else the complete game
                assert table.num_rows % PART_FRAMES == 0
        delete_session(server.url, session)
        match = httpx.post(f"{server.url}/v1/matches", json={"max_frames": 90}).json()
        done = httpx.get(
            f"{server.url}/v1/matches/{match['match_id']}", params={"wait": True}, timeout=120
        ).json()
        assert done["status"] == "done"
    # The server has stopped: every recording is complete on disk.
    folder = recordings / f"{sid}-0"
    info = json.loads((folder / "info.json").read_text())
    assert info["status"] == "complete" and info["kind"] == "session"
    assert info["model"] and "checkpoint_sha256" in info
    assert not (folder / "parts").exists()
    table = pq.read_table(folder / "game.parquet")
    assert json.loads(table.schema.metadata[b"recording"])["id"] == f"{sid}-0"
    recorded = frames_from_table(table)
    ids = recorded["frame"].tolist()
    assert ids[0] == -123 and ids == list(range(-123, -123 + len(ids)))
    # The recording holds every frame the players were sent, exactly.
    sent = {f.frame: f for f in frames}
    for row, frame_id in enumerate(ids):
        if frame_id in sent:
            assert recorded["p1_x"][row].item() == pytest.approx(sent[frame_id].players[0].x)
            assert recorded["p2_percent"][row].item() == pytest.approx(
                sent[frame_id].players[1].percent
            )
    assert len(ids) >= len(frames) + 1
    # Inputs are the controller columns.
    later = [r for r, f in enumerate(ids) if f in sent and f > -119]
    assert all(recorded["p1_joystick_x"][r].item() == 0.5 for r in later)

    match_table = pq.read_table(recordings / match["match_id"] / "game.parquet")
    assert match_table.num_rows == done["summary"]["frames"] + 1
    # The recordings folder is a dataset: eval and training can read it.
    dataset = GameDataset(recordings, split="all")
    assert len(dataset) == 2
    assert set(dataset.columns) >= {f"p1_{f.name}" for f in gs.PLAYER_FIELDS}


def record_standard_frames(recorder, frames: int) -> None:
    """Frames -123, -122, ... of a standard start into `recorder`, its file writes run as
    they fall due (as the server's writer thread runs them)."""
    from model.game_start import GameSetup, standard_start

    start = standard_start(GameSetup())
    for f in range(frames):
        row = {k: v.numpy() for k, v in start.items()}
        row["frame"] = row["frame"] + f
        recorder.add(-123 + f, row)
        for write in recorder.take_writes():
            write()


def test_a_crash_keeps_the_parts_written(tmp_path):
    """Without a clean shutdown the finished seconds are on disk, readable."""
    from server.recorder import GameRecorder, read_recording

    recorder = GameRecorder(tmp_path / "crashy-0", {"kind": "session", "id": "crashy-0"}, 8)
    record_standard_frames(recorder, 200)
    # 200 frames, 8 held back for rollbacks: three full seconds are on disk, the rest is lost.
    table = read_recording(tmp_path / "crashy-0")
    assert table.num_rows == 3 * PART_FRAMES
    assert torch.equal(
        frames_from_table(table)["frame"], torch.arange(-123, -123 + 3 * PART_FRAMES)
    )


def test_a_staggered_recording_writes_a_shorter_first_part_then_whole_seconds(tmp_path):
    """Sessions started together write their parts on different ticks: the first part is
    `stagger` frames short, the frames stay whole and in order."""
    from server.recorder import GameRecorder, read_recording

    info = {"kind": "session", "id": "late-0"}
    recorder = GameRecorder(tmp_path / "late-0", info, hold_back=8, stagger=17)
    record_standard_frames(recorder, 130)
    parts = sorted((tmp_path / "late-0" / "parts").glob("frames-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [PART_FRAMES - 17, PART_FRAMES]
    table = read_recording(tmp_path / "late-0")
    assert torch.equal(frames_from_table(table)["frame"], torch.arange(-123, -123 + 103))
