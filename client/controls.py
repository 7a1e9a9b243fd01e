"""The local input devices of `playmodel play`, mapped to local players (docs/CLIENT.md has
the keymaps).

`Controls` owns the devices: up to two gamepads, keyed by SDL instance id and assigned to local
player slots as they are plugged in and out, and a keyboard layout per slot; `state(slot)` is
that slot's `Controller`. The game loop samples it at a fixed 60 Hz.

Mappings are data: the built-in gamepad profiles (`client.gamepads`) and keyboard layouts
(`client.keyboard`), overridden by a user file (`~/.config/playmodel/controls.json`) that can
change keys and add or replace profiles (`ControlsConfig`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygame

from client.gamepads import ANALOG, BUILTIN_PROFILES, Gamepad, pick_profile
from client.keyboard import DEFAULT_KEYS, KeyboardLayout
from core.controller import Controller

log = logging.getLogger(__name__)

SLOTS = 2  # local players: slot 0 drives the first local port, slot 1 the second


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
        self.tapped: set[int] = set()  # keys pressed since the last `sample`, released or not
        self.pads: dict[int, Gamepad] = {}  # instance id -> pad
        self.slot_of: dict[int, int] = {}  # instance id -> slot
        self._joystick_factory = joystick_factory or pygame.joystick.Joystick

    def handle_event(self, event: pygame.event.Event) -> None:
        if event.type == pygame.KEYDOWN:
            self.pressed.add(event.key)
            self.tapped.add(event.key)
        elif event.type == pygame.KEYUP:
            self.pressed.discard(event.key)
        elif event.type == pygame.JOYDEVICEADDED:
            self.add_joystick(self._joystick_factory(event.device_index))
        elif event.type == pygame.JOYDEVICEREMOVED:
            self.remove_joystick(event.instance_id)
        elif event.type == pygame.WINDOWFOCUSLOST:
            self.pressed.clear()  # keys released while unfocused never send KEYUP
            self.tapped.clear()

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

    def state(self, slot: int) -> Controller:
        """What drives `slot` now: the keys held and its gamepad."""
        return self._state(slot, self.pressed)

    def sample(self) -> list[Controller]:
        """Every slot's controller for one input frame. A key pressed and released since the
        last sample counts as held in this one: on a loaded machine two samples may be 30 ms
        apart, and a quick tap of A or jump between them was lost (seen in play)."""
        held = self.pressed | self.tapped
        self.tapped.clear()
        return [self._state(slot, held) for slot in range(SLOTS)]

    def forget_taps(self) -> None:
        """Start sampling afresh: keys tapped before now (on a menu) count in no sample."""
        self.tapped.clear()

    def _state(self, slot: int, pressed: set[int]) -> Controller:
        keys = self.keyboard[slot].state(pressed)
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
        return Controller(
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
