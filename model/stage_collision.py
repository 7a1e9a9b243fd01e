"""Rule 4 of `model/rules.py`: the stage is solid, and where nothing is, nobody stands.

A model trained on replays never saw a player inside the stage, so it does not keep them out
of it: left alone, players sink through the floor, land in mid-air and run off an edge onto
nothing. These rules apply Melee's collision to the model's frame, on the stage geometry of
the `RuleState` (the main stage's flat part and edges, the platforms that do not move):

- A player who was on or above the main stage's flat part and is predicted to sink more than
  `FLOOR_TOLERANCE` below its surface is put back on it, with no downward speed.
- A player the model carries more than `LANDING_DIP` through the flat part in a jump, fall or
  aerial lands there, in the landing action Melee gives it.
- A player the model has on the ground, standing, moving or shielding
  (`STANDING_STILL_ON_GROUND`), within `SURFACE_SNAP` of the flat part's height or
  `PLATFORM_SNAP` of a platform, stands on it (at its height, with no vertical self speed).
- A player the model keeps standing, moving or shielding with nothing under them (past the
  main stage's edge, or off its height where no platform is, on stages whose surfaces the
  rules know) falls (FALL, airborne, the ground speed carried into the air), as one who runs
  off an edge does in Melee; without this a run off the edge hung in mid-air.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.rule_state import Players, RuleState

# Real players dip below the main stage's surface while over it (landings, rolls, knockdowns:
# the position is not the feet), by at most 12.5 units on the 84 games of shared/replays (1,722
# dips measured, 0.1% deeper than 11.1). Sinking further than this is the model's drift.
FLOOR_TOLERANCE = 13.0
# A grounded player this close to a surface's height, over it, stands on it (kept there
# every frame, the model's drift never gets far).
PLATFORM_SNAP = 3.0
# The main stage's: Fountain of Dreams' side platforms sink to 0.375 units above it.
SURFACE_SNAP = 0.3
LIFTOFF_SPEED = 0.5  # units a frame; a slower rise on the ground is the model's drift
# Landing (libmelee action ids): jumps and falls (25-34) land in LANDING, helpless falls (35-37)
# in LANDING_SPECIAL, NAIR..DAIR (65-69) in their own landings (70-74).
FIRST_AIRBORNE, HELPLESS = 25, (35, 36, 37)
LANDING, LANDING_SPECIAL = 42, 43
NAIR, DAIR, NAIR_LANDING = 65, 69, 70
# Slippi records a landing a frame late: still falling, up to 5.9 units below the surface on the
# dev games. Deeper than this, a player still falling has gone through the stage.
LANDING_DIP = 7.0
# The actions in which a grounded player's position is the surface's, to the thousandth of a
# unit, on the dev games: standing, walking, turning, dashing, running, braking, crouching,
# shielding. Attacks and being held move the position with the animation (up to 13 units
# below the surface), so those are left to the model; so are landings, but below the surface
# where every surface is known (in `collide_with_stage`).
STANDING_STILL_ON_GROUND = (14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 39, 40, 41)
STANDING_STILL_ON_GROUND += (178, 179, 180, 181, 182)
# Where nothing is, nobody stands: of the 2.76M grounded frames in those actions in the 870
# corpus games, none was more than 0.1 units past the main stage's edge or a platform's end
# (but on Yoshi's Story's Randall, below the stage), and none off the main stage's height on
# no platform, but on the stages whose surfaces move or change.
EDGE_OVERHANG = 1.0
# Landings (LANDING, LANDING_SPECIAL, the aerials' own) move with their animation, so only past
# the main stage's edge do they say nothing is under a player: of the 1.27M grounded landing
# frames in the 870 corpus games, none was there (by more than EDGE_OVERHANG, on any stage,
# but on Yoshi's Story below it). In play the model once landed a run off Battlefield's edge
# 16 units below it, in mid-air, for 4 frames.
LANDINGS = (LANDING, LANDING_SPECIAL, *range(NAIR_LANDING, NAIR_LANDING + DAIR - NAIR + 1))
FALL_ACTION = 29  # libmelee Action.FALL: off the ground without a jump
# Dropping through a platform (libmelee Action.PLATFORM_DROP) starts on a platform, never on
# the main stage: of 4,375 drops in 500 corpus games, the one that started at the main stage's
# height was on Fountain of Dreams, whose side platforms sink to it. In a probe the model
# dropped Ganondorf's crouch through Yoshi's Story's main stage.
PLATFORM_DROP = 244


def keep_above_main_stage(
    frame: dict[str, Tensor], prev: dict[str, Tensor], rules: RuleState
) -> None:
    """Rule 4, in place: nobody falls through the flat part of the main stage from above."""
    players = Players(frame)
    collide_with_stage(players, Players(prev), rules)
    players.write_back()


def collide_with_stage(players: Players, prev: Players, rules: RuleState) -> None:
    """Rule 4, in place, on the rules' (B, 2) view of the players (`rules.rule_step`): the
    landing, the standing on a surface and the fall off an edge of the module docstring."""
    half_width, surface = rules.floor[:, 0, None], rules.floor[:, 1, None]  # (B, 1)
    floor = surface - FLOOR_TOLERANCE
    known = rules.floor[:, 3, None] > 0  # the rules know every surface of this stage
    x, y, was_y = players["x"], players["y"], prev["y"].float()
    over = (x.abs() < half_width) & (prev["x"].float().abs() < half_width)
    # No drop through the main stage, where every surface is known: a platform drop started
    # from its height keeps the player in the action before it, on the ground (PLATFORM_DROP).
    blocked = over & known & (players["action"] == PLATFORM_DROP)
    blocked &= (prev["action"] != PLATFORM_DROP) & ((was_y - surface).abs() < PLATFORM_SNAP)
    players["action"] = torch.where(
        blocked, prev["action"].to(players["action"].dtype), players["action"]
    )
    players["airborne"] = torch.where(blocked, 0, players["airborne"])
    players["vel_self_y"] = torch.where(blocked, 0.0, players["vel_self_y"])
    y = players["y"] = torch.where(blocked, surface.to(y.dtype), y)
    sunk = over & (was_y >= floor) & (y < floor)
    # An airborne player falling through the surface lands on it, as Melee's collision makes
    # them: y at the surface, on the ground, no vertical speed, and the landing action Melee's
    # engine gives the action they fell in (an aerial's own landing, LANDING_SPECIAL after a
    # helpless fall, else LANDING), from its first frame; how long the landing lasts and what
    # follows is the model's. Without this the model, which never saw a player in the air below
    # the stage, kept falling through it in its jump.
    # Only players the model still has jumping or falling: a tumble's bounce, a tech or a
    # landing the model already made dip below the surface too, as real ones do.
    action = players["action"]
    aerial_attack = (action >= NAIR) & (action <= DAIR)
    helpless = (action >= HELPLESS[0]) & (action <= HELPLESS[-1])
    falling = ((action >= FIRST_AIRBORNE) & (action <= HELPLESS[-1])) | aerial_attack
    landing = over & falling & (prev["airborne"] != 0) & (players["airborne"] != 0)
    landing &= (was_y >= surface - LANDING_DIP) & (y < surface - LANDING_DIP)
    landing &= players["vel_self_y"] <= 0
    players["airborne"] = torch.where(landing, 0, players["airborne"])
    landed_in = torch.where(aerial_attack, action + NAIR_LANDING - NAIR, LANDING)
    landed_in = torch.where(helpless, LANDING_SPECIAL, landed_in)
    players["action"] = torch.where(landing, landed_in, action)
    players["state_age"] = torch.where(landing, 0.0, players["state_age"].float()).to(
        players["state_age"].dtype
    )
    sunk = sunk | landing
    # A grounded player stands on the surface under them (the collision Melee's engine
    # computes): on the corpus's Final Destination games, 88% of grounded frames over the
    # stage are at its height to 0.001 units (most of the rest predate the airborne field).
    # Only near the surface, so that a wrong "grounded" high above it (or a player on
    # Fountain of Dreams' sinking side platforms) moves nobody.
    # Not a player the model sends upward (every character's jump leaves at well over
    # LIFTOFF_SPEED): a jump's first frame may come before its airborne flag does.
    on_ground = (players["airborne"] == 0) & (players["vel_self_y"] < LIFTOFF_SPEED)
    grounded = on_ground & _is_any(players["action"], STANDING_STILL_ON_GROUND)
    landing_now = on_ground & _is_any(players["action"], LANDINGS)
    standing = over & grounded & ((y - surface).abs() < SURFACE_SNAP)
    # Below the surface too, where the rules know every surface: none of the corpus's 2.2M
    # such frames off Pokemon Stadium (whose transformations have lower ground) was, and in
    # play a jump's landing left a player running 5.9 units inside Battlefield. A grounded
    # landing too: of the 313k grounded landing frames over the flat part of the main stage
    # on the corpus's stages with known surfaces (400 games), every one is at the surface's
    # height, and in play the model held a short hop's LANDING 6 units inside Battlefield.
    standing |= over & (grounded | landing_now) & known & (y < surface) & (y >= floor)
    players["y"] = torch.where(sunk | standing, surface, y)
    for name in ("vel_self_y", "vel_knockback_y"):
        players[name] = torch.where(sunk, players[name].clamp(min=0), players[name])
    # The same on the platforms that do not move, a little above or below their height.
    on = _on_platforms(players, rules) & grounded[..., None]  # (B, 2, P)
    height = (rules.platforms[:, None, :, 2] * on).sum(-1)  # (B, 2): at most one per player
    on_platform = on.any(-1)
    players["y"] = torch.where(on_platform, height, players["y"])
    players["vel_self_y"] = torch.where(standing | on_platform, 0.0, players["vel_self_y"])
    # On the ground over the stage nobody falls: a grounded player's self speed is never
    # downward (the landing's dip below the surface is the animation's, not a fall).
    down = over & (players["airborne"] == 0) & ((players["y"] - surface).abs() < FLOOR_TOLERANCE)
    players["vel_self_y"] = torch.where(
        down, players["vel_self_y"].clamp(min=0), players["vel_self_y"]
    )
    _fall_off_edges(players, grounded, landing_now, rules)


def _on_platforms(players: Players, rules: RuleState, overhang: float = 0.0) -> Tensor:
    """(B, 2, P): whether each player is over each platform that does not move (to within
    `overhang` past its ends) and within PLATFORM_SNAP of its height."""
    platforms = rules.platforms[:, None]  # (B, 1, P, 3)
    x, y = players["x"][..., None], players["y"][..., None]  # (B, 2, 1)
    on = (x >= platforms[..., 0] - overhang) & (x <= platforms[..., 1] + overhang)
    return on & ((y - platforms[..., 2]).abs() < PLATFORM_SNAP)


def _fall_off_edges(players: Players, grounded: Tensor, landing: Tensor, rules: RuleState) -> None:
    """A grounded player with nothing under them falls: FALL from its first frame, airborne,
    the ground speed carried into the air. Nothing is under them past the main stage's edge
    (at or above its height; below it too, but on Yoshi's Story, where Randall circles), or
    above the main stage off its height where no platform is: the latter only on stages
    whose every surface the rules know (not Fountain of Dreams' moving platforms, not
    Pokemon Stadium's transformations). A player `landing` (LANDINGS) falls only past the
    edge: a landing's animation moves it off the surface's height."""
    surface, edge, known = rules.floor[:, 1, None], rules.floor[:, 2, None], rules.floor[:, 3, None]
    x, y = players["x"], players["y"]
    on = _on_platforms(players, rules, EDGE_OVERHANG)  # (B, 2, P)
    past = x.abs() > edge + EDGE_OVERHANG
    off_height = ((y - surface).abs() >= FLOOR_TOLERANCE) & (known > 0)
    clear_below = rules.floor[:, 4, None] > 0
    high_enough = (y >= surface - FLOOR_TOLERANCE) | clear_below
    off = ~on.any(-1) & high_enough & ((grounded & (past | off_height)) | (landing & past))
    players["airborne"] = torch.where(off, 1, players["airborne"])
    players["action"] = torch.where(off, FALL_ACTION, players["action"])
    players["state_age"] = torch.where(off, 0.0, players["state_age"].float()).to(
        players["state_age"].dtype
    )
    carried = torch.where(off, players["vel_self_x_ground"], players["vel_self_x_air"])
    players["vel_self_x_air"] = carried
    players["vel_self_x_ground"] = torch.where(off, 0.0, players["vel_self_x_ground"])


def _is_any(values: Tensor, ids: tuple[int, ...]) -> Tensor:
    out = values == ids[0]
    for other in ids[1:]:
        out |= values == other
    return out
