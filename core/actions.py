"""Melee action states: names and gameplay categories, loaded from `assets/actions.json`.

Action ids are the post-frame `state` (u16). Ids 0-340 are common to every character; their
names are libmelee 0.47.6's `Action` enum (via shared/reference/melee_facts.json). Ids from 341
are character specific (another character's 341 is a different move): they keep libmelee's name
where it has one (its names up to 397 describe Fox, Falco, Marth, Ness, DK, Kirby...), else
`SPECIAL_<id>`, and all of them have the category "special".

Each common id has one category, given by this rule table (by id range; the JSON's `rule`
field names the row that applied to each id):

    ids      libmelee names                                              category
    0-10     DEAD_* (KO animations)                                      dead
    11       NOTHING_STATE (Melee's Sleep: not in the game)              dead
    12-13    ON_HALO_DESCENT, ON_HALO_WAIT (revival platform)            dead
    14       STANDING                                                    idle
    15-23    WALK_*, TURNING*, DASHING, RUN*                             movement
    24-34    KNEE_BEND, JUMPING_*, FALLING*                              aerial
    35-38    DEAD_FALL, SPECIAL_FALL_* (helpless falls), TUMBLING        aerial
    39-41    CROUCH*                                                     idle
    42-43    LANDING, LANDING_SPECIAL                                    movement
    44-64    jabs, DASH_ATTACK, tilts, smashes                           ground_attack
    65-74    NAIR..DAIR and their landings                               aerial_attack
    75-91    DAMAGE_*                                                    damage
    92-93    ITEM_PICKUP_*                                               idle
    94-173   item throws, swings, shots with _AIR in the name            aerial_attack
             the other item throws, swings, shots                        ground_attack
             but ITEM_PARASOL_OPEN/FALL* (144-146), ITEM_SCREW* (154-155) aerial
             and ITEM_PARASOL_DAMAGE_FALL (147), DAMAGE_SCREW* (156-157) damage
    174-177  LIFT_WAIT (holding a heavy item) / LIFT_WALK_*, LIFT_TURN    idle / movement
    178-182  SHIELD*                                                     shield_dodge
    183-204  knockdown: TECH_MISS_*, LYING_*, getups, getup rolls and
             attacks, techs                                              damage
    205-211  SHIELD_BREAK_* (broken shield: stunned)                     damage
    212-222  GRAB*, THROW_* (the grabbing player)                        grab
    223-232  the grabbed player (Melee's Capture*: pulled, held,
             pummeled, escaping; libmelee names some GRAB_*)             damage
    233-236  ROLL_*, SPOTDODGE, AIRDODGE                                 shield_dodge
    237-238  REBOUND_* (recoil after a clank)                            damage
    239-243  THROWN_*                                                    damage
    244      PLATFORM_DROP                                               movement
    245-246  EDGE_TEETERING_*                                            edge
    247-248  BOUNCE_WALL, BOUNCE_CEILING (tumbling into them)            damage
    249-250  BUMP_WALL, BUMP_CIELING (touching them while airborne)       aerial
    251-263  SLIDING_OFF_EDGE, EDGE_* (ledge catch, hang, getups,
             attacks, rolls, jumps)                                      edge
    264-265  TAUNT_*                                                     idle
    266-304  carried, thrown or captured by a character: SHOULDERED_*,
             THROWN_*, CAPTURE_*, BURY*, DAMAGE_SONG*, DAMAGE_BIND,
             YOSHI_EGG, BARREL_WAIT                                      damage
    305-306  WARP_STAR_* (item ride)                                     aerial
    307-313  HAMMER_WAIT / HAMMER_WALK, _TURN, _LANDING /
             HAMMER_KNEE_BEND, _FALL, _JUMP                              idle / movement / aerial
    314-321  KINOKO_* (mushrooms): *_AIR / the others                    aerial / idle
    322-324  ENTRY* (entering at game start: not yet in play)            dead
    325-326  DAMAGE_ICE* (frozen)                                        damage
    327-340  captured by Master/Crazy Hand, Like Like, Kirby's Yoshi;
             DOWN_REFLECT; BARREL_CANNON_WAIT                            damage
    341+     character specific                                          special

Choices beyond the plain name patterns: DEAD_FALL (35) is a helpless fall, not a KO, so it is
aerial; the grabbed player's states (223-232, some named GRAB_*) are damage like THROWN_*, so a
pummel's percent lands in damage; SHIELD_BREAK_* is damage, not shield_dodge; "dead" means out
of play (KO'd, on the revival platform, or entering the stage). Checked on the dev replays: 95%
of the frames where a player's percent rises are damage frames or precede one.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from core.game_state import ACTION_VOCAB

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

CATEGORIES: tuple[str, ...] = (
    "idle",
    "movement",
    "aerial",
    "ground_attack",
    "aerial_attack",
    "damage",
    "shield_dodge",
    "grab",
    "edge",
    "special",
    "dead",
)
COMMON_ACTIONS = 341  # ids 0..340 mean the same for every character

# Ids the game rules use (libmelee Action names).
DEAD_IDS = range(0, 11)  # DEAD_DOWN .. DEAD_FLY_SPLATTER_FLAT_ICE: the KO animations
ON_HALO_DESCENT = 12  # revival platform descending (60 frames)
ON_HALO_WAIT = 13  # resting on the revival platform until the player moves


@functools.cache
def _actions() -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """(common id -> (name, category), character-specific id -> libmelee name)."""
    path = ASSETS_DIR / "actions.json"
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert tuple(data["categories"]) == CATEGORIES, f"{path}: categories differ from CATEGORIES"
    common = {int(k): (v["name"], v["category"]) for k, v in data["common"].items()}
    assert sorted(common) == list(range(COMMON_ACTIONS)), f"{path}: ids 0..340 must all be listed"
    bad = {i: c for i, (_, c) in common.items() if c not in CATEGORIES}
    assert not bad, f"{path}: unknown categories {bad}"
    specific = {int(k): v for k, v in data["character_specific_names"].items()}
    return common, specific


def action_name(action_id: int) -> str:
    common, specific = _actions()
    if action_id < 0:
        raise ValueError(f"action ids are unsigned, got {action_id}")
    if action_id in common:
        return common[action_id][0]
    return specific.get(action_id, f"SPECIAL_{action_id}")


def action_category(action_id: int) -> str:
    if action_id < 0:
        raise ValueError(f"action ids are unsigned, got {action_id}")
    entry = _actions()[0].get(action_id)
    return entry[1] if entry else "special"


@functools.cache
def _category_table() -> tuple[int, ...]:
    return tuple(CATEGORIES.index(action_category(i)) for i in range(ACTION_VOCAB))


def category_table() -> list[int]:
    """Index into CATEGORIES for each action id 0..575 (the model's action vocabulary), e.g.
    `np.asarray(category_table())[actions]`; ids past the table are "special"."""
    return list(_category_table())
