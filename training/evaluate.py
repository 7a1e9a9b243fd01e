"""`playmodel eval --checkpoint CKPT --data DIR --json OUT [--horizons 1,5,10,20] [--starts N]`.

Two kinds of evidence, on the validation games of a dataset:

- Teacher-forced: the model reads real frames and predicts the next one; per-head accuracy
  and error, action accuracy, action-change accuracy (frames where the real action changes),
  accuracy per gameplay category and the five actions it gets wrong most often.
- Rollouts: from N seeded start points, the model plays on its own predictions with both
  players' real controller inputs, through the same `Simulation` and rules the server uses.
  Per horizon: position error (world units), velocity error, percent error, action accuracy,
  and rollout coherence RC_K = mean position error over horizons 1..K (K = 5, 10, 20).

The same rollout metrics, in the same run, for two baselines: persistence (nothing changes)
and constant velocity (positions keep their last per-frame change). The JSON holds sections
`model`, `persistence` and `constant_velocity` side by side, so results read as ratios.

And how the model plays: the behaviour probes (`playmodel probe`, training/probe_run.py) on
the legal stages and the default characters, their pass rate in section `probes` (overall and
per probe; `--probes none` leaves them out, `--probes NAME,...` plays some).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core import game_state as gs
from core.actions import CATEGORIES, action_name, category_table
from core.atomic_file import atomic_path
from model import frame_spec as fs
from model.checkpoint import load_checkpoint
from model.decoding import decode
from model.frames import controls_of, index
from model.quantize import QUANTIZE_CHOICES, maybe_quantize
from model.rules import GO_FRAME
from model.simulation import Simulation
from model.world_model import WorldModel
from training.dataset import GameDataset
from training.probe_run import run_probes, summary
from training.probes import parse_probe_names
from training.windows import split_window

log = logging.getLogger(__name__)
VELOCITIES = ("vel_self_x_air", "vel_self_y", "vel_knockback_x", "vel_knockback_y")
VELOCITIES += ("vel_self_x_ground",)


# ---------------------------------------------------------------------- teacher forcing
def _bar(total: int, desc: str, unit: str, progress: bool | None) -> tqdm:
    """A progress bar on stderr (`progress` None: only on a terminal)."""
    return tqdm(
        total=total, desc=desc, unit=unit, disable=None if progress is None else not progress
    )


@torch.no_grad()
def teacher_forced(
    model: WorldModel,
    data: GameDataset,
    seq_len: int,
    max_windows: int,
    progress: bool | None = False,
) -> dict:
    categories = torch.tensor(category_table())
    correct = Counter()
    total = Counter()
    errors = {name: [] for name in ("x", "y", "percent", "shield", *VELOCITIES)}
    wrong_actions = Counter()
    bar = _bar(max_windows, "teacher-forced", "window", progress)
    for i, (frames, _) in enumerate(data.windows(seq_len)):
        if i >= max_windows:
            break
        bar.update()
        prev, controls, target = split_window(frames)
        predicted = decode(model(prev, controls), prev, controls)
        for p in gs.PLAYERS:
            for spec in fs.PLAYER_HEADS:
                if spec.kind is fs.Head.CATEGORICAL:
                    key = f"{p}_{spec.name}"
                    hit = predicted[key] == target[key]
                    correct[spec.name] += int(hit.sum())
                    total[spec.name] += hit.numel()
            for name in errors:
                diff = (predicted[f"{p}_{name}"] - target[f"{p}_{name}"].float()).abs()
                errors[name].append(diff.flatten())
            real, guess = target[f"{p}_action"], predicted[f"{p}_action"]
            hit = guess == real
            changed = real != prev[f"{p}_action"]
            # The baseline a model must beat: the action of the frame before, copied.
            correct["action_copy_baseline"] += int((~changed).sum())
            total["action_copy_baseline"] += changed.numel()
            correct["action_change"] += int((hit & changed).sum())
            total["action_change"] += int(changed.sum())
            category = categories[real.clamp(max=len(categories) - 1)]
            for c, name in enumerate(CATEGORIES):
                in_category = category == c
                correct[f"category/{name}"] += int((hit & in_category).sum())
                total[f"category/{name}"] += int(in_category.sum())
            wrong_actions.update(real[~hit].tolist())
    bar.total = bar.n  # fewer windows than the most asked for: the bar ends full
    bar.close()
    accuracy = {k: correct[k] / total[k] for k in total if total[k]}
    return {
        "accuracy": {k: round(v, 4) for k, v in accuracy.items() if "/" not in k},
        "category_accuracy": {
            k.split("/", 1)[1]: round(v, 4) for k, v in accuracy.items() if "/" in k
        },
        "mean_abs_error": {k: round(float(torch.cat(v).mean()), 4) for k, v in errors.items() if v},
        "worst_actions": [
            {"action": a, "name": action_name(a), "errors": n}
            for a, n in wrong_actions.most_common(5)
        ],
    }


# ---------------------------------------------------------------------- rollouts
def pick_starts(data: GameDataset, count: int, horizon: int, seed: int) -> list[tuple[int, int]]:
    """`count` (game, row) start points, seeded, each from GO on, with `horizon` real frames
    after it and at least one frame before it (the constant-velocity baseline needs the last
    change)."""
    generator = torch.Generator().manual_seed(seed)
    usable = []
    for g, game in enumerate(data.games):
        # From GO on: before it the rules play the entry (model/rules.py, rule 3), not the model.
        first = max(1, int((game.frames["frame"] < GO_FRAME).sum()))
        if len(game) - horizon > first:
            usable.append((g, first, len(game)))
    if not usable:
        raise ValueError(f"no validation game has {horizon + 2} frames from GO on")
    starts = []
    for _ in range(count):
        g, first, length = usable[int(torch.randint(len(usable), (1,), generator=generator))]
        row = int(torch.randint(first, length - horizon, (1,), generator=generator))
        starts.append((g, row))
    return starts


def _frame_errors(guess: dict, real: dict) -> dict[str, float]:
    position, velocity, percent, action = [], [], [], []
    for p in gs.PLAYERS:
        dx = guess[f"{p}_x"].float() - real[f"{p}_x"].float()
        dy = guess[f"{p}_y"].float() - real[f"{p}_y"].float()
        position.append(float(torch.hypot(dx, dy)))
        velocity += [abs(float(guess[f"{p}_{v}"]) - float(real[f"{p}_{v}"])) for v in VELOCITIES]
        percent.append(abs(float(guess[f"{p}_percent"]) - float(real[f"{p}_percent"])))
        action.append(float(int(guess[f"{p}_action"]) == int(real[f"{p}_action"])))
    return {
        "position_error": float(np.mean(position)),
        "velocity_error": float(np.mean(velocity)),
        "percent_error": float(np.mean(percent)),
        "action_accuracy": float(np.mean(action)),
    }


def rollouts(
    model: WorldModel, data: GameDataset, starts, horizon: int, progress: bool | None = False
) -> dict[str, list]:
    """Per method, per start, the per-horizon errors (horizon 1..H)."""
    out: dict[str, list] = {"model": [], "persistence": [], "constant_velocity": []}
    sim = Simulation(model)
    games = {}
    for g, row in starts:
        games[sim.new_game(replay=data.games[g].frames, start_frame=row)] = (g, row)
    per_game: dict[int, list[dict]] = {gid: [] for gid in games}
    bar = _bar(horizon, f"rollouts ({len(games)} starts)", "frame", progress)
    for h in range(1, horizon + 1):
        bar.update()
        controls = {
            gid: controls_of(index(data.games[g].frames, row + h))
            for gid, (g, row) in games.items()
        }
        for gid, result in sim.step(controls).items():
            g, row = games[gid]
            per_game[gid].append(_frame_errors(result.frame, index(data.games[g].frames, row + h)))
    bar.close()
    for gid, (g, row) in games.items():
        frames = data.games[g].frames
        start, before = index(frames, row), index(frames, row - 1)
        out["model"].append(per_game[gid])
        out["persistence"].append(
            [_frame_errors(start, index(frames, row + h)) for h in range(1, horizon + 1)]
        )
        constant = []
        for h in range(1, horizon + 1):
            guess = dict(start)
            for p in gs.PLAYERS:
                for axis in ("x", "y"):
                    key = f"{p}_{axis}"
                    guess[key] = start[key] + h * (start[key] - before[key])
            constant.append(_frame_errors(guess, index(frames, row + h)))
        out["constant_velocity"].append(constant)
    return out


def summarise(per_start: list[list[dict]], horizons: Sequence[int]) -> dict:
    """Mean over starts per horizon, and RC_K for K = 5, 10, 20 (where reached)."""
    metrics = per_start[0][0].keys()
    mean = [
        {m: float(np.mean([s[h][m] for s in per_start])) for m in metrics}
        for h in range(len(per_start[0]))
    ]
    result = {
        "horizons": {
            str(h): {m: round(mean[h - 1][m], 4) for m in metrics}
            for h in horizons
            if h <= len(mean)
        }
    }
    for k in (5, 10, 20):
        if k <= len(mean):
            result[f"rc{k}"] = round(
                float(np.mean([mean[h]["position_error"] for h in range(k)])), 4
            )
    return result


# ---------------------------------------------------------------------- entry point
def evaluate(
    checkpoint: Path,
    data_dir: Path,
    horizons: Sequence[int],
    starts: int,
    seed: int = 0,
    split: str = "val",
    seq_len: int = 60,
    max_windows: int = 200,
    quantize: str = "none",
    probes: Sequence[str] | None = (),
    progress: bool | None = False,
) -> dict:
    """`probes`: the behaviour probes to play (empty: all of them; None: none). `progress`:
    a bar per stage (None: only on a terminal)."""
    started = time.perf_counter()
    model, _meta = load_checkpoint(checkpoint)
    model = maybe_quantize(model.eval(), quantize)
    data = GameDataset(data_dir, split)
    log.info(
        "%s on the %d %s games of %s: teacher forcing (at most %d windows), %d rollouts%s",
        checkpoint,
        len(data),
        split,
        data_dir,
        max_windows,
        starts,
        "" if probes is None else ", behaviour probes",
    )
    horizon = max(max(horizons), 20)
    points = pick_starts(data, starts, horizon, seed)
    per_method = rollouts(model, data, points, horizon, progress)
    teacher = teacher_forced(model, data, seq_len, max_windows, progress)
    probe_section = (
        {} if probes is None else {"probes": probe_summary(model, probes or None, progress)}
    )
    return {
        "checkpoint": str(checkpoint),
        "quantize": quantize,
        "data": str(data_dir),
        "split": split,
        "games": len(data),
        "starts": starts,
        "seed": seed,
        "teacher_forced": teacher,
        **{method: summarise(values, horizons) for method, values in per_method.items()},
        **probe_section,
        "seconds": round(time.perf_counter() - started, 1),
    }


def probe_summary(
    model: WorldModel, names: Sequence[str] | None, progress: bool | None = False
) -> dict:
    return summary(run_probes(model, probe_names=names, progress=progress))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for method in ("model", "persistence", "constant_velocity"):
        horizons = sorted(int(h) for h in result[method]["horizons"])
        errors = [result[method]["horizons"][str(h)]["position_error"] for h in horizons]
        axis.plot(horizons, errors, marker="o", label=method.replace("_", " "))
    axis.set_xlabel("horizon (frames)")
    axis.set_ylabel("position error (world units)")
    axis.set_title(Path(result["checkpoint"]).name)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playmodel eval", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--horizons", default="1,5,10,20")
    parser.add_argument("--starts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="val", choices=("val", "train", "all"))
    parser.add_argument("--plot", type=Path)
    parser.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZE_CHOICES,
        help="evaluate the model with int8 mixer and head weights, as served with QUANTIZE=int8",
    )
    parser.add_argument(
        "--probes",
        default="all",
        help="behaviour probes to play: all (default), none, or names (playmodel probe)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        horizons = [int(h) for h in args.horizons.split(",")]
        probes = {"all": (), "none": None}.get(args.probes)
        if args.probes not in ("all", "none"):
            probes = parse_probe_names(args.probes)
        result = evaluate(
            args.checkpoint,
            args.data,
            horizons,
            args.starts,
            args.seed,
            args.split,
            quantize=args.quantize,
            probes=probes,
            progress=None,
        )
    except (ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    rows = [(m, result[m]) for m in ("model", "persistence", "constant_velocity")]
    for name, section in rows:
        rc = ", ".join(f"RC{k} {section[f'rc{k}']:.2f}" for k in (5, 10, 20) if f"rc{k}" in section)
        print(f"{name:18s} {rc}")
    if "probes" in result:
        probes = result["probes"]
        rate, passed, total = probes["pass_rate"], probes["passed"], probes["total"]
        print(f"behaviour probes   {rate:.0%} pass ({passed}/{total})")
    print(f"action accuracy (teacher-forced) {result['teacher_forced']['accuracy']['action']:.3f}")
    print(f"evaluated in {result['seconds']:g} s -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
