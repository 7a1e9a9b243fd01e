"""The mining of the action-end table (`training/mine_action_ends.py`) on made-up runs: a
finite action is kept with its longest real age, a held one and an airborne one are not."""

from __future__ import annotations

import numpy as np

from training.mine_action_ends import MIN_RUNS, STANDING, action_ends

JAB, SHIELD, NAIR = 44, 179, 65
FOX = 1


def runs(action: int, lengths: list[int], grounded: bool = True, following: int = STANDING):
    n = len(lengths)
    return {
        "character": np.full(n, FOX),
        "action": np.full(n, action),
        "length": np.array(lengths),
        "next": np.full(n, following),
        "grounded": np.full(n, grounded),
        "calm": np.ones(n, dtype=bool),
    }


def joined(*parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_a_finite_action_is_kept_with_its_longest_age_and_a_held_one_is_not():
    jabs = [17] * 40 + [5, 8, 20]  # an animation of 17 frames, some cut short, one in hitlag
    shields = [10] * 200 + [200]  # held: the longest is many times the 99th percentile
    table = action_ends(
        joined(runs(JAB, jabs), runs(SHIELD, shields), runs(NAIR, [30] * 40, grounded=False))
    )
    assert [(r["action"], r["last_age"], r["next_action"]) for r in table] == [(JAB, 19, STANDING)]


def test_an_action_seen_too_seldom_or_ending_elsewhere_is_not_kept():
    few = runs(JAB, [17] * (MIN_RUNS - 1))
    assert action_ends(few) == []
    into_a_jump = runs(JAB, [17] * 40, following=24)  # KNEE_BEND: what a player asked for
    assert action_ends(into_a_jump) == []
