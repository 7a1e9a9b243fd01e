"""Rule 7: a finite action ends when real games would have ended it.

Melee ends a jab, a landing, a shield's release or a run's brake after a fixed number of
frames, the character's own. The model learned to keep an action (its copy prior keeps last
frame's action with ~88% probability, docs/MODEL.md), and in play it held them far longer:
a tapped A gave Fox a 47-frame jab (real ones: at most 20), a jump's LANDING lasted 56-75
frames (at most 30), Fox's RUN_BRAKE slid 63 units over 70 frames (at most 18 frames).

The table `action_ends.csv` (beside this file; made by `training/mine_action_ends.py` from
the corpus's 870 games) holds, per (character, action) of the finite grounded actions that
real games end in STANDING when the player does nothing, the oldest age (`state_age`) any real
run of it reached. A player whose action would grow older than that is put in the table's next
action (STANDING) instead, and the simulation then counts its age from 0. Since the limit is
the longest real run, the rule changes no frame of a game like the real ones (tested on the
dev games, which are not in the corpus).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import torch
from torch import Tensor

from core import game_state as gs
from model.rule_state import Players

TABLE = Path(__file__).resolve().parent / "action_ends.csv"
NO_END = 1.0e9  # the age limit of an action the table does not hold


@functools.cache
def action_end_table() -> dict[tuple[int, int], tuple[int, int]]:
    """(character, action) -> (last real age, next action), from `action_ends.csv`."""
    with open(TABLE, newline="", encoding="utf-8") as f:
        return {
            (int(row["character"]), int(row["action"])): (
                int(row["last_age"]),
                int(row["next_action"]),
            )
            for row in csv.DictReader(f)
        }


@functools.lru_cache(maxsize=8)
def _constants(device: torch.device) -> dict[str, Tensor]:
    """The table as two flat tensors indexed by character * ACTION_VOCAB + action, made once
    per device (a CUDA graph capture refuses a host-to-device copy; a trace keeps constants),
    outside inference mode as `model.rules._constants` are."""
    size = gs.CHARACTER_VOCAB * gs.ACTION_VOCAB
    ages, ends = [NO_END] * size, [0] * size
    for (character, action), (age, next_action) in action_end_table().items():
        ages[character * gs.ACTION_VOCAB + action] = float(age)
        ends[character * gs.ACTION_VOCAB + action] = next_action
    with torch.inference_mode(False):
        return {
            "last_age": torch.tensor(ages, device=device),
            "next": torch.tensor(ends, dtype=torch.long, device=device),
        }


def end_overlong_actions(frame: dict[str, Tensor], prev: dict[str, Tensor]) -> None:
    """Rule 7, in place, on a (B,) frame given the one before."""
    players = Players(frame)
    end_overlong(players, Players(prev))
    players.write_back()


def end_overlong(players: Players, prev: Players) -> None:
    """Each player whose action would be older than any real run of it (for their character)
    moves on to the action real games go to next; both players at once, without a branch on
    the data. `state_age` is left to `rules._count_ages`, which runs after and counts the new
    action from 0."""
    table = _constants(players["action"].device)
    action = players["action"]  # (B, 2)
    age = torch.where(action == prev["action"], prev["state_age"].float() + 1, 0.0)
    character = players["character"].long().clamp(0, gs.CHARACTER_VOCAB - 1)
    index = character * gs.ACTION_VOCAB + action.long().clamp(0, gs.ACTION_VOCAB - 1)
    over = age > table["last_age"][index]
    players["action"] = torch.where(over, table["next"][index].to(action.dtype), action)
