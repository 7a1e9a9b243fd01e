"""`playmodel play` as a user runs it, headless: options, the start screen, replay playback,
spectating, and a live game against a local server."""

import os
import sys

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pygame
import pytest

from client import app, assets
from client.app import App, parse_args
from client.local_server import LocalServer
from client.rest import create_session
from client.start_screen import GameChoice, StartScreen
from server.sessions import new_id, new_token


def test_options():
    args = parse_args(["--cpu", "2:approach", "--size", "800x450", "--delay", "3"])
    assert args.policies == {"2": "approach"} and args.size == (800, 450)
    assert GameChoice(31, [1, 22], args.policies).request(args) == {
        "stage": 31,
        "characters": [1, 22],
        "policies": {"2": "approach"},
        "input_delay": 3,
    }
    with pytest.raises(SystemExit):
        parse_args(["--session", "abc"])  # joining needs --server
    with pytest.raises(SystemExit):
        parse_args(["--cpu", "3:noop"])


def test_every_server_id_and_token_is_accepted_on_the_command_line():
    # A random id that began with "-" was read as an option, and joining failed 1 time in 64.
    for _ in range(2000):
        session_id, token = new_id(), new_token()
        args = parse_args(["--server", "http://x", "--session", session_id, "--token", token])
        assert (args.session, args.token) == (session_id, [token])


def test_names_resolve_to_ids():
    assert assets.resolve_stage("final destination") == 32
    assert assets.resolve_stage("31") == 31
    assert assets.resolve_stage("fd") == 32
    assert assets.resolve_character("captain falcon") == 2
    with pytest.raises(ValueError, match="legal stages"):
        assets.resolve_stage("hyrule")


def test_start_screen_picks_stage_characters_and_opponent():
    screen = StartScreen(App(parse_args([])), GameChoice(31, [1, 22]), server=None)
    stages = assets.legal_stages()
    for key in (pygame.K_RIGHT, pygame.K_DOWN, pygame.K_DOWN, pygame.K_DOWN, pygame.K_RIGHT):
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RETURN))
    choice = screen.run()
    assert choice.stage == stages[(stages.index(31) + 1) % len(stages)]
    assert choice.characters == [1, 22]
    assert choice.policies == {"2": "approach"}


def test_replay_playback_writes_a_screenshot(replays, tmp_path):
    shot = tmp_path / "replay.png"
    slp = replays / "dev" / "peppi__tests__data__v2.0.slp"
    argv = ["--replay", str(slp), "--seek", "3000", "--frames", "30", "--screenshot", str(shot)]
    assert app.main(argv) == 0
    assert pygame.image.load(str(shot)).get_size() == app.DEFAULT_SIZE


def test_bad_replay_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.slp"
    bad.write_bytes(b"not a replay")
    assert app.main(["--replay", str(bad)]) == 1
    assert "broken.slp" in capsys.readouterr().err


def test_spectating_a_session(tmp_path):
    from test_client_net import ScriptedServer, stream_frames

    with ScriptedServer(stream_frames(40)) as server:
        url = server.url.replace("/play", "/watch")
        assert app.main(["--watch", url, "--frames", "20", "--overlay"]) == 0


def test_play_with_no_server_given_starts_one(tmp_path, capsys):
    shot, recordings = tmp_path / "live.png", tmp_path / "recordings"
    argv = ["--no-menu", "--cpu", "2:approach", "--frames", "90", "--screenshot", str(shot)]
    assert app.main([*argv, "--recordings", str(recordings)]) == 0
    assert shot.exists()
    # The game was recorded where the command said, and the command says where.
    games = list(recordings.glob("*-0/game.parquet"))
    assert len(games) == 1
    assert f"recorded: {games[0].parent}" in capsys.readouterr().out


def test_play_and_serve_record_to_the_same_folder(tmp_path, monkeypatch):
    """`play`'s local server runs in the repository's folder; it is given the recordings
    folder resolved against the folder `play` runs in, as `serve` resolves its own."""
    from server.serve import with_absolute_recordings
    from server.settings import ServerSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLAYMODEL_RECORDINGS_DIR", raising=False)
    seen = tmp_path / "seen.txt"
    server = LocalServer(reuse_default=False)
    server.command = [
        sys.executable,
        "-c",
        f"import os; open({str(seen)!r}, 'w').write(os.environ['PLAYMODEL_RECORDINGS_DIR'])",
    ]
    server.start()
    server.process.wait(timeout=60)
    expected = tmp_path / "runs" / "recordings"
    assert seen.read_text() == str(expected)
    assert with_absolute_recordings(ServerSettings()).recordings_dir == expected
    # Set by the environment (relative, as a user types it), both read it the same way.
    monkeypatch.setenv("PLAYMODEL_RECORDINGS_DIR", "games")
    assert LocalServer().recordings == tmp_path / "games"
    assert with_absolute_recordings(ServerSettings()).recordings_dir == tmp_path / "games"
    # Empty: nothing is recorded.
    assert LocalServer(recordings="").recordings is None
    assert str(with_absolute_recordings(ServerSettings(recordings_dir="")).recordings_dir) == "."


def test_joining_a_session_on_a_server_by_token(capsys):
    server = LocalServer(reuse_default=False)
    server.start()
    try:
        server.wait(timeout=120)
        session = create_session(server.url, {"policies": {"2": "noop"}})
        argv = ["--server", server.url, "--session", session.session_id]
        argv += ["--token", session.tokens["1"], "--frames", "30"]
        assert app.main(argv) == 0
        # a wrong token is refused with a message, not a traceback
        argv = ["--server", server.url, "--session", session.session_id, "--token", "nope"]
        assert app.main([*argv, "--frames", "5"]) == 1
        assert "token" in capsys.readouterr().err
    finally:
        server.stop()
