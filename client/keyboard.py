"""The keyboard as one controller per local player: a layout maps key names to Melee controls."""

from __future__ import annotations

import pygame

from client.controller import melee_stick
from core.controller import Controller

TILT = 0.5  # the keyboard's "tilt" modifier holds the stick half way (walks, tilts)


# Two players on one keyboard: player 1 on the left half, player 2 on the arrows and the right
# half. Key names are pygame's (`pygame.key.name`). "tilt" holds the stick at half way.
DEFAULT_KEYS: dict[str, dict[str, str]] = {
    "1": {
        "up": "w",
        "down": "s",
        "left": "a",
        "right": "d",
        "tilt": "left shift",
        "c_left": "z",
        "c_down": "x",
        "c_up": "c",
        "c_right": "v",
        "A": "f",
        "B": "g",
        "X": "r",
        "Z": "e",
        "L": "q",
        "START": "tab",
    },
    "2": {
        "up": "up",
        "down": "down",
        "left": "left",
        "right": "right",
        "tilt": "right shift",
        "c_left": "n",
        "c_down": "m",
        "c_up": ",",
        "c_right": ".",
        "A": "j",
        "B": "k",
        "X": "i",
        "Z": "u",
        "L": "o",
        "START": "return",
    },
}
KEY_CONTROLS = (
    "up",
    "down",
    "left",
    "right",
    "tilt",
    "c_left",
    "c_down",
    "c_up",
    "c_right",
    "A",
    "B",
    "X",
    "Y",
    "Z",
    "L",
    "R",
    "START",
)


def key_code(name: str, where: str) -> int:
    try:
        return pygame.key.key_code(name)
    except ValueError:
        raise ValueError(
            f"{where}: unknown key name {name!r} (use pygame.key.name's names)"
        ) from None


class KeyboardLayout:
    def __init__(self, keys: dict[str, str], where: str = "keyboard"):
        unknown = set(keys) - set(KEY_CONTROLS)
        if unknown:
            raise ValueError(f"{where}: unknown controls {sorted(unknown)}; known: {KEY_CONTROLS}")
        self.codes = {control: key_code(name, where) for control, name in keys.items() if name}

    def state(self, pressed: set[int]) -> Controller:
        def down(control: str) -> bool:
            code = self.codes.get(control)
            return code is not None and code in pressed

        scale = TILT if down("tilt") else 1.0
        x = (down("right") - down("left")) * scale
        y = (down("up") - down("down")) * scale
        sx, sy = melee_stick(x, y)
        cx, cy = melee_stick(down("c_right") - down("c_left"), down("c_up") - down("c_down"))
        buttons = {b for b in ("A", "B", "X", "Y", "Z", "L", "R", "START") if down(b)}
        return Controller(
            sx,
            sy,
            cx,
            cy,
            1.0 if "L" in buttons else 0.0,
            1.0 if "R" in buttons else 0.0,
            frozenset(buttons),
        )
