"""What real games say each behaviour probe should show:
`playmodel probe-expectations --data DIR --out FILE`.

For every probe of `training/probes.py`, every game of a dataset folder (`playmodel parse`) on
a legal stage is searched for the probe's situation (`probes.Probe`: for example a player
standing, grounded, holding nothing, the opponent more than 25 units away) followed by the
probe's inputs, frame for frame (as input classes, `probe_inputs.stick_classes` and
`probe_inputs.button_classes`, with the c-stick neutral), with no new button pressed after the
script's first segment and no damage taken. Real players rarely hold a script to its end, so
each metric counts the windows that matched for the frames it reads
(`probe_metrics.Metric`). The metrics' 5th, 50th and 95th percentiles are written per
character (internal id) and for all characters together. The bundled
`assets/probe_expectations.json` was mined from the training corpus (docs/TRAINING.md,
"Behaviour probes").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from core import game_state as gs
from core.atomic_file import atomic_path
from core.manifest import MANIFEST_NAME, load_manifest
from core.stages import get_stage, legal_stage_ids
from model.rules import STICK_DEADZONE
from training import probe_inputs, probe_metrics
from training import probes as pr

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_EXPECTATIONS = ASSETS / "probe_expectations.json"
PERCENTILES = (5, 50, 95)
MAX_WINDOWS_PER_GAME = 50  # per probe and player: one long idle stretch must not dominate
PLAYER_COLUMNS = ("x", "y", "action", "airborne", "shield", "facing", "percent", "character")
CONTROL_COLUMNS = ("joystick_x", "joystick_y", "cstick_x", "cstick_y", "trigger", "buttons")


def game_files(data_dir: Path) -> list[Path]:
    """The ok games of a dataset folder on a legal stage, each copy of a game once."""
    data_dir = Path(data_dir)
    if not (data_dir / MANIFEST_NAME).exists():
        raise ValueError(f"{data_dir}: no {MANIFEST_NAME}; is it a `playmodel parse` folder?")
    legal, seen, files = set(legal_stage_ids()), set(), []
    for row in load_manifest(data_dir).values():
        if row.get("status") != "ok" or row["hash"] in seen or row.get("stage") not in legal:
            continue
        seen.add(row["hash"])
        files.append(data_dir / row["output"])
    return sorted(files)


def read_game(path: Path) -> dict[str, np.ndarray]:
    columns = ["stage"] + [
        f"{p}_{name}" for p in gs.PLAYERS for name in PLAYER_COLUMNS + CONTROL_COLUMNS
    ]
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, KeyError) as e:
        raise ValueError(f"{path}: cannot read the probe columns ({e})") from e
    return {name: table.column(name).to_numpy() for name in columns}


def windows_in_game(
    game: dict[str, np.ndarray], probe: pr.Probe, player: int
) -> Iterator[tuple[int, probe_metrics.Window, int, str]]:
    """(character, Window, matched, surface) for every place in `game` where `player` meets the
    probe's situation and then presses what its script presses for at least the frames its
    shortest metric reads; `matched` is how many frames in a row matched, undamaged (a metric
    counts the window when it reads no more frames than that); `surface`, "main" or
    "platform", is where the player stands on the situation frame (`probes.surface`)."""
    me, other = gs.PLAYERS[player], gs.PLAYERS[1 - player]
    n, length = len(game["stage"]), probe.length
    facing = np.where(game[f"{me}_facing"] > 0, 1, -1).astype(np.int8)
    cstick_neutral = (np.abs(game[f"{me}_cstick_x"]) < STICK_DEADZONE) & (
        np.abs(game[f"{me}_cstick_y"]) < STICK_DEADZONE
    )
    buttons = probe_inputs.button_classes(
        game[f"{me}_buttons"].astype(np.int64), game[f"{me}_trigger"]
    )
    codes_facing = {}  # the input class of every frame, for a player facing right / left
    for side in (1, -1):
        stick = probe_inputs.stick_classes(game[f"{me}_joystick_x"], game[f"{me}_joystick_y"], side)
        stick[~cstick_neutral] = probe_inputs.OTHER_STICK
        codes_facing[side] = stick.astype(np.int32) * 32 + buttons
    grounded = game[f"{me}_airborne"] == 0
    if probe.situation == "shielding":  # shield up, nothing but the shield held
        situation = grounded & np.isin(game[f"{me}_action"], pr.SHIELD_HELD)
        situation &= codes_facing[1] == probe_inputs.input_code(
            probe_inputs.NEUTRAL, probe_inputs.SHIELD
        )
    else:  # standing, nothing held on the situation frame: the script's presses are new
        situation = grounded & (game[f"{me}_action"] == pr.STANDING) & (codes_facing[1] == 0)
    apart = np.hypot(game[f"{me}_x"] - game[f"{other}_x"], game[f"{me}_y"] - game[f"{other}_y"])
    situation &= apart > probe.opponent_clear
    situation[max(0, n - length - 1) :] = False
    if probe.near_edge:
        stage = get_stage(int(game["stage"][0]))
        x = game[f"{me}_x"]
        behind = np.where(facing > 0, x - stage.main.left_x, stage.main.right_x - x)
        on_main = np.abs(game[f"{me}_y"] - stage.main.y) < 1.0
        situation &= on_main & (behind >= pr.EDGE_RANGE[0]) & (behind <= pr.EDGE_RANGE[1])
    starts = np.flatnonzero(situation)
    if len(starts) == 0:
        return
    main_y = get_stage(int(game["stage"][0])).main.y
    steps = starts[:, None] + 1 + np.arange(length)  # (candidates, length)
    codes = np.where(facing[starts, None] > 0, codes_facing[1][steps], codes_facing[-1][steps])
    allowed = probe.codes()
    width = max(len(a) for a in allowed)
    table = np.array([a + (-1,) * (width - len(a)) for a in allowed])  # (length, width)
    good = (codes[:, :, None] == table[None]).any(-1)  # (candidates, length)
    good[:, 1:] &= new_presses(buttons[steps], probe.release) == 0
    good &= game[f"{me}_percent"][steps] == game[f"{me}_percent"][starts, None]
    matched = np.where(good.all(1), length, (~good).argmax(1))  # frames matched in a row
    keep = matched >= min(m.frames for m in probe.metrics.values())
    starts, matched = starts[keep], matched[keep]
    if len(starts) > MAX_WINDOWS_PER_GAME:  # evenly spread over the game
        pick = np.linspace(0, len(starts) - 1, MAX_WINDOWS_PER_GAME).astype(int)
        starts, matched = starts[pick], matched[pick]
    for t, frames in zip(starts, matched, strict=True):
        span = slice(t, t + length + 1)
        window = probe_metrics.Window(
            x=game[f"{me}_x"][span],
            y=game[f"{me}_y"][span],
            action=game[f"{me}_action"][span],
            airborne=game[f"{me}_airborne"][span],
            shield=game[f"{me}_shield"][span],
            facing=int(facing[t]),
            release=probe.release,
        )
        where = pr.surface(main_y, float(game[f"{me}_y"][t]))
        yield int(game[f"{me}_character"][t]), window, int(frames), where


def new_presses(buttons: np.ndarray, release: int) -> np.ndarray:
    """(candidates, length - 1): the buttons each frame of `buttons` (candidates, length)
    presses that the frame before did not hold, from the script's second segment on (the
    first segment's presses are the script's own)."""
    pressed = buttons[:, 1:] & ~buttons[:, :-1]
    pressed[:, : release - 1] = 0
    return pressed


def summarize(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, column in values.items():
        p5, p50, p95 = np.percentile(np.asarray(column), PERCENTILES)
        out[name] = {"p5": float(p5), "p50": float(p50), "p95": float(p95), "n": len(column)}
    return out


def mine(data_dir: Path, progress: bool = True) -> dict:
    files = game_files(data_dir)
    if not files:
        raise ValueError(f"{data_dir}: no ok game on a legal stage to mine")
    # probe -> surface -> character -> metric -> values
    found = {
        p.name: {s: defaultdict(lambda: defaultdict(list)) for s in SURFACES} for p in pr.PROBES
    }
    for path in tqdm(files, desc="mine", unit="game", disable=not progress):
        game = read_game(path)
        for probe in pr.PROBES:
            for player in range(len(gs.PLAYERS)):
                for character, window, matched, where in windows_in_game(game, probe, player):
                    for name, metric in probe.metrics.items():
                        if matched >= metric.frames:
                            found[probe.name][where][character][name].append(metric(window))
    result = {
        "_about": (
            "Behaviour-probe expectations mined from real games by "
            "training/probe_expectations.py: per probe, the 5th/50th/95th percentile and "
            "count of each metric over every real window with the probe's situation and "
            "inputs, for all characters ('all') and per internal character id, standing on the "
            "main stage (top level) and on a platform ('on_platform')."
        ),
        "games": len(files),
        "probes": {},
    }
    for probe in pr.PROBES:
        main, platform = (_statistics(found[probe.name][s]) for s in SURFACES)
        result["probes"][probe.name] = {"doc": probe.doc, **main, "on_platform": platform}
    return result


SURFACES = ("main", "platform")


def _statistics(by_character: dict[int, dict[str, list[float]]]) -> dict:
    pooled = defaultdict(list)
    for values in by_character.values():
        for name, column in values.items():
            pooled[name] += column
    return {
        "all": summarize(pooled),
        "by_character": {str(c): summarize(v) for c, v in sorted(by_character.items())},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playmodel probe-expectations", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (playmodel parse)")
    parser.add_argument("--out", type=Path, default=DEFAULT_EXPECTATIONS, help="JSON to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = mine(args.data)
    except ValueError as e:
        log.error("%s", e)
        return 2
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, entry in result["probes"].items():
        for label, part in (("main", entry), ("platform", entry["on_platform"])):
            counts = ", ".join(f"{m} {v['n']}" for m, v in part["all"].items())
            print(f"{name:14s} {label:8s} real windows per metric: {counts or 'none'}")
    print(f"{result['games']} games -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
