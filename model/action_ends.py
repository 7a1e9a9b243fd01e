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

A dash is the stick's to end, not the game's, but a held one ends too: in Melee a dash lasts a
fixed number of frames, the character's own, and becomes a run (RUNNING) when the stick is
still held forward after it. The model never let Ganondorf's dash become one (it held the dash
and slowed it, as a dash let go slows). The table `dash_runs.csv` (made by
`training/mine_dash_runs.py`) holds, per character, the most frames in a row any real dash was
held forward (Ganondorf: 15); a player whose dash is held longer runs instead, at the dash's
last speed, as real runs start (`run_after_held_dash`), counting the held frames in
`RuleState.dash_held`.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import torch
from torch import Tensor

from core import game_state as gs
from model.rule_state import Players, RuleState

TABLE = Path(__file__).resolve().parent / "action_ends.csv"
DASH_TABLE = Path(__file__).resolve().parent / "dash_runs.csv"
NO_END = 1.0e9  # the age limit of an action the table does not hold
NO_RUN = 1_000_000  # the held-dash limit of a character the dash table does not hold
DASHING, RUNNING = 20, 21  # libmelee Action.DASHING, Action.RUNNING
# A dash becomes a run with the stick forward past this on the frame after it (corpus: 0.62-0.65
# ran on 38 of 45 full dashes, 0.6-0.62 on none of 22, past 0.8 on 11,278 of 12,278; the six
# characters of training.probe_run, 870 games; `training.mine_dash_runs` counts with it).
RUN_STICK = 0.62


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


@functools.cache
def dash_run_table() -> dict[int, int]:
    """character -> the most frames in a row a real dash was held forward, from
    `dash_runs.csv`."""
    with open(DASH_TABLE, newline="", encoding="utf-8") as f:
        return {int(row["character"]): int(row["last_held"]) for row in csv.DictReader(f)}


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
    held = [NO_RUN] * gs.CHARACTER_VOCAB
    for character, last_held in dash_run_table().items():
        held[character] = last_held
    with torch.inference_mode(False):
        return {
            "last_age": torch.tensor(ages, device=device),
            "next": torch.tensor(ends, dtype=torch.long, device=device),
            "last_held": torch.tensor(held, dtype=torch.long, device=device),
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


def run_after_held_dash(
    players: Players, prev: Players, rules: RuleState, controls: dict[str, Tensor] | None
) -> None:
    """Each player whose dash has been held forward (the stick past RUN_STICK toward where
    they face, frame after frame, facing one way) for more frames than any real dash of their
    character runs (RUNNING), as Melee makes a held dash run; both players at once, without a
    branch on the data. `rules.dash_held` counts the held frames, this one included; with no
    stick in `controls` nothing is held. `state_age` is left to `rules._count_ages`."""
    action = players["action"]  # (B, 2)
    sticks = []
    for p in gs.PLAYERS:
        if controls is not None and f"{p}_joystick_x" in controls:
            sticks.append(controls[f"{p}_joystick_x"].float())
        else:  # controls without this player's stick: nothing held
            sticks.append(torch.zeros_like(action[:, 0], dtype=torch.float32))
    facing = torch.where(players["facing"] > 0, 1.0, -1.0)
    forward = torch.stack(sticks, -1) * facing  # (B, 2)
    held = (action == DASHING) & (forward >= RUN_STICK)
    was_facing = torch.where(prev["facing"] > 0, 1.0, -1.0)
    going_on = held & (prev["action"] == DASHING) & (was_facing == facing) & (rules.dash_held > 0)
    count = torch.where(going_on, rules.dash_held + 1, held.long())
    character = players["character"].long().clamp(0, gs.CHARACTER_VOCAB - 1)
    over = count > _constants(action.device)["last_held"][character]
    players["action"] = torch.where(over, RUNNING, action)
    rules.dash_held.copy_(torch.where(over, 0, count))
    # The run's first frame keeps the dash's last speed (corpus, after a held dash: first-run
    # over last-dash ground speed 0.987-1.0, p5-p95, 306 Ganondorf runs; Fox 0.985-1.0 of
    # 3,944), where the model had the held dash slow down as a dash let go does.
    speed = players["vel_self_x_ground"]
    carried = prev["vel_self_x_ground"].to(speed.dtype)
    players["x"] = torch.where(
        over, players["x"] + (carried - speed).to(players["x"].dtype), players["x"]
    )
    players["vel_self_x_ground"] = torch.where(over, carried, speed)
