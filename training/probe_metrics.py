"""The behaviour probes' metrics: numbers read from one player's frames after a probe starts.

A `Window` holds the frames, real or the model's, as numpy arrays; a `Metric` reads a number
from its first frames (did the jump squat start, how high did the jump go, how far did the
dash carry). The same metric reads the real windows that set a probe's expectations
(`training/probe_expectations.py`) and the model's (`training/probe_run.py`), so the two are
compared like for like, within `TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FIRST_SPECIAL = 341  # character-specific action ids (core/actions.py)


@dataclass(frozen=True)
class Window:
    """One player's frames from the situation frame (index 0) to the probe's last frame,
    as numpy arrays, plus what the probe needs to read them."""

    x: np.ndarray
    y: np.ndarray
    action: np.ndarray
    airborne: np.ndarray
    shield: np.ndarray
    facing: int  # +1 right, -1 left, at index 0
    release: int  # index of the last frame of the script's first segment

    def moved_forward(self, start: int = 0) -> float:
        return float((self.x[-1] - self.x[start]) * self.facing)

    def head(self, length: int) -> Window:
        """The first `length` frames."""
        part = slice(0, length)
        return Window(
            self.x[part],
            self.y[part],
            self.action[part],
            self.airborne[part],
            self.shield[part],
            self.facing,
            self.release,
        )


MetricFn = Callable[[Window], float]


@dataclass(frozen=True)
class Metric:
    """A number read from the first `frames` frames after the situation frame (the window
    it reads holds frames + 1 frames, the situation frame first). A real window counts for
    a metric when it matched the script for those frames."""

    fn: MetricFn
    frames: int

    def __call__(self, window: Window) -> float:
        return self.fn(window.head(self.frames + 1))


def _first(mask: np.ndarray) -> int:
    """Index of the first True (len(mask) when none)."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else len(mask)


def reaches(actions: tuple[int, ...], within: int) -> Metric:
    """1 when the player is in one of `actions` within `within` frames of the first input."""
    return Metric(lambda w: float(np.isin(w.action[1:], actions).any()), within)


def reaches_special(within: int) -> Metric:
    return Metric(lambda w: float((w.action[1:] >= FIRST_SPECIAL).any()), within)


def duration(actions: tuple[int, ...], frames: int) -> Metric:
    """Frames spent in `actions` from the first frame in them (0 when never)."""

    def metric(w: Window) -> float:
        inside = np.isin(w.action, actions)
        start = _first(inside[1:]) + 1
        if start >= len(inside):
            return 0.0
        return float(_first(~inside[start:]))

    return Metric(metric, frames)


def liftoff(w: Window) -> float:
    """Frames from the first input to the first airborne frame (the jump squat + 1)."""
    return float(_first(w.airborne[1:] != 0) + 1)


def apex(w: Window) -> float:
    return float(w.y.max() - w.y[0])


def lands(w: Window) -> float:
    """1 when the player left the ground and is back on it at the end."""
    return float((w.airborne != 0).any() and w.airborne[-1] == 0)


def comes_down(w: Window) -> float:
    """1 when the player is more than 5 units below the highest point at the end."""
    return float(w.y[-1] < w.y.max() - 5.0)


def left_ground(w: Window) -> float:
    return float((w.airborne[1:] != 0).any())


def grounded(w: Window) -> float:
    return float((w.airborne == 0).mean())


def drift(w: Window) -> float:
    return float(np.abs(w.x - w.x[0]).max())


def in_action_at_end(actions: tuple[int, ...], frames: int) -> Metric:
    return Metric(lambda w: float(w.action[-1] in actions), frames)


def moved_forward(w: Window) -> float:
    return w.moved_forward()


def end_speed(w: Window) -> float:
    """Mean horizontal speed over the last 5 frames, units per frame."""
    return float(np.abs(np.diff(w.x[-6:])).mean())


def stop_distance(w: Window) -> float:
    """How far the player slid after the stick was let go."""
    return float(abs(w.x[-1] - w.x[w.release]))


def shield_loss(w: Window) -> float:
    return float(w.shield[0] - w.shield[-1])


def fell(w: Window) -> float:
    """1 when the player ends more than 20 units below where they stood (off the stage)."""
    return float(w.y[-1] < w.y[0] - 20.0)


# How close a model's value must come to the real range to count as inside it: differences
# a player cannot see (a unit is about a fifth of Fox's width; a frame is 1/60 s). Metrics
# not listed are counts of frames, or 0/1 outcomes, and get no tolerance beyond a frame. A
# speed gets the precision the motion prior keeps its changes in (fp16: 0.002 units a frame at
# a run's speed, a few of them summed): Fox's top run speed, 2.2 in the real range's p95 to
# the millionth, is the same speed 0.0004 faster.
TOLERANCE = {
    "drift": 1.0,
    "moved_forward": 1.0,
    "stop_distance": 1.0,
    "apex": 1.0,
    "end_speed": 0.005,
}
FRAME_METRICS = {"liftoff", "duration"}
