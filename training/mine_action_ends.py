"""Mine how long each character's finite grounded actions last in real games, and where they go.

    python -m training.mine_action_ends DATASET [--out model/action_ends.csv]

Reads a parsed dataset folder (`playmodel parse`; `manifest.jsonl` and one parquet file per
game) and writes `model/action_ends.csv`, the table of the action-end rule
(`model/action_ends.py`, docs/SIMULATION.md rule 7). A run is a stretch of consecutive frames
of one player in one action, counted as the simulation counts `state_age` (0 on the action's
first frame, +1 while it stays). For each (character, action) the table keeps:

- `last_age`: the oldest age any real run reached (its longest run, less one frame). The rule
  ends an action only past it, so it never changes a frame of a game like the real ones.
- `next_action`: where real runs went when the game, not the player, ended them: the most
  common next action of the longest tenth of the runs (length at least their 90th percentile)
  whose next frame had a neutral controller (stick and C-stick inside Melee's deadzone, no
  button, triggers up), over every character's runs for a common action (ids below 341 mean
  the same for all; Marth's players seldom let a run's brake end by itself), over the
  character's own for a character-specific one. A jab goes to STANDING, not to the second jab
  that a held A starts. Only actions that go to STANDING so are kept: from STANDING the model
  reads the controls and does what they ask, where an end chosen for a neutral controller (a
  shield's start into its release, a run into its brake) would undo a held input.

A row is written only for an action that is finite, grounded and the game's to end:
- at least `MIN_RUNS` runs of it for that character, started on the ground in at least
  `GROUNDED_SHARE` of them (an airborne action ends when the player lands, which only the
  model and the collision rules know);
- bounded: the longest run at most `BOUNDED_RATIO` times the 99th percentile (a held action,
  standing, walking, shielding, crouching, hanging, runs for as long as the input lasts: its
  longest run is many times its 99th percentile);
- not one the rules already play (KO, revival platform, entry: category "dead"), nor a walk,
  a dash or a run (`HELD_BY_THE_STICK`): Melee keeps those for as long as the stick is held
  (a dash held becomes a run), and some characters' real ones look bounded only because the
  stage is (Fox's longest fast walk, 58 frames, crosses most of Final Destination);
- ended in STANDING (above).

Made from the 870 games of shared/corpus/dataset (2026-12-02 parse), 1.32M runs.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from core import game_state as gs
from core.actions import COMMON_ACTIONS, action_category, action_name
from model.rules import STICK_DEADZONE
from training.mined_tables import parsed_games, write_table

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "model" / "action_ends.csv"
MIN_RUNS = 30
GROUNDED_SHARE = 0.99
BOUNDED_RATIO = 1.5
STANDING = 14  # libmelee Action.STANDING (Melee's Wait)
HELD_BY_THE_STICK = (15, 16, 17, 20, 21)  # WALK_SLOW, WALK_MIDDLE, WALK_FAST, DASHING, RUNNING
TRIGGER_UP = 0.3  # below an analog press that shields (training/probe_inputs.ANALOG_SHIELD)
COLUMNS = ("action", "character", "airborne", "joystick_x", "joystick_y", "cstick_x", "cstick_y")


def player_runs(table, p: str) -> dict[str, np.ndarray]:
    """One player's runs in one game: character, action, length, next action (-1 at the
    game's end), whether it started on the ground and whether the next frame's controller was
    neutral."""
    col = {c: table[f"{p}_{c}"].to_numpy(zero_copy_only=False) for c in COLUMNS}
    action = col["action"].astype(np.int64)
    neutral = (
        (np.abs(col["joystick_x"]) < STICK_DEADZONE)
        & (np.abs(col["joystick_y"]) < STICK_DEADZONE)
        & (np.abs(col["cstick_x"]) < STICK_DEADZONE)
        & (np.abs(col["cstick_y"]) < STICK_DEADZONE)
        & (table[f"{p}_buttons"].to_numpy(zero_copy_only=False) == 0)
        & (np.nan_to_num(table[f"{p}_trigger"].to_numpy(zero_copy_only=False)) < TRIGGER_UP)
    )
    change = np.flatnonzero(np.diff(action) != 0) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(action)]])
    following = np.full(len(starts), -1)
    following[:-1] = action[ends[:-1]]
    calm = np.zeros(len(starts), dtype=bool)
    calm[:-1] = neutral[ends[:-1]]
    return {
        "character": col["character"].astype(np.int64)[starts],
        "action": action[starts],
        "length": ends - starts,
        "next": following,
        "grounded": col["airborne"].astype(np.int64)[starts] == 0,
        "calm": calm,
    }


def corpus_runs(folder: Path) -> dict[str, np.ndarray]:
    """Every player's runs in every ok game of a dataset folder."""
    names = [f"{p}_{c}" for p in gs.PLAYERS for c in (*COLUMNS, "buttons", "trigger")]
    parts = []
    for table in parsed_games(folder, names):
        parts += [player_runs(table, p) for p in gs.PLAYERS]
    log.info("%s: %d games, %d runs", folder, len(parts) // 2, sum(len(r["length"]) for r in parts))
    return {k: np.concatenate([r[k] for r in parts]) for k in parts[0]}


def action_ends(runs: dict[str, np.ndarray]) -> list[dict]:
    """The table's rows (see the module docstring), by character then action."""
    out = []
    keys = runs["character"] * 1000 + runs["action"]
    ended = (runs["next"] >= 0) & runs["calm"]
    complete = np.zeros(len(keys), dtype=bool)  # the runs of each key's longest tenth
    for key in np.unique(keys):
        mask = keys == key
        complete |= mask & (runs["length"] >= np.percentile(runs["length"][mask], 90))
    for key in np.unique(keys):
        character, action = divmod(int(key), 1000)
        mask = keys == key
        lengths = runs["length"][mask]
        if mask.sum() < MIN_RUNS or action in HELD_BY_THE_STICK:
            continue
        if action_category(action) == "dead":
            continue
        if runs["grounded"][mask].mean() < GROUNDED_SHARE:
            continue
        if lengths.max() > BOUNDED_RATIO * np.percentile(lengths, 99):
            continue
        # A common action means the same for every character: its end is all of theirs.
        same = mask if action >= COMMON_ACTIONS else runs["action"] == action
        ends = Counter(runs["next"][same & complete & ended].tolist())
        if not ends or ends.most_common(1)[0][0] != STANDING:
            continue
        out.append(
            {
                "character": character,
                "action": action,
                "last_age": int(lengths.max()) - 1,
                "next_action": STANDING,
                "runs": int(mask.sum()),
                "name": action_name(action),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = action_ends(corpus_runs(args.dataset))
    write_table(rows, args.out)
    log.info("%d (character, action) rows -> %s", len(rows), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
