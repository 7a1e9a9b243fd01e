"""Mine how long each character's dash lasts, held forward, before Melee makes it a run.

    python -m training.mine_dash_runs DATASET [--out model/dash_runs.csv]

Reads a parsed dataset folder (`playmodel parse`; `manifest.jsonl` and one parquet file per
game) and writes `model/dash_runs.csv`, the table of the held-dash rule (`model/action_ends.py`,
docs/SIMULATION.md rule 7). In Melee a dash (DASHING) lasts a fixed number of frames, the
character's own; if the stick is still held forward past `RUN_STICK` on the frame after it,
the player runs (RUNNING), else the dash plays on as the speed falls. The rule counts a
player's held dash as this script does: consecutive DASHING frames, facing one way, with the
stick forward past `RUN_STICK` on each (`held_dash`). For each character the table keeps:

- `last_held`: the most such frames in a row any real dash had. Past it the rule makes the
  dash a run; since it is the real maximum, the rule changes no frame of a game like the real
  ones.
- `held_dashes`: how many real dashes were held that long, `to_run`: how many of them went
  on to RUNNING (the rest: a jump, a shield, an attack, pressed on that frame).

A row is written for a character with at least `MIN_HELD` dashes held to `last_held`, and
for which RUNNING follows the most of them.

Made from the 870 games of shared/corpus/dataset (2026-12-02 parse).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from core import game_state as gs
from core.melee_ids import character_name_internal
from model.action_ends import DASHING, RUN_STICK, RUNNING
from training.mined_tables import parsed_games, write_table

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "model" / "dash_runs.csv"
MIN_HELD = 10
COLUMNS = ("action", "character", "facing", "joystick_x")


def held_dash(action: np.ndarray, facing: np.ndarray, stick_x: np.ndarray) -> np.ndarray:
    """(T,) how many DASHING frames in a row, facing one way, the stick has been held forward
    past RUN_STICK, this frame included (0 where it is not)."""
    held = (action == DASHING) & (stick_x * np.sign(facing) >= RUN_STICK)
    same = np.zeros(len(action), dtype=bool)
    same[1:] = held[1:] & held[:-1] & (np.sign(facing[1:]) == np.sign(facing[:-1]))
    position = np.arange(len(action))
    start = np.maximum.accumulate(np.where(same, 0, position))
    return np.where(held, position - start + 1, 0)


def dash_runs(folder: Path) -> list[dict]:
    """The table's rows (see the module docstring), by character."""
    longest: dict[int, int] = defaultdict(int)
    ends: dict[int, list[tuple[int, int]]] = defaultdict(list)  # (held frames, next action)
    games = 0
    names = [f"{p}_{c}" for p in gs.PLAYERS for c in COLUMNS]
    for table in parsed_games(folder, names):
        games += 1
        for p in gs.PLAYERS:
            col = {c: table[f"{p}_{c}"].to_numpy(zero_copy_only=False) for c in COLUMNS}
            action = col["action"].astype(np.int64)
            character = col["character"].astype(np.int64)
            held = held_dash(action, col["facing"], col["joystick_x"])
            for c in np.unique(character[held > 0]):
                longest[int(c)] = max(longest[int(c)], int(held[character == c].max()))
            last = np.flatnonzero((held[:-1] > 0) & (held[1:] == 0))  # a held stretch's end
            for i in last:
                ends[int(character[i])].append((int(held[i]), int(action[i + 1])))
    log.info("%s: %d games", folder, games)
    out = []
    for character in sorted(longest):
        full = [n for h, n in ends[character] if h == longest[character]]
        nexts = Counter(full)
        if len(full) < MIN_HELD or nexts.most_common(1)[0][0] != RUNNING:
            continue
        out.append(
            {
                "character": character,
                "last_held": longest[character],
                "held_dashes": len(full),
                "to_run": nexts[RUNNING],
                "name": character_name_internal(character),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = dash_runs(args.dataset)
    write_table(rows, args.out)
    log.info("%d characters -> %s", len(rows), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
