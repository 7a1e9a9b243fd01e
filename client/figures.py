"""Characters drawn as Melee players read them: a figure as tall as the character, in a pose
chosen by its action, its shield bubble, and the hitboxes its action has on this frame.

Sizes and hitboxes come from libmelee's recorded tables (`assets/characters.json`, made by
`assets/make_characters.py`); the poses are drawing choices, one per kind of action a player
tells apart at a glance: standing, running, crouching, airborne, shielding, reeling from a
hit, tumbling, lying down, hanging from the ledge, grabbing.

A figure is a few parts (head, torso, limbs) laid out in units of the character's height for
a character facing right, with y up from the feet (Melee's position is at the feet). Facing
left mirrors them; a pose may turn them (a tumble spins about the body's middle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pygame

from client import assets
from server.protocol import Player

# Melee action-state ids (libmelee's Action enum, assets/actions.json) that pick a pose.
SHIELD_ACTIONS = frozenset(range(178, 183))  # SHIELD_START .. SHIELD_REFLECT
CROUCH_ACTIONS = frozenset((39, 40, 41, 57))  # CROUCH_START, CROUCHING, CROUCH_END, DOWNTILT
LEDGE_ACTIONS = frozenset((252, 253))  # EDGE_CATCHING, EDGE_HANGING
TUMBLE_ACTIONS = frozenset((38, *range(87, 92)))  # TUMBLING, DAMAGE_FLY_*
LYING_ACTIONS = frozenset((183, 184, 185, 191, 192, 193, 207, 208))  # TECH_MISS, LYING_*, ...
REELING_ACTIONS = frozenset((*range(75, 87), *range(223, 244)))  # DAMAGE_*, grabbed, thrown
RUN_ACTIONS = frozenset((20, 21, 22))  # DASHING, RUNNING, RUN_DIRECT
GRAB_ACTIONS = frozenset(range(212, 219))  # GRAB .. GRAB_BREAK

# Builds: most characters are drawn slim; these broad, and the round ones as a ball.
BROAD = frozenset(("BOWSER", "DONKEY_KONG", "GANONDORF"))
ROUND = frozenset(("JIGGLYPUFF", "KIRBY"))

TUMBLE_TURN = 0.3  # radians a frame: a tumbling figure turns once in about 21 frames
LEAN_BACK, LEAN_RUN = 0.35, -0.25  # radians: reeling leans back, running leans forward
# The shield bubble: around the body's middle, as wide as the character is tall at full
# health (60), shrinking linearly with health to a fifth of that (a drawing choice).
SHIELD_FULL = 60.0
SHIELD_RADIUS = (0.12, 0.5)  # in heights: at no health, added at full health
REACH = 0.55  # heights: the longest an arm reaching for a hitbox gets
HITBOX_FILL = (255, 40, 40, 140)  # Melee's debug display draws hitboxes red
HITBOX_EDGE = (255, 225, 225)
LIMB_SHADE = 0.68  # limbs are the port colour, darker
EYE = (20, 20, 30)


# Drawing order: the far limbs, the near leg, the torso, the head, the near arm.
BACK, LEG, TORSO, HEAD, ARM = range(5)


@dataclass(frozen=True)
class Part:
    """A capsule from `a` to `b` (a circle when they are equal), radius `r`; in heights."""

    kind: str  # "torso", "head", "limb"
    a: tuple[float, float]
    b: tuple[float, float]
    r: float
    layer: int  # drawn in this order (BACK .. ARM)


def _legs(spread: float = 0.07, bend: tuple[float, float] | None = None) -> list[Part]:
    hip_y = 0.36
    if bend is not None:  # airborne: knees drawn up in front
        knee = bend
        return [
            Part("limb", (-0.04, hip_y), (knee[0] - 0.05, knee[1]), 0.065, BACK),
            Part("limb", (0.04, hip_y), knee, 0.065, LEG),
        ]
    return [
        Part("limb", (-spread, 0.065), (-0.05, hip_y), 0.065, BACK),
        Part("limb", (spread, 0.065), (0.05, hip_y), 0.065, LEG),
    ]


def _upright(arms: tuple[tuple[float, float], tuple[float, float]], **legs) -> list[Part]:
    """A standing figure: legs, torso, head, and the arms reaching to the two hand points."""
    back_hand, front_hand = arms
    return [
        *_legs(**legs),
        Part("limb", (-0.06, 0.62), back_hand, 0.05, BACK),
        Part("torso", (0.0, 0.40), (0.0, 0.60), 0.16, TORSO),
        Part("head", (0.03, 0.84), (0.03, 0.84), 0.15, HEAD),
        Part("limb", (0.06, 0.62), front_hand, 0.05, ARM),
    ]


def _parts(pose: str, hands: tuple[float, float] | None = None) -> list[Part]:
    """The parts of a pose before any turn; `hands` is where a hanging figure holds on."""
    if pose == "crouch":
        return [
            Part("limb", (-0.12, 0.065), (0.0, 0.2), 0.07, BACK),
            Part("limb", (0.14, 0.065), (0.06, 0.2), 0.07, LEG),
            Part("torso", (0.0, 0.22), (0.1, 0.32), 0.16, TORSO),
            Part("head", (0.2, 0.47), (0.2, 0.47), 0.15, HEAD),
            Part("limb", (0.14, 0.36), (0.3, 0.2), 0.05, ARM),
        ]
    if pose in ("airborne", "tumble"):
        return _upright(((-0.22, 0.74), (0.22, 0.7)), bend=(0.16, 0.2))
    if pose == "shield":
        return _upright(((0.1, 0.5), (0.18, 0.52)), spread=0.11)
    if pose == "run":
        return _upright(((-0.2, 0.48), (0.2, 0.5)), spread=0.16)
    if pose == "grab":
        return _upright(((0.2, 0.55), (0.42, 0.56)))
    if pose == "ledge":
        hx, hy = hands if hands is not None else (0.1, 1.25)
        return _upright(((hx - 0.05, hy), (hx, hy)))
    return _upright(((-0.14, 0.42), (0.16, 0.42)))


def pose_of(player: Player) -> str:
    """The pose that shows what the player is doing, from the action and the airborne flag."""
    action = player.action
    if action in SHIELD_ACTIONS:
        return "shield"
    if action in CROUCH_ACTIONS:
        return "crouch"
    if action in LEDGE_ACTIONS:
        return "ledge"
    if action in TUMBLE_ACTIONS:
        return "tumble"
    if action in LYING_ACTIONS:
        return "lying"
    if action in REELING_ACTIONS:
        return "reeling"
    if player.airborne:
        return "airborne"
    if action in RUN_ACTIONS:
        return "run"
    if action in GRAB_ACTIONS:
        return "grab"
    return "stand"


def _reach(parts: list[Part], targets: list[tuple[float, float]]) -> list[Part]:
    """The near arm reaches towards the farthest active hitbox, so that an attack shows in
    the figure as well as in the red discs."""
    i, arm = next((i, p) for i, p in enumerate(parts) if p.layer == ARM)
    shoulder = arm.a
    far = max(targets, key=lambda t: math.dist(t, shoulder))
    distance = math.dist(far, shoulder)
    if distance < 1e-6:
        return parts
    k = min(distance, REACH) / distance
    hand = (shoulder[0] + (far[0] - shoulder[0]) * k, shoulder[1] + (far[1] - shoulder[1]) * k)
    return [*parts[:i], Part(arm.kind, shoulder, hand, arm.r, arm.layer), *parts[i + 1 :]]


def _turn(pose: str, state_age: float) -> tuple[float, tuple[float, float], float]:
    """(angle, pivot, lift) of a pose: its parts turn by `angle` (radians, counterclockwise
    when facing right) about `pivot`, then rise by `lift` (all in heights)."""
    if pose == "tumble":
        return state_age * TUMBLE_TURN, (0.0, 0.5), 0.0
    if pose == "lying":  # on the back, head behind
        return math.pi / 2, (0.0, 0.0), 0.17
    if pose == "reeling":
        return LEAN_BACK, (0.0, 0.0), 0.0
    if pose == "run":
        return LEAN_RUN, (0.0, 0.0), 0.0
    return 0.0, (0.0, 0.0), 0.0


def _rotate(point, angle, pivot, lift):
    if angle == 0.0:
        return point[0], point[1] + lift
    c, s = math.cos(angle), math.sin(angle)
    x, y = point[0] - pivot[0], point[1] - pivot[1]
    return pivot[0] + c * x - s * y, pivot[1] + s * x + c * y + lift


def _build(parts: list[Part], name: str) -> list[Part]:
    """The character's build: broad characters get a wider torso, round ones are a ball."""
    if name in BROAD:
        return [
            Part(p.kind, p.a, p.b, p.r * 1.4, p.layer) if p.kind == "torso" else p for p in parts
        ]
    if name in ROUND:
        out = []
        for p in parts:
            if p.kind == "torso":  # the ball: from the hips to the top of the head
                mid = ((p.a[0] + p.b[0]) / 2, (p.a[1] + p.b[1]) / 2 + 0.08)
                out.append(Part("torso", mid, mid, 0.4, p.layer))
            elif p.kind != "head":
                out.append(p)
        return out
    return parts


@dataclass
class Figure:
    """A player's figure laid out in world units: where each part is, and the body's middle."""

    parts: list[tuple[Part, tuple[float, float], tuple[float, float], float]]  # part, a, b, r
    centre: tuple[float, float]  # the torso's middle
    eye: tuple[float, float]
    eye_r: float
    height: float

    @property
    def top(self) -> float:
        """The highest point of the figure (world y)."""
        return max(max(a[1], b[1]) + r for _, a, b, r in self.parts)


def layout(
    player: Player,
    x: float,
    y: float,
    ledge: tuple[float, float] | None = None,
) -> Figure:
    """The player's figure with its feet at (x, y) in world units. `ledge`: the corner of the
    stage a hanging player holds (world units), for the hands."""
    height = assets.character_size(player.character)
    facing = 1 if player.facing >= 0 else -1
    pose = pose_of(player)
    hands = None
    if pose == "ledge" and ledge is not None:
        hx, hy = (ledge[0] - x) * facing / height, (ledge[1] - y) / height
        if abs(hx) < 1.0 and 0.0 < hy < 3.0:  # a ledge within reach; else hands overhead
            hands = (hx, hy)
    parts = _parts(pose, hands)
    angle, pivot, lift = _turn(pose, player.state_age)
    boxes = assets.hitboxes(player.character, player.action, action_frame(player))
    if boxes and angle == 0.0 and pose != "ledge":
        parts = _reach(parts, [(dx / height, dy / height) for _, dx, dy in boxes])
    parts = _build(parts, assets.character_name(player.character))

    def world(point):
        px, py = _rotate(point, angle, pivot, lift)
        return x + facing * px * height, y + py * height

    placed = [(p, world(p.a), world(p.b), p.r * height) for p in parts]
    torso = next(p for p in parts if p.kind == "torso")
    head = next((p for p in parts if p.kind == "head"), torso)
    centre = world(((torso.a[0] + torso.b[0]) / 2, (torso.a[1] + torso.b[1]) / 2))
    eye = world((head.a[0] + head.r * 0.5, head.a[1] + head.r * 0.15))
    return Figure(placed, centre, eye, max(0.025, head.r * 0.22) * height, height)


def shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, round(c * factor))) for c in colour)


def draw_figure(surface: pygame.Surface, camera, figure: Figure, colour, outline) -> None:
    """The parts, far ones first, over a silhouette in `outline` one pixel wider."""
    ordered = sorted(figure.parts, key=lambda item: item[0].layer)
    for _, a, b, r in ordered:
        _capsule_px(surface, camera, a, b, r, outline, grow=1)
    limb = shade(colour, LIMB_SHADE)
    for part, a, b, r in ordered:
        _capsule_px(surface, camera, a, b, r, limb if part.kind == "limb" else colour)
    pygame.draw.circle(
        surface, EYE, camera.to_screen(*figure.eye), max(2, camera.length(figure.eye_r))
    )


def _capsule_px(surface, camera, a, b, r, colour, grow: int = 0) -> None:
    radius = max(1, camera.length(r)) + grow
    pa, pb = camera.to_screen(*a), camera.to_screen(*b)
    pygame.draw.circle(surface, colour, pa, radius)
    if pa != pb:
        pygame.draw.circle(surface, colour, pb, radius)
        # A thick segment as a quad: pygame's wide lines leave gaps at steep angles.
        dx, dy = pb[0] - pa[0], pb[1] - pa[1]
        length = math.hypot(dx, dy)
        nx, ny = -dy / length * radius, dx / length * radius
        corners = [(pa[0] + nx, pa[1] + ny), (pb[0] + nx, pb[1] + ny)]
        corners += [(pb[0] - nx, pb[1] - ny), (pa[0] - nx, pa[1] - ny)]
        pygame.draw.polygon(surface, colour, corners)


def shield_radius(player: Player) -> float:
    """The bubble's radius in world units: shrinks with shield health (0-60)."""
    health = max(0.0, min(1.0, player.shield / SHIELD_FULL))
    low, full = SHIELD_RADIUS
    return assets.character_size(player.character) * (low + full * health)


def draw_shield(surface, camera, player: Player, centre, colour) -> None:
    radius = camera.length(shield_radius(player))
    bubble = pygame.Surface((2 * radius + 2, 2 * radius + 2), pygame.SRCALPHA)
    pygame.draw.circle(bubble, (*colour, 110), (radius + 1, radius + 1), radius)
    pygame.draw.circle(bubble, (235, 235, 240, 200), (radius + 1, radius + 1), radius, 2)
    cx, cy = camera.to_screen(*centre)
    surface.blit(bubble, (cx - radius - 1, cy - radius - 1))


def action_frame(player: Player) -> int:
    """The frame of its action the player is on, counted from 1 as libmelee's table counts
    it; the wire's `state_age` counts 0 on an action's first frame (the rules' count)."""
    return int(player.state_age) + 1


def active_hitboxes(player: Player) -> list[tuple[float, float, float]]:
    """The hitboxes the player's action has on this frame, as (x, y, radius) in world units.

    The offsets are from the player's position, not from where the figure is drawn: a
    grounded figure stands on the stage even when an animation moves the position below it,
    and the hit lands where the game puts it."""
    facing = 1 if player.facing >= 0 else -1
    boxes = assets.hitboxes(player.character, player.action, action_frame(player))
    return [(player.x + facing * dx, player.y + dy, radius) for radius, dx, dy in boxes]


def draw_hitboxes(surface, camera, boxes: list[tuple[float, float, float]]) -> None:
    for x, y, r in boxes:
        radius = max(2, camera.length(r))
        disc = pygame.Surface((2 * radius + 2, 2 * radius + 2), pygame.SRCALPHA)
        pygame.draw.circle(disc, HITBOX_FILL, (radius + 1, radius + 1), radius)
        pygame.draw.circle(disc, (*HITBOX_EDGE, 230), (radius + 1, radius + 1), radius, 2)
        cx, cy = camera.to_screen(x, y)
        surface.blit(disc, (cx - radius - 1, cy - radius - 1))
