"""`playmodel probe --checkpoint CKPT [--stages ...] [--characters ...] [--json OUT] [--plot PNG]`.

Plays every behaviour probe of `training/probes.py` on the model, for every stage and
character asked for (by default the six legal stages and the corpus's six most played
characters), and holds each outcome to what real games show (`assets/probe_expectations.json`,
mined by `playmodel probe-expectations`).

Each probe is one game from a standard start on the main stage (`model.game_start.GameSetup`,
`on_main_stage`: the real windows are mined per surface, and most stand on the main stage;
on a platform some inputs do other things; P1 at least `ROOM_BEHIND` units from the edge
behind: `probe_start_x`), where both players
hold nothing until frame `SETTLE_FRAME` (in real games the entry ends, a 30-frame LANDING
follows and the players stand by frame -9), then P1 plays the probe's setup and script while
P2, the same character, holds nothing. All games run in one batch through the `Simulation`
the server uses, rules included. A metric passes when its value lies inside the real games'
5th-95th percentile range for that character (all characters together where the character
has fewer than `MIN_REAL` real windows), widened by `probe_metrics.TOLERANCE` / one frame; a
probe passes when all its metrics with enough real data pass. The pass rate is over the (probe,
stage, character) games with at least one metric judged.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.atomic_file import atomic_path
from core.controller import Controller
from core.melee_ids import character_name_internal, parse_character, stage_name
from core.stages import get_stage, legal_stage_ids, parse_stage
from model.checkpoint import load_checkpoint
from model.game_start import FIRST_FRAME, GameSetup, main_stage_x
from model.quantize import QUANTIZE_CHOICES, maybe_quantize
from model.simulation import Simulation
from model.world_model import WorldModel
from training import probe_metrics
from training import probes as pr
from training.probe_expectations import DEFAULT_EXPECTATIONS

log = logging.getLogger(__name__)

# The corpus's six most played characters (internal ids): Fox, Falco, Marth, Captain Falcon,
# Sheik, Ganondorf (../shared/corpus/MANIFEST.tsv).
DEFAULT_CHARACTERS = (1, 22, 18, 2, 7, 25)
SETTLE_FRAME = 0  # frame id at which the probes' player acts (the game clock starts at -123)
MIN_REAL = 20  # fewer real windows than this: the metric is not judged
# The real windows of a probe that moves the player back (a dash back covers up to 31 units)
# had room for it: no real player in them left the ground. Standing where Melee puts P1, the
# edge behind is 22-26 units away on Fountain of Dreams, Yoshi's Story and Final Destination,
# where a dash back runs off it (the rules) and the probe would test the start, not the model.
ROOM_BEHIND = 35.0
SITUATION_ACTIONS = {"standing": (pr.STANDING,), "shielding": pr.SHIELD_HELD}


def load_expectations(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"probe expectations {path}: cannot read ({e})") from e
    if "probes" not in data:
        raise ValueError(f"probe expectations {path}: no 'probes' section")
    return data


def expected(
    expectations: dict, probe: str, metric: str, character: int, surface: str = "main"
) -> dict | None:
    """The real range of a metric for a character standing on `surface` ("main" or
    "platform", `probes.surface`), or for all characters when the character has too few real
    windows; None when even those are too few."""
    entry = expectations["probes"].get(probe, {})
    if surface == "platform":
        entry = entry.get("on_platform", {})
    own = entry.get("by_character", {}).get(str(character), {}).get(metric)
    if own and own["n"] >= MIN_REAL:
        return {**own, "of": "character"}
    pooled = entry.get("all", {}).get(metric)
    if pooled and pooled["n"] >= MIN_REAL:
        return {**pooled, "of": "all"}
    return None


def within(metric: str, value: float, real: dict) -> bool:
    tolerance = (
        probe_metrics.TOLERANCE.get(metric, 1.0 if metric in probe_metrics.FRAME_METRICS else 0.0)
        + 1e-6
    )
    return real["p5"] - tolerance <= value <= real["p95"] + tolerance


# ---------------------------------------------------------------------- playing the probes
def probe_start_x(stage_id: int) -> tuple[float, float]:
    """Where the players stand on the main stage when a probe begins: as `GameSetup`'s
    on_main_stage puts them, but P1 at least ROOM_BEHIND from the edge behind them."""
    p1, p2 = main_stage_x(stage_id)
    return max(p1, get_stage(stage_id).main.left_x + ROOM_BEHIND), p2


def play_probes(
    model: WorldModel,
    games: list[tuple[pr.Probe, int, int]],
    progress: bool | None = None,
) -> list[tuple[probe_metrics.Window, int, str]]:
    """Play (probe, stage, character) games in one batch; returns each game's P1 window (from
    the situation frame to the end of the script), P1's action on the situation frame and the
    surface P1 stands on then (`probes.surface`). `progress`: a bar of the frames stepped
    (None: only on a terminal)."""
    sim = Simulation(model)
    ids = [
        sim.new_game(
            GameSetup(stage=s, characters=(c, c), on_main_stage=True, start_x=probe_start_x(s))
        )
        for _, s, c in games
    ]
    settle = SETTLE_FRAME - FIRST_FRAME
    starts = [settle + p.setup_frames for p, _, _ in games]  # step of each situation frame
    total = max(start + p.length for start, (p, _, _) in zip(starts, games, strict=True))
    setups = [[s.controller(1) for s in p.setup for _ in range(s.frames)] for p, _, _ in games]
    scripts: list[list[Controller] | None] = [None] * len(games)
    neutral = Controller().columns(0) | Controller().columns(1)
    columns = ("x", "y", "action", "airborne", "shield", "facing")
    history = {c: np.zeros((total + 1, len(games)), dtype=np.float32) for c in columns}

    def record(step: int) -> None:
        frame = sim.batch_frame
        for c in columns:
            history[c][step] = frame[f"p1_{c}"].float().numpy()

    record(0)
    bar = tqdm(
        range(total),
        desc=f"probes ({len(games)} games)",
        unit="frame",
        disable=None if progress is None else not progress,
    )
    for step in bar:
        controls = {}
        for g, (probe, _, _) in enumerate(games):
            t = step - settle
            if 0 <= t < len(setups[g]):
                controller = setups[g][t]
            elif step >= starts[g]:
                if scripts[g] is None:  # the script's forward is where P1 faces now
                    facing = 1 if history["facing"][starts[g], g] > 0 else -1
                    scripts[g] = probe.controllers(facing)
                t = step - starts[g]
                controller = scripts[g][t] if t < probe.length else Controller()
            else:
                controller = Controller()
            controls[ids[g]] = neutral | controller.columns(0)
        sim.step(controls)
        record(step + 1)
    windows = []
    for g, (probe, _, _) in enumerate(games):
        span = slice(starts[g], starts[g] + probe.length + 1)
        window = probe_metrics.Window(
            x=history["x"][span, g],
            y=history["y"][span, g],
            action=history["action"][span, g].astype(np.int64),
            airborne=history["airborne"][span, g].astype(np.int64),
            shield=history["shield"][span, g],
            facing=1 if history["facing"][starts[g], g] > 0 else -1,
            release=probe.release,
        )
        main_y = get_stage(games[g][1]).main.y
        where = pr.surface(main_y, float(history["y"][starts[g], g]))
        windows.append((window, int(history["action"][starts[g], g]), where))
    return windows


def run_probes(
    model: WorldModel,
    stages: Sequence[int] | None = None,
    characters: Sequence[int] | None = None,
    probe_names: Sequence[str] | None = None,
    expectations: dict | None = None,
    progress: bool | None = None,
) -> dict:
    """Every probe on every stage and character; the report as a JSON-ready dict."""
    stages = tuple(stages or legal_stage_ids())
    characters = tuple(characters or DEFAULT_CHARACTERS)
    probes = [pr.PROBES_BY_NAME[n] for n in probe_names] if probe_names else list(pr.PROBES)
    expectations = expectations or load_expectations(DEFAULT_EXPECTATIONS)
    games = [(p, s, c) for p in probes for s in stages for c in characters]
    started = time.perf_counter()
    with torch.inference_mode():
        windows = play_probes(model, games, progress)
    report = {
        name: {"doc": pr.PROBES_BY_NAME[name].doc, "runs": []} for name in (p.name for p in probes)
    }
    for (probe, stage, character), (window, situation_action, where) in zip(
        games, windows, strict=True
    ):
        metrics, passed = {}, True
        for name, metric in probe.metrics.items():
            value = metric(window)
            real = expected(expectations, probe.name, name, character, where)
            entry = {"value": round(value, 3)}
            if real is not None:
                entry |= {
                    "real_p5": round(real["p5"], 3),
                    "real_p50": round(real["p50"], 3),
                    "real_p95": round(real["p95"], 3),
                    "real_n": real["n"],
                    "real_of": real["of"],
                    "pass": within(name, value, real),
                }
                passed &= entry["pass"]
            metrics[name] = entry
        judged = any("pass" in m for m in metrics.values())
        report[probe.name]["runs"].append(
            {
                "stage": stage_name(stage),
                "character": character_name_internal(character),
                "surface": where,
                "situation_reached": situation_action in SITUATION_ACTIONS[probe.situation],
                "passed": passed if judged else None,  # None: no metric has real data enough
                "metrics": metrics,
            }
        )
    for entry in report.values():
        judged = [r["passed"] for r in entry["runs"] if r["passed"] is not None]
        entry["pass_rate"] = round(sum(judged) / len(judged), 4) if judged else None
    judged = [r["passed"] for e in report.values() for r in e["runs"] if r["passed"] is not None]
    passed, total = sum(judged), len(judged)
    if total == 0:
        raise ValueError("no probe has enough real windows in the expectations to be judged")
    return {
        "stages": [stage_name(s) for s in stages],
        "characters": [character_name_internal(c) for c in characters],
        "pass_rate": round(passed / total, 4),
        "passed": passed,
        "total": total,
        "seconds": round(time.perf_counter() - started, 1),
        "probes": report,
    }


def summary(report: dict) -> dict:
    """The part of a report `playmodel eval` keeps: pass rates overall and per probe."""
    return {
        "pass_rate": report["pass_rate"],
        "passed": report["passed"],
        "total": report["total"],
        "per_probe": {name: entry["pass_rate"] for name, entry in report["probes"].items()},
    }


# ---------------------------------------------------------------------- output
def table(report: dict) -> str:
    """Per probe: its pass rate and, per metric, the real range against the model's median."""
    lines = [f"{'probe':14s} {'pass':>5s}  metric: real p5..p95 (n) | model median [passed/runs]"]
    for name, entry in report["probes"].items():
        parts = []
        for metric in entry["runs"][0]["metrics"]:
            values = [r["metrics"][metric] for r in entry["runs"]]
            median = float(np.median([v["value"] for v in values]))
            judged = [v for v in values if "pass" in v]
            if judged:
                low = min(v["real_p5"] for v in judged)
                high = max(v["real_p95"] for v in judged)
                n = sum(v["real_n"] for v in judged) // len(judged)
                ok = sum(v["pass"] for v in judged)
                parts.append(f"{metric} {low:g}..{high:g} ({n}) | {median:g} [{ok}/{len(values)}]")
            else:
                parts.append(f"{metric} too few real windows | {median:g}")
        rate = "  n/a" if entry["pass_rate"] is None else f"{entry['pass_rate']:5.0%}"
        lines.append(f"{name:14s} {rate}  " + "; ".join(parts))
    lines.append(
        f"{'all':14s} {report['pass_rate']:5.0%}  ({report['passed']}/{report['total']} games)"
    )
    return "\n".join(lines)


def plot(report: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in report["probes"].items() if e["pass_rate"] is not None]
    rates = [report["probes"][n]["pass_rate"] for n in names]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.barh(names[::-1], rates[::-1], color="tab:blue")
    axis.axvline(0.9, color="tab:red", linestyle="--", label="90% goal")
    axis.set_xlim(0, 1)
    axis.set_xlabel("pass rate over stages and characters")
    axis.set_title(f"{title}: {report['pass_rate']:.0%} of {report['total']} probe games")
    axis.legend(loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playmodel probe", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument(
        "--stages", help="comma-separated stage names or ids (default: the six legal stages)"
    )
    parser.add_argument(
        "--characters",
        help="comma-separated character names or internal ids (default: "
        + ",".join(character_name_internal(c) for c in DEFAULT_CHARACTERS)
        + ")",
    )
    parser.add_argument("--probes", help="comma-separated probe names (default: all)")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--plot", type=Path, help="write a pass-rate chart (PNG) here")
    parser.add_argument(
        "--expectations",
        type=Path,
        default=DEFAULT_EXPECTATIONS,
        help="real-game expectations (playmodel probe-expectations)",
    )
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stages = [parse_stage(s) for s in args.stages.split(",")] if args.stages else None
        characters = (
            [parse_character(c) for c in args.characters.split(",")] if args.characters else None
        )
        names = pr.parse_probe_names(args.probes) if args.probes else None
        expectations = load_expectations(args.expectations)
        model, _ = load_checkpoint(args.checkpoint)
        model = maybe_quantize(model.eval(), args.quantize)
    except (ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    report = run_probes(model, stages, characters, names, expectations)
    report = {"checkpoint": str(args.checkpoint), "quantize": args.quantize, **report}
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, args.plot, args.checkpoint.name)
    print(table(report))
    print(f"{report['total']} probe games played in {report['seconds']:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
