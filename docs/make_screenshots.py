"""Make docs/images/client-figures.png: how the game window draws characters, from real games.

    python docs/make_screenshots.py [--replays ../shared/replays] [--out docs/images]

For Marth and Falco, the first frame of the dev replays (../shared/replays/dev) where each is
jabbing with a hitbox out, holding a shield on the main stage, crouching on it, and in an
aerial with a hitbox out, drawn by the client's renderer (`client.render.Renderer`, the game
window's) with SDL's headless "dummy" video driver: no display is needed. Each panel is the
part of the 1280x720 game window around the character; the grid is 2 columns (the
characters) by 4 rows (the situations).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pygame  # noqa: E402

from client import assets, figures, replay  # noqa: E402
from client.render import TEXT, Renderer  # noqa: E402
from server.protocol import Player  # noqa: E402

WINDOW = (1280, 720)  # the game window's default size
PANEL = (560, 315)  # the part of it around the character
LEAD_IN = 40  # frames drawn before the shown one, so the camera and effects are as in play
MARTH, FALCO = 18, 22
# Where each character is found: dev replays in which it plays all four situations.
SOURCES = {
    MARTH: ["slippi-js__slp__throwGrab.slp", "peppi__tests__data__nintendont.slp"],
    FALCO: ["peppi__tests__data__duplicate_game_end.slp", "slippi-js__slp__throwGrab.slp"],
}
NEUTRAL_ATTACK_1, SHIELD, CROUCHING, NAIR, DAIR = 44, 179, 40, 65, 69


def _on_main_stage(player: Player, recording: replay.Recording) -> bool:
    main = assets.stage(recording.stage).main
    return (
        not player.airborne
        and abs(player.y - main.y) < 0.5
        and main.left_x < player.x < main.right_x
    )


SITUATIONS: dict[str, Callable[[Player, replay.Recording], bool]] = {
    "jab": lambda p, r: p.action == NEUTRAL_ATTACK_1 and bool(figures.active_hitboxes(p)),
    "shield": lambda p, r: p.action == SHIELD and _on_main_stage(p, r),
    "crouch": lambda p, r: p.action == CROUCHING and _on_main_stage(p, r),
    "aerial": lambda p, r: (
        NAIR <= p.action <= DAIR and p.airborne and bool(figures.active_hitboxes(p))
    ),
}


def find(replays: Path, character: int, situation: str) -> tuple[replay.Recording, int, int] | None:
    """(recording, row, port) of the first frame where `character` is in `situation`."""
    test = SITUATIONS[situation]
    for name in SOURCES[character]:
        recording = _load(replays / "dev" / name)
        for row in range(LEAD_IN, len(recording)):
            for player in recording.frame(row).players:
                if player.character == character and test(player, recording):
                    return recording, row, player.port
    return None


_loaded: dict[Path, replay.Recording] = {}


def _load(path: Path) -> replay.Recording:
    if path not in _loaded:
        _loaded[path] = replay.load(path)
    return _loaded[path]


def panel(recording: replay.Recording, row: int, port: int, caption: str) -> pygame.Surface:
    """The part of the game window's picture of `row` around the player of `port`, with a
    caption."""
    renderer = Renderer(WINDOW, recording.stage, recording.characters, recording.timer_frames)
    for i in range(row - LEAD_IN, row + 1):
        renderer.update(recording.frame(i), 1 / 60, snap=i == row - LEAD_IN)
    window = pygame.Surface(WINDOW)
    renderer.draw(window)
    player = renderer.frame.players[port - 1]
    x, y = renderer.camera.to_screen(*renderer.figure(player, renderer.frame.frame).centre)
    left = min(max(x - PANEL[0] // 2, 0), WINDOW[0] - PANEL[0])
    top = min(max(y - PANEL[1] // 2, 0), WINDOW[1] - PANEL[1])
    surface = window.subsurface(pygame.Rect((left, top), PANEL)).copy()
    text = renderer.fonts["small"].render(caption, True, TEXT)
    shade = pygame.Surface((text.get_width() + 16, text.get_height() + 8), pygame.SRCALPHA)
    shade.fill((0, 0, 0, 170))
    surface.blit(shade, (0, 0))
    surface.blit(text, (8, 4))
    return surface


def make(replays: Path, out: Path) -> Path:
    pygame.display.init()
    pygame.font.init()
    characters = (MARTH, FALCO)
    grid = pygame.Surface((PANEL[0] * len(characters), PANEL[1] * len(SITUATIONS)))
    for column, character in enumerate(characters):
        name = assets.character_name(character).replace("_", " ").title()
        for line, situation in enumerate(SITUATIONS):
            found = find(replays, character, situation)
            if found is None:
                raise SystemExit(f"no {situation} of {name} in the dev replays")
            recording, row, port = found
            player = recording.frame(row).players[port - 1]
            source = Path(recording.source).name.split("__")[-1]
            caption = (
                f"{name} (P{port}), {situation}: {player.action_name.lower()} frame "
                f"{figures.action_frame(player)}  ({source}, row {row})"
            )
            grid.blit(panel(recording, row, port, caption), (column * PANEL[0], line * PANEL[1]))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "client-figures.png"
    pygame.image.save(grid, str(path))
    return path


def parse_arguments(argv: list[str] | None, description: str) -> argparse.Namespace:
    """--replays and --out, as both screenshot scripts take them."""
    parser = argparse.ArgumentParser(description=description)
    default = Path(os.environ.get("PLAYMODEL_REPLAYS", REPO.parent / "shared" / "replays"))
    parser.add_argument("--replays", type=Path, default=default)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv, __doc__.splitlines()[0])
    print(make(args.replays, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
