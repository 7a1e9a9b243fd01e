"""A raw stick and trigger read the way Melee reads a GameCube controller (deadzones, 1/80
stick steps), so that the model sees the kind of values the replays it learned from recorded.
Gamepads (`client.gamepads`) and the keyboard (`client.keyboard`) quantise with these and
produce a `core.controller.Controller`; `InputSender` (`client.connection`) sends it as the
wire protocol's `Input`.
"""

from __future__ import annotations

import math

# Melee reads the sticks in steps of 1/80 and zeroes an axis whose magnitude is 22 steps or
# less; a trigger in steps of 1/140 with nothing below 43 steps. Measured on every replay in
# shared/replays/dev (peppi-py 0.8.6, pre.joystick / pre.cstick / pre.triggers): all processed
# stick values are 0 or multiples of 0.0125 from 0.2875 (= 23/80) up, and all processed
# triggers 0 or from 0.30714 (= 43/140) up.
STICK_STEP = 1 / 80
STICK_DEADZONE = 23 / 80  # 0.2875: the smallest non-zero value an axis can take
TRIGGER_STEP = 1 / 140
TRIGGER_THRESHOLD = 43 / 140  # 0.3071: the lightest analog press Melee registers


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
