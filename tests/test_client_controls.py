"""Controllers to Melee inputs: deadzones, gamepad profiles, hot-plug, keyboard, config file."""

import json
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pygame
import pytest

from client.controller import STICK_DEADZONE, melee_stick, melee_trigger
from client.controls import Controls, ControlsConfig
from client.gamepads import pick_profile
from client.loops import InputClock
from server.protocol import Input


@pytest.fixture(scope="module", autouse=True)
def pygame_ready():
    pygame.init()
    yield


class FakeJoystick:
    """What Controls reads from a pygame Joystick, with settable axes, buttons and hats."""

    def __init__(self, instance_id: int, name: str, axes: int = 6, buttons: int = 16, hats=1):
        self.instance_id, self.name = instance_id, name
        self.axes = [0.0] * axes
        self.buttons = [0] * buttons
        self.hats = [(0, 0)] * hats

    def get_instance_id(self):
        return self.instance_id

    def get_name(self):
        return self.name

    def get_numaxes(self):
        return len(self.axes)

    def get_numbuttons(self):
        return len(self.buttons)

    def get_numhats(self):
        return len(self.hats)

    def get_axis(self, i):
        return self.axes[i]

    def get_button(self, i):
        return self.buttons[i]

    def get_hat(self, i):
        return self.hats[i]


def plug(controls: Controls, joystick: FakeJoystick, device_index: int = 0):
    controls._joystick_factory = lambda index: joystick
    controls.handle_event(pygame.event.Event(pygame.JOYDEVICEADDED, device_index=device_index))


def test_stick_values_under_melee_deadzone_read_zero():
    assert melee_stick(0.28, 0.0) == (0.0, 0.0)
    assert melee_stick(0.0, -0.27) == (0.0, 0.0)
    assert melee_stick(STICK_DEADZONE, 0.0) == (pytest.approx(0.2875), 0.0)
    # each axis has its own deadzone: a mostly horizontal push keeps its x
    assert melee_stick(0.9, 0.2) == (pytest.approx(0.9), 0.0)


def test_stick_is_quantised_to_eightieths_and_clamped_to_the_gate():
    x, y = melee_stick(0.51, 0.0)
    assert x == pytest.approx(41 / 80)
    x, y = melee_stick(1.0, 1.0)  # a square corner is pulled onto the round gate
    assert x == pytest.approx(y) and x == pytest.approx(57 / 80)


def test_trigger_threshold():
    assert melee_trigger(0.25) == 0.0
    assert melee_trigger(0.31) == pytest.approx(43 / 140)
    assert melee_trigger(1.0) == 1.0


def test_profiles_are_picked_by_name():
    profiles = ControlsConfig().profiles
    assert pick_profile("Nintendo GameCube Controller Adapter", profiles)["name"] == "gamecube"
    assert pick_profile("PS4 Controller", profiles)["name"] == "playstation"
    assert pick_profile("Xbox 360 Controller", profiles)["name"] == "xbox"
    assert pick_profile("Some Generic Pad", profiles)["name"] == "xbox"


def test_xbox_pad_maps_sticks_triggers_and_buttons():
    controls = Controls()
    pad = FakeJoystick(7, "Xbox Series X Controller")
    plug(controls, pad)
    pad.axes[0], pad.axes[1] = 1.0, 0.0  # main stick right
    pad.axes[4] = -1.0  # c-stick up (SDL's y points down)
    pad.axes[2] = 1.0  # left trigger fully in
    pad.axes[5] = -1.0  # right trigger released
    pad.buttons[0] = 1  # A
    pad.buttons[5] = 1  # RB -> Z
    state = controls.state(0)
    assert (state.stick_x, state.stick_y) == (1.0, 0.0)
    assert (state.cstick_x, state.cstick_y) == (0.0, 1.0)
    assert state.trigger_l == 1.0 and state.trigger_r == 0.0
    assert state.buttons == {"A", "Z", "L"}  # a full trigger press clicks the digital L
    pad.hats[0] = (-1, 1)
    assert {"DPAD_LEFT", "DPAD_UP"} <= controls.state(0).buttons


def test_untouched_trigger_axis_reads_released():
    controls = Controls()
    pad = FakeJoystick(1, "Xbox 360 Controller")
    plug(controls, pad)
    assert controls.state(0).trigger_l == 0.0  # SDL reports 0.0 (half way) before first move
    pad.axes[2] = -1.0  # the trigger moves (released)...
    assert controls.state(0).trigger_l == 0.0
    pad.axes[2] = 0.0  # ...and is now really half pressed
    assert controls.state(0).trigger_l == pytest.approx(0.5, abs=0.01)


def test_gamecube_adapter_mapping():
    controls = Controls()
    pad = FakeJoystick(3, "Nintendo GameCube Controller")
    plug(controls, pad)
    pad.axes[2] = -1.0  # c-stick left
    pad.axes[1] = -0.5  # main stick half down (the adapter's y points up, like Melee's)
    pad.buttons[9] = 1  # Z
    pad.buttons[8] = 1  # Start
    pad.buttons[7] = 1  # d-pad up
    state = controls.state(0)
    assert state.cstick_x == -1.0 and state.stick_y == pytest.approx(-0.5)
    assert state.buttons == {"Z", "START", "DPAD_UP"}
    pad.buttons[11] = 1  # the L trigger's click: a full press
    assert controls.state(0).trigger_l == 1.0 and "L" in controls.state(0).buttons


def test_hotplug_by_instance_id_assigns_and_frees_slots():
    controls = Controls()
    first, second, third = (
        FakeJoystick(10, "pad a"),
        FakeJoystick(11, "pad b"),
        FakeJoystick(12, "c"),
    )
    plug(controls, first)
    plug(controls, second, 1)
    plug(controls, third, 2)  # both slots taken: ignored
    assert controls.pad_for(0) is controls.pads[10] and controls.pad_for(1) is controls.pads[11]
    assert 12 not in controls.pads
    controls.handle_event(pygame.event.Event(pygame.JOYDEVICEREMOVED, instance_id=10))
    assert controls.pad_for(0) is None and controls.pad_for(1) is controls.pads[11]
    plug(controls, third, 0)  # the freed slot goes to the next pad
    assert controls.pad_for(0) is controls.pads[12]
    first.buttons[0] = 1  # the unplugged pad no longer drives anyone
    assert "A" not in controls.state(0).buttons


def key(kind, name):
    return pygame.event.Event(kind, key=pygame.key.key_code(name))


def test_keyboard_two_players_on_one_keyboard():
    controls = Controls()
    for name in ("d", "f", "left", "j"):
        controls.handle_event(key(pygame.KEYDOWN, name))
    p1, p2 = controls.state(0), controls.state(1)
    assert (p1.stick_x, p1.buttons) == (1.0, {"A"})
    assert (p2.stick_x, p2.buttons) == (-1.0, {"A"})
    controls.handle_event(key(pygame.KEYDOWN, "left shift"))  # tilt: half way
    assert controls.state(0).stick_x == pytest.approx(0.5)
    controls.handle_event(key(pygame.KEYUP, "d"))
    assert controls.state(0).stick_x == 0.0
    controls.handle_event(key(pygame.KEYDOWN, "q"))  # shield
    assert controls.state(0).trigger_l == 1.0 and "L" in controls.state(0).buttons


def test_a_key_tapped_between_two_samples_counts_in_the_next():
    controls = Controls()
    controls.handle_event(key(pygame.KEYDOWN, "f"))  # A, down and up before the input frame
    controls.handle_event(key(pygame.KEYUP, "f"))
    assert controls.state(0).buttons == frozenset()  # not held now...
    assert controls.sample()[0].buttons == {"A"}  # ...but pressed since the last sample
    assert controls.sample()[0].buttons == frozenset()  # once
    controls.handle_event(key(pygame.KEYDOWN, "d"))  # held across samples: in every one
    assert [s.stick_x for s in (controls.sample()[0], controls.sample()[0])] == [1.0, 1.0]
    controls.handle_event(key(pygame.KEYDOWN, "return"))  # Start, tapped on a menu
    controls.handle_event(key(pygame.KEYUP, "return"))
    controls.forget_taps()  # the game starts sampling
    assert "START" not in controls.sample()[0].buttons


def test_keyboard_adds_to_a_gamepad_in_the_same_slot():
    controls = Controls()
    pad = FakeJoystick(5, "Xbox 360 Controller")
    plug(controls, pad)
    pad.buttons[0] = 1
    controls.handle_event(key(pygame.KEYDOWN, "g"))  # B on player 1's keys
    assert controls.state(0).buttons == {"A", "B"}


def test_controls_file_remaps_keys_and_adds_a_profile(tmp_path):
    path = tmp_path / "controls.json"
    path.write_text(
        json.dumps(
            {
                "keyboard": {"1": {"A": "space"}},
                "gamepads": [
                    {
                        "name": "my pad",
                        "match": ["8bitdo"],
                        "axes": {"stick_x": 0, "stick_y": 1},
                        "invert": ["stick_y"],
                        "buttons": {"A": 1, "B": 0},
                    }
                ],
            }
        )
    )
    config = ControlsConfig.load(path)
    controls = Controls(config)
    controls.handle_event(key(pygame.KEYDOWN, "space"))
    assert controls.state(0).buttons == {"A"}
    pad = FakeJoystick(9, "8BitDo Pro 2")
    plug(controls, pad)
    pad.buttons[1] = 1
    assert controls.pads[9].profile["name"] == "my pad"
    assert controls.state(0).buttons == {"A"}


def test_broken_controls_file_names_the_file(tmp_path):
    path = tmp_path / "controls.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"controls\.json"):
        ControlsConfig.load(path)
    path.write_text(json.dumps({"keyboard": {"1": {"A": "no such key"}}}))
    with pytest.raises(ValueError, match="unknown key name"):
        Controls(ControlsConfig.load(path))


def test_state_becomes_a_protocol_input():
    controls = Controls()
    controls.handle_event(key(pygame.KEYDOWN, "w"))
    message = Input.stamped(controls.state(0), frame=42, port=2)
    assert (message.frame, message.port, message.stick_y) == (42, 2, 1.0)


@pytest.mark.parametrize("render_fps", [24, 60, 144, 240])
def test_input_clock_ticks_at_60_hz_whatever_the_drawing_rate(render_fps):
    clock = InputClock(60.0)
    ticks = sum(clock.due(i / render_fps) for i in range(2 * render_fps + 1))  # two seconds
    assert ticks in (119, 120)


def test_input_clock_drops_ticks_after_a_stall():
    clock = InputClock(60.0, max_catch_up=0.25)
    clock.due(0.0)
    assert clock.due(5.0) == 15  # a 5 s stall makes up a quarter second, not 300 ticks
