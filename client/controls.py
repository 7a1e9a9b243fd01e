"""Gamepads and keyboard to Melee controller states (docs/CLIENT.md has the keymaps).

A `ControllerState` is what one port's controller holds for one frame, already processed the
way Melee processes a GameCube controller (deadzones, 1/80 stick steps), so the model sees the
kind of values the replays it learned from recorded. `Controls` owns the devices: up to two
gamepads, keyed by SDL instance id and assigned to local player slots as they are plugged in
and out, and a keyboard layout per slot. The game loop samples it at a fixed 60 Hz
(`client.loops.InputClock`).

Mappings are data: built-in gamepad profiles below, and a user file
(`~/.config/playmodel/controls.json`) that can override keys and add or replace profiles.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygame

from server.protocol import Controller, Input

log = logging.getLogger(__name__)

# Melee reads the sticks in steps of 1/80 and zeroes an axis whose magnitude is 22 steps or
# less; a trigger in steps of 1/140 with nothing below 43 steps. Measured on every replay in
# shared/replays/dev (peppi-py 0.8.6, pre.joystick / pre.cstick / pre.triggers): all processed
# stick values are 0 or multiples of 0.0125 from 0.2875 (= 23/80) up, and all processed
# triggers 0 or from 0.30714 (= 43/140) up.
STICK_STEP = 1 / 80
STICK_DEADZONE = 23 / 80  # 0.2875: the smallest non-zero value an axis can take
TRIGGER_STEP = 1 / 140
TRIGGER_THRESHOLD = 43 / 140  # 0.3071: the lightest analog press Melee registers
TILT = 0.5  # the keyboard's "tilt" modifier holds the stick half way (walks, tilts)

SLOTS = 2  # local players: slot 0 drives the first local port, slot 1 the second


def melee_stick(x: float, y: float) -> tuple[float, float]:
    """A raw stick position (-1..1 per axis, y up) as Melee would read it."""
    magnitude = math.hypot(x, y)
    if magnitude > 1.0:  # the gate is round: clamp to the unit circle
        x, y = x / magnitude, y / magnitude

    def axis(v: float) -> float:
        v = round(v / STICK_STEP) * STICK_STEP
        return 0.0 if abs(v) < STICK_DEADZONE - 1e-9 else max(-1.0, min(1.0, v))

    return axis(x), axis(y)


def melee_trigger(v: float) -> float:
    """A raw analog trigger (0..1) as Melee would read it."""
    v = round(max(0.0, min(1.0, v)) / TRIGGER_STEP) * TRIGGER_STEP
    return 0.0 if v < TRIGGER_THRESHOLD - 1e-9 else min(1.0, v)


@dataclass(frozen=True)
class ControllerState:
    stick_x: float = 0.0
    stick_y: float = 0.0
    cstick_x: float = 0.0
    cstick_y: float = 0.0
    trigger_l: float = 0.0
    trigger_r: float = 0.0
    buttons: frozenset[str] = frozenset()

    def to_controller(self) -> Controller:
        return Controller(
            stick_x=self.stick_x,
            stick_y=self.stick_y,
            cstick_x=self.cstick_x,
            cstick_y=self.cstick_y,
            trigger_l=self.trigger_l,
            trigger_r=self.trigger_r,
            buttons=sorted(self.buttons),
        )

    def to_input(self, frame: int, port: int, previous: list[Controller] = ()) -> Input:
        """The input for `frame`; `previous`: the controllers sent for the frames before it,
        newest first (docs/PROTOCOL.md)."""
        return Input(frame=frame, port=port, previous=list(previous), **dict(self.to_controller()))


# ------------------------------------------------------------------------------ gamepads
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
        "axes": {
            "stick_x": 0,
            "stick_y": 1,
            "cstick_x": 2,
            "cstick_y": 3,
            "trigger_l": 4,
            "trigger_r": 5,
        },
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
        "axes": {
            "stick_x": 0,
            "stick_y": 1,
            "cstick_x": 2,
            "cstick_y": 3,
            "trigger_l": 4,
            "trigger_r": 5,
        },
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
ANALOG = ("stick_x", "stick_y", "cstick_x", "cstick_y", "trigger_l", "trigger_r")


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

    def state(self) -> ControllerState:
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
        return ControllerState(sx, sy, cx, cy, tl, tr, frozenset(buttons))


# ------------------------------------------------------------------------------ keyboard
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

    def state(self, pressed: set[int]) -> ControllerState:
        def down(control: str) -> bool:
            code = self.codes.get(control)
            return code is not None and code in pressed

        scale = TILT if down("tilt") else 1.0
        x = (down("right") - down("left")) * scale
        y = (down("up") - down("down")) * scale
        sx, sy = melee_stick(x, y)
        cx, cy = melee_stick(down("c_right") - down("c_left"), down("c_up") - down("c_down"))
        buttons = {b for b in ("A", "B", "X", "Y", "Z", "L", "R", "START") if down(b)}
        return ControllerState(
            sx,
            sy,
            cx,
            cy,
            1.0 if "L" in buttons else 0.0,
            1.0 if "R" in buttons else 0.0,
            frozenset(buttons),
        )


# ------------------------------------------------------------------------------ config file
def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "playmodel" / "controls.json"


@dataclass
class ControlsConfig:
    keys: dict[str, dict[str, str]] = field(
        default_factory=lambda: {slot: dict(keys) for slot, keys in DEFAULT_KEYS.items()}
    )
    profiles: list[dict[str, Any]] = field(default_factory=lambda: list(BUILTIN_PROFILES))

    @classmethod
    def load(cls, path: Path | None = None) -> ControlsConfig:
        """The defaults, overridden by the user's file where it exists. A broken file is an
        error that names the file and what is wrong in it."""
        config = cls()
        path = path or config_path()
        if not path.exists():
            return config
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the controls file {path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with 'keyboard' and/or 'gamepads'")
        for slot, keys in (data.get("keyboard") or {}).items():
            if slot not in ("1", "2") or not isinstance(keys, dict):
                raise ValueError(f"{path}: keyboard.{slot} must be an object under '1' or '2'")
            config.keys[slot].update(keys)
        user_profiles = data.get("gamepads") or []
        if not isinstance(user_profiles, list):
            raise ValueError(f"{path}: 'gamepads' must be a list of profiles")
        for i, profile in enumerate(user_profiles):
            missing = {"name", "axes", "buttons"} - set(profile)
            if missing:
                raise ValueError(f"{path}: gamepads[{i}] lacks {sorted(missing)}")
            bad = set(profile["axes"]) - set(ANALOG)
            if bad:
                raise ValueError(f"{path}: gamepads[{i}].axes: unknown controls {sorted(bad)}")
        # User profiles are tried first; one named like a built-in one replaces it.
        names = {p["name"] for p in user_profiles}
        config.profiles = user_profiles + [p for p in config.profiles if p["name"] not in names]
        log.info("controls: loaded %s", path)
        return config


# ------------------------------------------------------------------------------ devices
class Controls:
    """Every local input device, mapped to local player slots 0 and 1.

    Feed it every pygame event (`handle_event`); read a slot's controller with `state(slot)`.
    Gamepads take the lowest free slot when plugged in and free it when unplugged; the keyboard
    layout of a slot is always active, and its presses add to the slot's gamepad."""

    def __init__(self, config: ControlsConfig | None = None, joystick_factory=None):
        self.config = config or ControlsConfig()
        self.keyboard = [
            KeyboardLayout(self.config.keys[str(slot + 1)], f"keyboard.{slot + 1}")
            for slot in range(SLOTS)
        ]
        self.pressed: set[int] = set()
        self.pads: dict[int, Gamepad] = {}  # instance id -> pad
        self.slot_of: dict[int, int] = {}  # instance id -> slot
        self._joystick_factory = joystick_factory or pygame.joystick.Joystick

    def handle_event(self, event: pygame.event.Event) -> None:
        if event.type == pygame.KEYDOWN:
            self.pressed.add(event.key)
        elif event.type == pygame.KEYUP:
            self.pressed.discard(event.key)
        elif event.type == pygame.JOYDEVICEADDED:
            self.add_joystick(self._joystick_factory(event.device_index))
        elif event.type == pygame.JOYDEVICEREMOVED:
            self.remove_joystick(event.instance_id)
        elif event.type == pygame.WINDOWFOCUSLOST:
            self.pressed.clear()  # keys released while unfocused never send KEYUP

    def add_joystick(self, joystick: Any) -> Gamepad | None:
        if joystick.get_instance_id() in self.pads:
            return self.pads[joystick.get_instance_id()]  # SDL can announce a pad twice
        free = [s for s in range(SLOTS) if s not in self.slot_of.values()]
        if not free:
            log.info("gamepad %r ignored: both players already have one", joystick.get_name())
            return None
        pad = Gamepad(joystick, pick_profile(joystick.get_name(), self.config.profiles))
        self.pads[pad.instance_id] = pad
        self.slot_of[pad.instance_id] = free[0]
        log.info("gamepad %r (%s layout) -> player %d", pad.name, pad.profile["name"], free[0] + 1)
        return pad

    def remove_joystick(self, instance_id: int) -> None:
        pad = self.pads.pop(instance_id, None)
        slot = self.slot_of.pop(instance_id, None)
        if pad is not None:
            log.info("gamepad %r unplugged (player %d)", pad.name, slot + 1)

    def pad_for(self, slot: int) -> Gamepad | None:
        for instance_id, s in self.slot_of.items():
            if s == slot:
                return self.pads[instance_id]
        return None

    def state(self, slot: int) -> ControllerState:
        keys = self.keyboard[slot].state(self.pressed)
        pad = self.pad_for(slot)
        if pad is None:
            return keys
        p = pad.state()
        # The keyboard wins an axis it is pushing; buttons from both count.
        sx, sy = (
            (keys.stick_x, keys.stick_y) if keys.stick_x or keys.stick_y else (p.stick_x, p.stick_y)
        )
        cx, cy = (
            (keys.cstick_x, keys.cstick_y)
            if keys.cstick_x or keys.cstick_y
            else (p.cstick_x, p.cstick_y)
        )
        return ControllerState(
            sx,
            sy,
            cx,
            cy,
            max(keys.trigger_l, p.trigger_l),
            max(keys.trigger_r, p.trigger_r),
            keys.buttons | p.buttons,
        )

    def describe(self, cpu: dict[int, str] | None = None) -> list[str]:
        """One line per slot for the start screen: what drives it. `cpu` maps the ports a
        scripted policy plays (1, 2) to the policy's name."""
        lines = []
        for slot in range(SLOTS):
            pad = self.pad_for(slot)
            device = f"{pad.name} ({pad.profile['name']})" if pad else "keyboard"
            if cpu and slot + 1 in cpu:
                device = f"cpu ({cpu[slot + 1]})"
            lines.append(f"P{slot + 1}: {device}")
        return lines
