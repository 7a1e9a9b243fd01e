"""Behaviour probes: what a player sees when they press something, held to real games.

A probe is a scripted controller for one player from a situation (standing idle on the main
stage, neutral stick, the opponent out of reach) and a few metrics read from the frames that
follow: did X start a jump squat, how high did the jump go, how far did the dash carry. Each
metric's expectation is mined from real games (`training/probe_expectations.py`): the same
situation, the same inputs frame for frame, the same metric; the model passes a probe when
every metric falls inside the real games' 5th-95th percentile range
(`training/probe_run.py`). One `measure` function reads both the real frames and the model's,
so the two are compared like for like.

Inputs are classes, not exact values: the stick is neutral, or held fully forward / back
(relative to the way the player faces when the probe starts), up or down; buttons are A, B,
jump (X or Y), Z and shield (L or R, digital or analog). A real window matches a script when
every frame's class is the script's (or one of its `also` classes: holding a button that
does nothing more, like A after a jab has started).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.policies import Controller
from model.rules import STICK_DEADZONE

# Stick classes, relative to the way the player faces at the probe's start.
NEUTRAL, FORWARD, BACK, UP, DOWN, OTHER_STICK = range(6)
FULL_TILT = 0.8  # a "held" direction: Melee's dash needs the stick past about 0.8
# Button classes (bit flags).
A, B, JUMP, Z, SHIELD = 1, 2, 4, 8, 16
ANALOG_SHIELD = 0.3  # an analog press past this shields in Melee
# Processed button bits (Slippi spec, pre-frame buttons; model/frame_spec.py BUTTON_BITS).
_BITS = {A: 0x100, B: 0x200, JUMP: 0x400 | 0x800, Z: 0x10, SHIELD: 0x20 | 0x40}

STANDING = 14  # libmelee Action.STANDING (Melee's Wait)
KNEE_BEND = 24
NEUTRAL_ATTACK_1 = 44
DASHING = 20
RUNNING = 21
CROUCH_START, CROUCHING = 39, 40
# SHIELD_START, SHIELD, SHIELD_RELEASE, SHIELD_STUN, SHIELD_REFLECT: real shields are held in
# 179 or 182 (Fox: 182 on 84 of 115 presses from standing in 300 corpus games).
SHIELD_ACTIONS = (178, 179, 180, 181, 182)
SHIELD_HELD = (179, 182)
ROLL_FORWARD, ROLL_BACKWARD, SPOTDODGE = 233, 234, 235
GRAB = 212
FIRST_SPECIAL = 341  # character-specific action ids (core/actions.py)


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
        stick = {
            NEUTRAL: (0.0, 0.0),
            FORWARD: (float(facing), 0.0),
            BACK: (-float(facing), 0.0),
            UP: (0.0, 1.0),
            DOWN: (0.0, -1.0),
        }[self.stick]
        names = {A: "A", B: "B", JUMP: "X", Z: "Z", SHIELD: "R"}
        buttons = frozenset(name for bit, name in names.items() if self.buttons & bit)
        return Controller(
            joystick=stick, r_trigger=1.0 if self.buttons & SHIELD else 0.0, buttons=buttons
        )


def input_code(stick: int, buttons: int) -> int:
    return stick * 32 + buttons


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


def surface(stage_main_y: float, y: float) -> str:
    """Where a grounded player stands: "platform" (higher than the main stage's flat part, as
    every start point but Final Destination's is) or "main". Inputs do different things
    there: from a shield on a platform, down drops through it rather than spot-dodging."""
    return "platform" if y > stage_main_y + PLATFORM_HEIGHT else "main"


PLATFORM_HEIGHT = 1.0  # units above the main stage; the lowest platform (FoD's) sinks to 0.375


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


@dataclass(frozen=True)
class Probe:
    """A scripted controller from a situation, and the metrics read from what follows.

    Situations: "standing" (action STANDING, grounded, nothing held) and "shielding" (shield
    up, only the shield held); `near_edge` adds: on the main stage, within EDGE_RANGE of the
    edge behind the player. A model reaches "shielding" from standing by playing `setup`
    first; the window starts when the setup ends, as a real one starts on the situation frame.
    `opponent_clear`: how far away (units) the opponent must be on the situation frame in a
    real game; the model's opponent starts at the other spawn and holds nothing."""

    name: str
    doc: str
    script: tuple[Segment, ...]
    metrics: dict[str, Metric]
    situation: str = "standing"
    setup: tuple[Segment, ...] = ()
    near_edge: bool = False
    opponent_clear: float = 25.0

    @property
    def length(self) -> int:
        return sum(s.frames for s in self.script)

    def codes(self) -> list[tuple[int, ...]]:
        """The input classes a real frame may have, for each scripted frame."""
        return [s.allowed() for s in self.script for _ in range(s.frames)]

    def controllers(self, facing: int) -> list[Controller]:
        return [s.controller(facing) for s in self.script for _ in range(s.frames)]

    @property
    def setup_frames(self) -> int:
        return sum(s.frames for s in self.setup)

    @property
    def release(self) -> int:
        return self.script[0].frames


EDGE_RANGE = (10.0, 50.0)  # units from the main stage's edge for `near_edge` probes

# Real players drift the stick while a jump plays out; it changes where they land, not how
# high they go or whether they land, which is what the metrics read.
DRIFTING = (NEUTRAL, FORWARD, BACK, OTHER_STICK)
SHIELD_UP = (Segment(10, buttons=SHIELD),)
ANY = (
    NEUTRAL,
    FORWARD,
    BACK,
    UP,
    DOWN,
    OTHER_STICK,
)  # a roll plays out whatever the stick  # the model's way from standing to "shielding"
M = Metric
PROBES: tuple[Probe, ...] = (
    Probe(
        "stand_still",
        "neutral stick for 2 s: stays standing, in place, on the ground",
        (Segment(120),),
        {
            "drift": M(drift, 120),
            "grounded": M(grounded, 120),
            "standing_at_end": in_action_at_end((STANDING,), 120),
        },
    ),
    Probe(
        "full_hop",
        "X held through the jump squat: KNEE_BEND, leaves the ground, a full hop, lands",
        (Segment(8, buttons=JUMP), Segment(62, also=(JUMP,), sticks=DRIFTING)),
        {
            "knee_bend": reaches((KNEE_BEND,), 2),
            "liftoff": M(liftoff, 10),
            "apex": M(apex, 30),
            "comes_down": M(comes_down, 45),
            "lands": M(lands, 70),
        },
    ),
    Probe(
        "short_hop",
        "X tapped for one frame: a lower jump, then landing",
        (Segment(1, buttons=JUMP), Segment(49, sticks=DRIFTING)),
        {
            "knee_bend": reaches((KNEE_BEND,), 2),
            "apex": M(apex, 25),
            "comes_down": M(comes_down, 35),
            "lands": M(lands, 50),
        },
    ),
    Probe(
        "jab",
        "A tapped: NEUTRAL_ATTACK_1 at once, for its real length",
        (Segment(1, buttons=A), Segment(24, also=(A,))),
        {
            "jab": reaches((NEUTRAL_ATTACK_1,), 2),
            "duration": duration((NEUTRAL_ATTACK_1,), 25),
            "grounded": M(grounded, 25),
        },
    ),
    Probe(
        "dash_forward",
        "stick held forward: a dash, then a run, at the real speed and distance",
        (Segment(20, stick=FORWARD),),
        {
            "dash": reaches((DASHING,), 2),
            "moved_forward": M(moved_forward, 20),
            "end_speed": M(end_speed, 20),
            "grounded": M(grounded, 20),
        },
    ),
    Probe(
        "dash_back",
        "stick held back: the character turns and dashes the other way",
        (Segment(15, stick=BACK),),
        {
            "dash": reaches((DASHING,), 3),
            "moved_forward": M(moved_forward, 15),
            "grounded": M(grounded, 15),
        },
    ),
    Probe(
        "run_stop",
        "a dash, then the stick let go: the character stops within the real distance",
        (Segment(20, stick=FORWARD), Segment(15)),
        {"stop_distance": M(stop_distance, 35), "grounded": M(grounded, 35)},
    ),
    Probe(
        "shield",
        "R held: the shield goes up at once and wears down",
        (Segment(12, buttons=SHIELD),),
        {
            "shield": reaches(SHIELD_ACTIONS, 2),
            "shield_loss": M(shield_loss, 12),
            "drift": M(drift, 12),
            "grounded": M(grounded, 12),
        },
    ),
    Probe(
        "crouch",
        "stick held down: crouches in place",
        (Segment(12, stick=DOWN),),
        {
            "crouch": reaches((CROUCH_START, CROUCHING), 2),
            "crouching_at_end": in_action_at_end((CROUCHING,), 12),
            "drift": M(drift, 12),
        },
    ),
    Probe(
        "roll_forward",
        "from shield, the stick forward: a forward roll",
        (Segment(2, stick=FORWARD, buttons=SHIELD), Segment(28, also=(SHIELD,), sticks=ANY)),
        {
            "roll": reaches((ROLL_FORWARD,), 3),
            "moved_forward": M(moved_forward, 30),
            "grounded": M(grounded, 30),
        },
        situation="shielding",
        setup=SHIELD_UP,
    ),
    Probe(
        "spot_dodge",
        "from shield, the stick down: a spot dodge in place",
        (Segment(2, stick=DOWN, buttons=SHIELD), Segment(23, also=(SHIELD,), sticks=ANY)),
        {
            "spot_dodge": reaches((SPOTDODGE,), 3),
            "drift": M(drift, 25),
            "grounded": M(grounded, 25),
        },
        situation="shielding",
        setup=SHIELD_UP,
    ),
    Probe(
        "grab",
        "Z tapped: a standing grab",
        (Segment(1, buttons=Z), Segment(29, also=(Z,))),
        {"grab": reaches((GRAB,), 2), "grounded": M(grounded, 30)},
        opponent_clear=0.0,  # grabs are made near the opponent; damage still rules a window out
    ),
    Probe(
        "neutral_b",
        "B tapped: the character's neutral special starts",
        (Segment(1, buttons=B), Segment(19, also=(B,))),
        {"special": reaches_special(3)},
    ),
    Probe(
        "run_off_edge",
        "from near an edge, the stick held toward it: off the stage and falling",
        (Segment(45, stick=BACK),),
        {"left_ground": M(left_ground, 30), "fell": M(fell, 45)},
        near_edge=True,
    ),
)
PROBES_BY_NAME = {p.name: p for p in PROBES}


def parse_probe_names(text: str) -> list[str]:
    """Comma-separated probe names, each checked against PROBES."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PROBES_BY_NAME))
    if unknown or not names:
        raise ValueError(
            f"unknown probes {', '.join(unknown) or repr(text)}; known: {', '.join(PROBES_BY_NAME)}"
        )
    return names


def measure(probe: Probe, window: Window) -> dict[str, float]:
    return {name: metric(window) for name, metric in probe.metrics.items()}


# ---------------------------------------------------------------------- input classes
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
    # Melee reads Z as A plus a light shield press (model.policies.processed_controller):
    # with Z held, the A bit and the analog 0.35 are Z's own.
    z = (out & Z) != 0
    out[z] &= ~A
    out[(trigger >= ANALOG_SHIELD) & ~z] |= SHIELD
    return out
