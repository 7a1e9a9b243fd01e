"""The renderer draws each character where its coordinates map through the camera, from
real replays (a .slp read by the client, and the same game as an ingested parquet file)."""

import hashlib
import os
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np
import pygame
import pytest

from client import replay
from client.camera import Camera
from client.render import (
    HITLAG_SHAKE,
    PORT_COLOURS,
    Renderer,
    is_hidden,
    is_shielding,
    timer_text,
)

SIZE = (960, 540)
HUD_BAND = 100  # pixels at the bottom where the HUD repeats the port colours


@pytest.fixture(scope="module", autouse=True)
def pygame_ready():
    pygame.init()
    yield


@pytest.fixture(scope="module")
def throw_grab(replays):
    return replay.load(replays / "dev" / "slippi-js__slp__throwGrab.slp")


def render_png(recording, row, path) -> tuple[Renderer, np.ndarray]:
    renderer = Renderer(SIZE, recording.stage, recording.characters, timer_frames=8 * 3600)
    renderer.update(recording.frame(row), 1 / 60, snap=True)
    surface = pygame.Surface(SIZE)
    renderer.draw(surface)
    pygame.image.save(surface, str(path))
    pixels = pygame.surfarray.array3d(pygame.image.load(str(path)))  # (W, H, 3)
    return renderer, pixels


def drawable_rows(recording, count):
    """Rows spread over the game where both players are in play, apart, and plainly drawn."""
    rows = []
    for row in np.linspace(200, len(recording) - 200, 60).astype(int):
        frame = recording.frame(int(row))
        players = frame.players
        if any(is_hidden(p) or is_shielding(p) or p.invulnerable for p in players):
            continue
        if abs(players[0].x - players[1].x) < 25 and abs(players[0].y - players[1].y) < 25:
            continue
        if frame.events:
            continue
        rows.append(int(row))
    assert len(rows) >= count, "not enough plain frames in the replay"
    return rows[:count]


def check_players_drawn_at_their_coordinates(recording, row, tmp_path):
    renderer, pixels = render_png(recording, row, tmp_path / f"frame_{row}.png")
    frame = renderer.frame
    for player in frame.players:
        colour = np.array(PORT_COLOURS[player.port])
        figure = renderer.figure(player, frame.frame)
        height = figure.height  # the character's size (assets/characters.json)
        shake = HITLAG_SHAKE if player.hitlag > 0 else 0.0
        # The figure stands at the player's x; its torso is within a height of its feet.
        assert abs(figure.centre[0] - player.x) <= height / 2 + shake
        assert abs(figure.centre[1] - renderer.feet(player, frame.frame)[1]) <= height
        cx, cy = renderer.camera.to_screen(*figure.centre)
        assert 0 <= cx < SIZE[0] and 0 <= cy < SIZE[1] - HUD_BAND, "camera lost a player"
        # The torso's centre has the player's colour...
        assert (pixels[cx, cy] == colour).all(), (row, player.port, pixels[cx, cy])
        # ...and the pixels of that colour above the HUD are around the body, nowhere else.
        mask = (pixels[:, : SIZE[1] - HUD_BAND] == colour).all(axis=2)
        xs, ys = np.nonzero(mask)
        scale = renderer.camera.scale
        assert abs(np.median(xs) - cx) <= (height / 2 + shake) * scale, (row, player.port)
        assert abs(np.median(ys) - cy) <= height / 2 * scale, (row, player.port)


def test_slp_frames_draw_each_character_where_its_coordinates_map(throw_grab, tmp_path):
    for row in drawable_rows(throw_grab, 6):
        check_players_drawn_at_their_coordinates(throw_grab, row, tmp_path)


def test_parquet_trajectory_draws_the_same_as_the_slp(dev_dataset_dir, throw_grab, tmp_path):
    # The dataset names each game's file by the replay's sha256 (docs/DATA.md).
    digest = hashlib.sha256(Path(throw_grab.source).read_bytes()).hexdigest()
    recording = replay.load(dev_dataset_dir / f"{digest}.parquet")
    assert len(recording) == len(throw_grab) and recording.stage == throw_grab.stage
    row = drawable_rows(recording, 1)[0]
    check_players_drawn_at_their_coordinates(recording, row, tmp_path)
    slp_frame, parquet_frame = throw_grab.frame(row), recording.frame(row)
    assert [p.x for p in slp_frame.players] == pytest.approx([p.x for p in parquet_frame.players])
    assert [p.action_name for p in slp_frame.players] == [
        p.action_name for p in parquet_frame.players
    ]


def test_camera_keeps_both_players_in_view_inside_the_blast_zones(throw_grab):
    renderer = Renderer(SIZE, throw_grab.stage, throw_grab.characters)
    camera, stage = renderer.camera, renderer.stage
    for row in range(0, len(throw_grab), 97):
        frame = throw_grab.frame(row)
        renderer.update(frame, 1 / 60, snap=True)
        half_w, half_h = camera.width / 2, camera.width / camera.aspect / 2
        assert stage.blast_left - 1e-6 <= camera.cx - half_w
        assert camera.cx + half_w <= stage.blast_right + 1e-6
        assert stage.blast_bottom - 1e-6 <= camera.cy - half_h
        assert camera.cy + half_h <= stage.blast_top + 1e-6
        for p in frame.players:
            inside = stage.blast_left < p.x < stage.blast_right
            inside &= stage.blast_bottom < p.y < stage.blast_top
            if not is_hidden(p) and inside:
                x, y = camera.to_screen(p.x, p.y)
                assert 0 <= x <= SIZE[0] and 0 <= y <= SIZE[1], (row, p.port)


def test_camera_eases_towards_its_target():
    from client import assets

    camera = Camera(assets.stage(31), SIZE)
    camera.follow([(0.0, 0.0)], 1 / 60)  # the first call snaps
    start = camera.cx
    camera.follow([(60.0, 0.0)], 1 / 60)
    target = camera.target([(60.0, 0.0)])[0]
    assert start < camera.cx < target


def test_ko_and_respawn_events_start_effects(throw_grab):
    renderer = Renderer(SIZE, throw_grab.stage, throw_grab.characters)
    ko_row = next(i for i in range(len(throw_grab)) if throw_grab.frame(i).events)
    renderer.update(throw_grab.frame(ko_row - 1), 1 / 60)
    renderer.update(throw_grab.frame(ko_row), 1 / 60)
    assert [e.kind for e in renderer.effects] == ["ko"]
    # events name the player index (0 = p1); the burst has the KO'd player's colour
    before, after = throw_grab.frame(ko_row - 1), throw_grab.frame(ko_row)
    lost = next(
        b.port for a, b in zip(before.players, after.players, strict=True) if b.stocks < a.stocks
    )
    assert renderer.effects[0].colour == PORT_COLOURS[lost]
    surface = pygame.Surface(SIZE)
    renderer.draw(surface)  # draws without error, effect included


def test_timer_counts_down_like_melee():
    assert timer_text(-123, 8 * 3600) == "08:00.00"
    assert timer_text(0, 8 * 3600) == "08:00.00"
    assert timer_text(90, 8 * 3600) == "07:58.50"
    assert timer_text(10**6, 8 * 3600) == "00:00.00"


def test_camera_never_loses_a_player_while_easing():
    from client import assets

    camera = Camera(assets.stage(31), SIZE)
    camera.follow([(0.0, 0.0)], 1 / 60)
    camera.follow([(0.0, 0.0), (150.0, 120.0)], 1 / 60)  # one frame later, far away
    x, y = camera.to_screen(150.0, 120.0)
    assert 0 <= x < SIZE[0] and 0 <= y < SIZE[1]
