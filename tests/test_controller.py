"""The one controller (`core.controller.Controller`): its checks, and Melee's processing of it
into the dataset's controller columns."""

from __future__ import annotations

import numpy as np
import pytest

from core import game_state as gs
from core.controller import BUTTON_BITS, Controller


def test_processed_columns_are_the_datasets_controller_fields():
    assert list(Controller().processed()) == [f.name for f in gs.CONTROLLER_FIELDS]


def test_columns_use_the_replay_bitmask():
    columns = Controller(stick_x=1.0, stick_y=-0.5, buttons=frozenset({"A", "Z"})).columns(1)
    assert columns["p2_joystick_x"] == 1.0 and columns["p2_joystick_y"] == -0.5
    assert columns["p2_buttons"] == BUTTON_BITS["A"] | BUTTON_BITS["Z"]


def test_z_is_a_plus_a_light_shield_and_a_digital_trigger_a_full_press():
    z = Controller(buttons=frozenset({"Z"})).processed()
    assert (z["buttons"], z["buttons_physical"], z["trigger"]) == (0x110, 0x10, 0.35)
    r = Controller(buttons=frozenset({"R"}), trigger_l=0.4).processed()
    assert (r["buttons"], r["trigger"], r["trigger_l"]) == (0x20, 1.0, 0.4)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"stick_x": 1.5}, "stick_x 1.5 is outside -1..1"),
        ({"cstick_y": float("nan")}, "cstick_y nan is outside -1..1"),
        ({"trigger_r": -0.1}, "trigger_r -0.1 is outside 0..1"),
        ({"trigger_l": "1"}, "trigger_l must be a number in 0..1"),
        ({"stick_y": True}, "stick_y must be a number"),
        ({"buttons": frozenset({"TURBO"})}, "buttons: unknown \\['TURBO'\\]"),
        ({"buttons": "A"}, "buttons must be a set of names"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(fields, problem):
    with pytest.raises(ValueError, match=problem):
        Controller(**fields)


def test_values_are_stored_as_floats_and_buttons_as_a_frozenset():
    controller = Controller(stick_x=1, trigger_r=np.float32(0.5), buttons=["A", "A"])
    assert type(controller.stick_x) is float and controller.trigger_r == 0.5
    assert controller.buttons == frozenset({"A"})
    assert controller == Controller(stick_x=1.0, trigger_r=0.5, buttons=frozenset({"A"}))
