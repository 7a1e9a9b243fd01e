"""Action-state names and categories (`core.actions`), checked against libmelee and replays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import actions
from core.game_state import ACTION_VOCAB
from core.replay_reader import read_replay


def test_every_id_has_one_category():
    table = actions.category_table()
    assert len(table) == ACTION_VOCAB == 576
    for action_id, index in enumerate(table):
        assert actions.CATEGORIES[index] == actions.action_category(action_id)
    assert {actions.CATEGORIES[i] for i in table} == set(actions.CATEGORIES)
    assert actions.action_category(ACTION_VOCAB + 100) == "special"  # beyond the table


@pytest.mark.parametrize(
    ("action_id", "name", "category"),
    [
        (14, "STANDING", "idle"),
        (24, "KNEE_BEND", "aerial"),
        (44, "NEUTRAL_ATTACK_1", "ground_attack"),
        (65, "NAIR", "aerial_attack"),
        (75, "DAMAGE_HIGH_1", "damage"),
        (179, "SHIELD", "shield_dodge"),
        (212, "GRAB", "grab"),
        (253, "EDGE_HANGING", "edge"),
        (0, "DEAD_DOWN", "dead"),
        (35, "DEAD_FALL", "aerial"),  # helpless fall, not a KO
        (341, "LASER_GUN_PULL", "special"),  # libmelee's name (Fox and Falco's meaning)
        (386, "SPECIAL_386", "special"),  # no libmelee name
        (535, "SPECIAL_535", "special"),
    ],
)
def test_known_ids(action_id, name, category):
    assert actions.action_name(action_id) == name
    assert actions.action_category(action_id) == category


def test_common_names_are_libmelee_names(replays):
    with open(replays.parent / "reference" / "melee_facts.json", encoding="utf-8") as f:
        names = json.load(f)["action_states"]["libmelee_Action_enum"]["id_to_name"]
    for action_id in range(actions.COMMON_ACTIONS):
        assert actions.action_name(action_id) == names[str(action_id)]


def test_rule_constants():
    assert actions.action_name(actions.ON_HALO_DESCENT) == "ON_HALO_DESCENT"
    assert actions.action_name(actions.ON_HALO_WAIT) == "ON_HALO_WAIT"
    for action_id in actions.DEAD_IDS:
        assert actions.action_name(action_id).startswith("DEAD_")
        assert actions.action_category(action_id) == "dead"
    assert actions.action_category(actions.ON_HALO_WAIT) == "dead"
    with pytest.raises(ValueError, match="unsigned"):
        actions.action_name(-1)


def test_percent_rises_mostly_in_damage(replays):
    """A hit raises the percent on the frame the victim enters (or is about to enter) damage."""
    damage = actions.CATEGORIES.index("damage")
    category = np.asarray(actions.category_table())
    rises = in_damage = 0
    for path in sorted((replays / "dev").glob("*.slp")):
        table = read_replay(path).table
        for p in ("p1", "p2"):
            percent = table.column(f"{p}_percent").to_numpy()
            action = np.minimum(table.column(f"{p}_action").to_numpy(), ACTION_VOCAB - 1)
            is_damage = category[action] == damage
            rise = np.flatnonzero(np.diff(percent) > 0) + 1  # frames whose percent went up
            after = np.minimum(rise + 1, len(action) - 1)
            rises += len(rise)
            in_damage += int((is_damage[rise] | is_damage[after]).sum())
    assert rises > 500
    assert in_damage / rises > 0.8  # 95% on the dev replays; the rest: hits without flinch
