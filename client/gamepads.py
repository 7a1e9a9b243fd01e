"""Gamepads read through profiles: which SDL axis, button and hat is which Melee control.

Profiles are data: the built-in ones below, and the user's in the controls file
(`client.controls.ControlsConfig`), tried first.
"""

from __future__ import annotations

from typing import Any

from client.controller import melee_stick, melee_trigger
from core.controller import Controller

ANALOG = ("stick_x", "stick_y", "cstick_x", "cstick_y", "trigger_l", "trigger_r")


def _axes_in_analog_order() -> dict[str, int]:
    """Axis i is the i-th control of `ANALOG` (main stick x, y, C-stick x, y, L, R): SDL 2's
    HIDAPI drivers number the axes of GameCube and PlayStation pads so."""
    return {control: index for index, control in enumerate(ANALOG)}


# A profile names the SDL joystick axis of each analog control, which axes are inverted (SDL's
# y axes point down, Melee's up), the button index of each Melee button, and the hat that is the
# d-pad. Triggers are SDL axes from -1 (released) to 1 (fully pressed). `match` lists
# case-insensitive substrings of the joystick's name; the first matching profile wins and
# "xbox" is the fallback.
BUILTIN_PROFILES: list[dict[str, Any]] = [
    {
        # The official Nintendo adapter (WUP-028) and Mayflash in Wii U mode, read by SDL 2's
        # HIDAPI GameCube driver (SDL 2.28 src/joystick/hidapi/SDL_hidapi_gamecube.c, the SDL
        # that pygame 2.6 ships): buttons A, B, X, Y, d-pad left, right, down, up, Start, Z,
        # then the R and L trigger clicks; axes main x, y, C x, y, L, R. It passes the
        # controller's own y through, which points up as Melee's does: nothing is inverted.
        "name": "gamecube",
        "match": ["gamecube", "wup-028"],
        "axes": _axes_in_analog_order(),
        "invert": [],
        "buttons": {"A": 0, "B": 1, "X": 2, "Y": 3, "START": 8, "Z": 9, "R": 10, "L": 11},
        "hat": None,
        "dpad_buttons": {"DPAD_LEFT": 4, "DPAD_RIGHT": 5, "DPAD_DOWN": 6, "DPAD_UP": 7},
    },
    {
        # DualShock 4 / DualSense (SDL 2 HIDAPI order, as in pygame's joystick docs). Melee's
        # A is the bottom face button (Cross), shield on L2/R2 and Z on R1.
        "name": "playstation",
        "match": [
            "ps4",
            "ps5",
            "playstation",
            "dualshock",
            "dualsense",
            "sony",
            "wireless controller",
        ],
        "axes": _axes_in_analog_order(),
        "invert": ["stick_y", "cstick_y"],
        "buttons": {"A": 0, "B": 2, "X": 3, "Y": 1, "Z": 10, "START": 6},
        "hat": None,
        "dpad_buttons": {"DPAD_UP": 11, "DPAD_DOWN": 12, "DPAD_LEFT": 13, "DPAD_RIGHT": 14},
    },
    {
        # Xbox 360 / One / Series pads and most generic XInput pads (Linux xpad and SDL's
        # XInput layout, as in pygame's joystick docs). A bottom, B left (X on the pad), jumps on
        # the top (Y) and right (B) buttons, Z on RB, shield on the triggers.
        "name": "xbox",
        "match": ["xbox", "x-box", "xinput", "microsoft"],
        "axes": {
            "stick_x": 0,
            "stick_y": 1,
            "trigger_l": 2,
            "cstick_x": 3,
            "cstick_y": 4,
            "trigger_r": 5,
        },
        "invert": ["stick_y", "cstick_y"],
        "buttons": {"A": 0, "B": 2, "X": 3, "Y": 1, "Z": 5, "START": 7},
        "hat": 0,
        "dpad_buttons": {},
    },
]
FALLBACK_PROFILE = "xbox"


def pick_profile(name: str, profiles: list[dict[str, Any]]) -> dict[str, Any]:
    lowered = name.lower()
    for profile in profiles:
        if any(m.lower() in lowered for m in profile.get("match", [])):
            return profile
    return next(p for p in profiles if p["name"] == FALLBACK_PROFILE)


class Gamepad:
    """One plugged-in joystick read through a profile. `joystick` is a pygame Joystick (or any
    object with get_axis/get_button/get_hat/get_numaxes/get_numbuttons/get_numhats)."""

    def __init__(self, joystick: Any, profile: dict[str, Any]):
        self.joystick = joystick
        self.profile = profile
        self.name = joystick.get_name()
        self.instance_id = joystick.get_instance_id()
        # SDL reports a trigger axis as 0 (half pressed) until it first moves; treat such an
        # axis as released until then.
        self._trigger_moved = {"trigger_l": False, "trigger_r": False}

    def _axis(self, control: str) -> float:
        index = self.profile["axes"].get(control)
        if index is None or index >= self.joystick.get_numaxes():
            return 0.0
        value = float(self.joystick.get_axis(index))
        return -value if control in self.profile.get("invert", ()) else value

    def _button(self, index: int | None) -> bool:
        return (
            index is not None
            and 0 <= index < self.joystick.get_numbuttons()
            and bool(self.joystick.get_button(index))
        )

    def _trigger(self, control: str) -> float:
        raw = self._axis(control)
        if raw != 0.0:
            self._trigger_moved[control] = True
        if not self._trigger_moved[control]:
            return 0.0
        return (raw + 1.0) / 2.0

    def state(self) -> Controller:
        sx, sy = melee_stick(self._axis("stick_x"), self._axis("stick_y"))
        cx, cy = melee_stick(self._axis("cstick_x"), self._axis("cstick_y"))
        tl, tr = (
            melee_trigger(self._trigger("trigger_l")),
            melee_trigger(self._trigger("trigger_r")),
        )
        buttons = {b for b, i in self.profile["buttons"].items() if self._button(i)}
        buttons |= {b for b, i in self.profile.get("dpad_buttons", {}).items() if self._button(i)}
        hat = self.profile.get("hat")
        if hat is not None and hat < self.joystick.get_numhats():
            hx, hy = self.joystick.get_hat(hat)
            buttons |= {"DPAD_LEFT"} if hx < 0 else {"DPAD_RIGHT"} if hx > 0 else set()
            buttons |= {"DPAD_DOWN"} if hy < 0 else {"DPAD_UP"} if hy > 0 else set()
        # A fully pressed trigger clicks: Melee sees the digital L/R as well.
        if tl >= 1.0:
            buttons.add("L")
        if tr >= 1.0:
            buttons.add("R")
        for digital, analog in (("L", "trigger_l"), ("R", "trigger_r")):
            if self._button(self.profile["buttons"].get(digital)):
                buttons.add(digital)
                tl, tr = (1.0, tr) if analog == "trigger_l" else (tl, 1.0)
        return Controller(sx, sy, cx, cy, tl, tr, frozenset(buttons))
