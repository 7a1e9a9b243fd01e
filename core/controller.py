"""One player's controller for one frame: the one definition that policies, the server, the
wire protocol and the client all use, in the wire's vocabulary (docs/PROTOCOL.md).

A `Controller` is what a player holds: the main stick and c-stick (-1..1 per axis, y up), the
analog L and R triggers (0..1) and the buttons pressed, by name. `processed()` turns it into
the dataset's controller columns (`core.game_state.CONTROLLER_FIELDS`) as Melee processes a
physical controller, since that is what the replays recorded and the model learned from.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from core import game_state as gs

# Melee's buttons and their bits in the processed bitmask (Slippi spec, pre-frame `buttons`).
# The order is the one the model's encoder reads the bits in (model/encoder.py): a trained
# checkpoint depends on it, so a new button goes at the end.
BUTTON_BITS = {
    "A": 0x100,
    "B": 0x200,
    "X": 0x400,
    "Y": 0x800,
    "Z": 0x10,
    "R": 0x20,
    "L": 0x40,
    "START": 0x1000,
    "DPAD_UP": 0x8,
    "DPAD_DOWN": 0x4,
    "DPAD_LEFT": 0x1,
    "DPAD_RIGHT": 0x2,
}
BUTTON_NAMES = tuple(BUTTON_BITS)
_KNOWN = frozenset(BUTTON_NAMES)

# What Melee's engine makes of the physical controller, as Slippi records it (pre-frame
# `buttons` and `triggers`; checked on the corpus): Z is read as A plus a light shield press, so
# a Z press sets the A bit too and an analog trigger of 0.35 (446 of 446 Z frames in 40 games);
# a digital L or R press is a full analog press (1.0 on every such frame). The model learned
# from those values, so a scripted or live controller must produce them too.
Z_ANALOG = 0.35

# field -> its range; the stick axes are -1..1, the analog triggers 0..1.
RANGES = {
    "stick_x": (-1.0, 1.0),
    "stick_y": (-1.0, 1.0),
    "cstick_x": (-1.0, 1.0),
    "cstick_y": (-1.0, 1.0),
    "trigger_l": (0.0, 1.0),
    "trigger_r": (0.0, 1.0),
}


@dataclass(frozen=True)
class Controller:
    """One player's controller for one frame. Built with values out of range, a NaN or an
    unknown button name, it raises a ValueError naming the field."""

    stick_x: float = 0.0  # main stick, -1..1
    stick_y: float = 0.0
    cstick_x: float = 0.0  # c-stick, -1..1
    cstick_y: float = 0.0
    trigger_l: float = 0.0  # analog L, 0..1
    trigger_r: float = 0.0  # analog R, 0..1
    buttons: frozenset[str] = frozenset()  # names from BUTTON_NAMES

    def __post_init__(self):
        # The server builds one per input it receives: the common case (floats, a frozenset)
        # takes the short path.
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if type(value) is not float:
                # numbers.Real takes numpy's floats too; a bool is an int, never a stick value
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise ValueError(f"{name} must be a number in {low:g}..{high:g}, not {value!r}")
                value = float(value)
                object.__setattr__(self, name, value)  # stored as a float whatever was passed
            if not low <= value <= high:  # a NaN fails this too
                raise ValueError(f"{name} {value!r} is outside {low:g}..{high:g}")
        buttons = self.buttons
        if type(buttons) is not frozenset:
            if isinstance(buttons, str):  # a set of one name, not of its letters
                raise ValueError(f"buttons must be a set of names, not the string {buttons!r}")
            buttons = frozenset(buttons)
            object.__setattr__(self, "buttons", buttons)
        if not buttons <= _KNOWN:
            unknown = sorted(map(str, buttons - _KNOWN))
            raise ValueError(f"buttons: unknown {unknown}; known: {BUTTON_NAMES}")

    def processed(self) -> dict[str, float | int]:
        """This controller as one player's controller columns, without the `pN_` prefix
        (`joystick_x`, ..., in `CONTROLLER_FIELDS` order), as the replays record them."""
        physical = 0
        for name in self.buttons:
            physical |= BUTTON_BITS[name]
        processed, analog = physical, max(self.trigger_l, self.trigger_r)
        if physical & BUTTON_BITS["Z"]:
            processed |= BUTTON_BITS["A"]
            analog = max(analog, Z_ANALOG)
        if physical & (BUTTON_BITS["L"] | BUTTON_BITS["R"]):
            analog = 1.0
        return {
            "joystick_x": self.stick_x,
            "joystick_y": self.stick_y,
            "cstick_x": self.cstick_x,
            "cstick_y": self.cstick_y,
            "trigger": analog,
            "buttons": processed,
            "buttons_physical": physical & 0xFFFF,
            "trigger_l": self.trigger_l,
            "trigger_r": self.trigger_r,
        }

    def columns(self, player: int) -> dict[str, float | int]:
        """The dataset's controller columns for `player` (0 for p1): `p1_joystick_x`, ..."""
        p = gs.PLAYERS[player]
        return {f"{p}_{name}": value for name, value in self.processed().items()}
