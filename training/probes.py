"""Behaviour probes: what a player sees when they press something, held to real games.

A probe is a scripted controller for one player from a situation (standing idle on the main
stage, neutral stick, the opponent out of reach) and a few metrics read from the frames that
follow: did X start a jump squat, how high did the jump go, how far did the dash carry. Each
metric's expectation is mined from real games (`training/probe_expectations.py`): the same
situation, the same inputs frame for frame, the same metric; the model passes a probe when
every metric falls inside the real games' 5th-95th percentile range
(`training/probe_run.py`). One `measure` function reads both the real frames and the model's,
so the two are compared like for like (`training/probe_metrics.py`).

Inputs are classes, not exact values (`training/probe_inputs.py`). A real window matches a
script when every frame's class is the script's (or one of its `also` classes: holding a
button that does nothing more, like A after a jab has started). This module holds the probes
themselves: the situations they start from and the table of probes, `PROBES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.controller import Controller
from training.probe_inputs import (
    BACK,
    DOWN,
    FORWARD,
    JUMP,
    NEUTRAL,
    OTHER_STICK,
    SHIELD,
    UP,
    A,
    B,
    Segment,
    Z,
)
from training.probe_metrics import (
    Metric,
    Window,
    apex,
    comes_down,
    drift,
    duration,
    end_speed,
    fell,
    grounded,
    in_action_at_end,
    lands,
    left_ground,
    liftoff,
    moved_forward,
    reaches,
    reaches_special,
    shield_loss,
    stop_distance,
)

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


def surface(stage_main_y: float, y: float) -> str:
    """Where a grounded player stands: "platform" (higher than the main stage's flat part, as
    every start point but Final Destination's is) or "main". Inputs do different things
    there: from a shield on a platform, down drops through it rather than spot-dodging."""
    return "platform" if y > stage_main_y + PLATFORM_HEIGHT else "main"


PLATFORM_HEIGHT = 1.0  # units above the main stage; the lowest platform (FoD's) sinks to 0.375


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
SHIELD_UP = (Segment(10, buttons=SHIELD),)  # the model's way from standing to "shielding"
ANY = (NEUTRAL, FORWARD, BACK, UP, DOWN, OTHER_STICK)  # a roll plays out whatever the stick
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
