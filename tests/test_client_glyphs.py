"""No empty glyph boxes anywhere: every screen of the window is drawn with a font that records
what it renders, and every character of it must be in the font.

pygame's default font (freesansbold.ttf, bundled with pygame, so the same on every machine)
has no arrows: `pygame.font` draws a missing character as the font's empty box without a
word, so the check asks `pygame.freetype`, whose metrics are None for a missing glyph.
"""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pygame
import pygame.freetype
import pytest

from client import loops
from client.app import App, parse_args
from client.connection import Connection
from client.loops import LiveLoop, ReplayLoop
from client.start_screen import GameChoice, StartScreen
from server.protocol import Error, Frame, GameEvent, Status

RENDERED: list[str] = []


class RecordingFont(pygame.font.Font):
    def render(self, text, *args, **kwargs):
        RENDERED.append(str(text))
        return super().render(text, *args, **kwargs)


@pytest.fixture(autouse=True)
def recording_fonts(monkeypatch):
    pygame.init()
    monkeypatch.setattr(pygame.font, "Font", RecordingFont)
    RENDERED.clear()
    yield


def missing_glyphs(texts: list[str]) -> dict[str, str]:
    """text -> the characters of it that the default font lacks."""
    pygame.freetype.init()
    font = pygame.freetype.Font(None, 20)  # the default font, as pygame.font.Font(None, ...)
    missing = {}
    for text in set(texts):
        absent = {c for c, m in zip(text, font.get_metrics(text), strict=True) if m is None}
        absent -= {" "}
        if absent:
            missing[text] = "".join(sorted(absent))
    return missing


def test_the_check_finds_a_missing_glyph():
    assert missing_glyphs(["↑↓ choose", "Up/Down choose", "◀"]) == {"↑↓ choose": "↑↓", "◀": "◀"}


class FakeServer:
    def __init__(self, ready: bool):
        self._ready = ready

    def ready(self) -> bool:
        return self._ready


def test_the_start_screen_has_every_glyph():
    window = App(parse_args([]))
    window._message("Starting the model…", ["loading the local server"])
    for server in (None, FakeServer(False), FakeServer(True)):
        for policy in ({}, {"2": "approach"}):
            screen = StartScreen(window, GameChoice(31, [1, 22], policy), server)
            for row in range(4):
                screen.row = row
                screen.draw()
    assert any("choose" in t for t in RENDERED)
    assert missing_glyphs(RENDERED) == {}


def test_the_start_screen_says_who_plays_p2():
    window = App(parse_args([]))
    StartScreen(window, GameChoice(31, [1, 22], {"2": "approach"}), server=None).draw()
    assert "P2: cpu (approach)" in RENDERED and "P2: keyboard" not in RENDERED
    RENDERED.clear()
    StartScreen(window, GameChoice(31, [1, 22], {}), server=None).draw()
    assert "P2: keyboard" in RENDERED


def live_loop(window: App, frame: Frame) -> LiveLoop:
    from test_client_net import welcome

    connection = Connection("ws://127.0.0.1:1/v1/sessions/s1/play")  # never opened
    connection.welcome = welcome()
    loop = LiveLoop(window, connection, local=True)
    loop.renderer.update(frame, 1 / 60, snap=True)
    return loop


def test_every_state_of_a_live_game_has_every_glyph(replays):
    from client import replay

    recording = replay.load(replays / "dev" / "slippi-js__slp__throwGrab.slp")
    window = App(parse_args(["--overlay"]))
    window.show_overlay = True
    frame = recording.frame(3000).model_copy(update={"frame": 100})
    loop = live_loop(window, frame)
    loop.connection.stats.errors.append("bad_input: frame 3 is too old")
    loop.connection.stats.substituted[1] = 3
    loop._draw()  # running, overlay on
    loop.status = "waiting"
    loop._draw()
    loop.status, loop.paused = "paused", True
    loop._draw()
    loop.paused, loop.status = False, "running"
    loop.connection.closed = "server shutting down"
    loop._draw()
    loop.connection.closed = None
    loop.connection._inbox.put(Error(code="bad_input", message="input for an old frame"))
    loop.connection._inbox.put(Status(status="over", frame=100))
    end = frame.model_copy(update={"events": [GameEvent(type="game_end", frame=100, player=0)]})
    loop.connection._inbox.put(end)
    loop._receive()
    loop._draw()  # GAME!, the winner, a notice
    loop._toggle_pause()
    loop.local = False
    loop._toggle_pause()  # "pause is for local games only"
    loop._draw()
    assert "GAME!" in RENDERED and "PAUSED" in RENDERED
    assert missing_glyphs(RENDERED) == {}


def test_replay_playback_and_its_pause_have_every_glyph(replays):
    window = App(parse_args(["--overlay", "--frames", "3", "--seek", "3000"]))
    from client import replay

    recording = replay.load(replays / "dev" / "slippi-js__slp__throwGrab.slp")
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE))
    ReplayLoop(window, recording).run()
    assert loops.REPLAY_KEYS in RENDERED and "PAUSED" in RENDERED
    assert missing_glyphs(RENDERED) == {}
