"""The behaviour probes' inputs, as classes rather than exact values.

The stick is neutral, or held fully forward / back (relative to the way the player faces
when the probe starts), up or down; buttons are A, B, jump (X or Y), Z and shield (L or R,
digital or analog). A probe's script is a list of `Segment`s: the classes the model is given,
frame by frame, and those a real game's frames may have to match it (`stick_classes`,
`button_classes`, read from the replay's controller columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.controller import Controller
from model.rules import STICK_DEADZONE

# Stick classes, relative to the way the player faces at the probe's start.
NEUTRAL, FORWARD, BACK, UP, DOWN, OTHER_STICK = range(6)
FULL_TILT = 0.8  # a "held" direction: Melee's dash needs the stick past about 0.8
# Button classes (bit flags).
A, B, JUMP, Z, SHIELD = 1, 2, 4, 8, 16
ANALOG_SHIELD = 0.3  # an analog press past this shields in Melee
# Processed button bits (Slippi spec, pre-frame buttons; core/controller.py BUTTON_BITS).
_BITS = {A: 0x100, B: 0x200, JUMP: 0x400 | 0x800, Z: 0x10, SHIELD: 0x20 | 0x40}


@dataclass(frozen=True)
class Segment:
    """`frames` frames of one input: the stick class and buttons the model is given. A real
    game matches with the stick in any of `sticks` (default: the scripted one) and the
    buttons, or one of `also` (buttons still held: after the first segment a real window may
    release buttons but never press a new one, `probe_expectations.no_new_presses`)."""

    frames: int
    stick: int = NEUTRAL
    buttons: int = 0
    also: tuple[int, ...] = ()
    sticks: tuple[int, ...] = ()

    def allowed(self) -> tuple[int, ...]:
        sticks = self.sticks or (self.stick,)
        return tuple(input_code(s, b) for s in sticks for b in (self.buttons, *self.also))

    def controller(self, facing: int) -> Controller:
        """What the scripted player presses, for a player facing `facing` (+1 right)."""
        x, y = {
            NEUTRAL: (0.0, 0.0),
            FORWARD: (float(facing), 0.0),
            BACK: (-float(facing), 0.0),
            UP: (0.0, 1.0),
            DOWN: (0.0, -1.0),
        }[self.stick]
        names = {A: "A", B: "B", JUMP: "X", Z: "Z", SHIELD: "R"}
        buttons = frozenset(name for bit, name in names.items() if self.buttons & bit)
        return Controller(
            stick_x=x,
            stick_y=y,
            trigger_r=1.0 if self.buttons & SHIELD else 0.0,
            buttons=buttons,
        )


def input_code(stick: int, buttons: int) -> int:
    return stick * 32 + buttons


def stick_classes(x: np.ndarray, y: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """The stick class of each frame (int8), relative to `facing` (+1 / -1 per frame)."""
    rel = x * facing
    ax, ay = np.abs(x), np.abs(y)
    out = np.full(x.shape, OTHER_STICK, dtype=np.int8)
    out[(ax < STICK_DEADZONE) & (ay < STICK_DEADZONE)] = NEUTRAL
    horizontal = (ax >= FULL_TILT) & (ay < STICK_DEADZONE)
    out[horizontal & (rel > 0)] = FORWARD
    out[horizontal & (rel < 0)] = BACK
    vertical = (ay >= FULL_TILT) & (ax < STICK_DEADZONE)
    out[vertical & (y > 0)] = UP
    out[vertical & (y < 0)] = DOWN
    return out


def button_classes(buttons: np.ndarray, trigger: np.ndarray) -> np.ndarray:
    out = np.zeros(buttons.shape, dtype=np.int16)
    for flag, bits in _BITS.items():
        out[(buttons & bits) != 0] |= flag
    # Melee reads Z as A plus a light shield press (core.controller.Controller.processed):
    # with Z held, the A bit and the analog 0.35 are Z's own.
    z = (out & Z) != 0
    out[z] &= ~A
    out[(trigger >= ANALOG_SHIELD) & ~z] |= SHIELD
    return out
