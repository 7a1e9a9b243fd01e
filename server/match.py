"""Headless policy-vs-policy matches: `playmodel match --p1 POLICY --p2 POLICY --out FILE`.

Runs one game through the match runner that the REST matches use too (server/match_runner.py)
as fast as the hardware allows (not at 60 Hz), with a progress bar on a terminal (frames
played, at most `--frames`, and the time left), writes its trajectory as parquet in the
dataset schema (so it can be evaluated and replayed like an ingested game) and prints a
summary: the winner and how the game ended, then per player the character, policy, stocks
left, percent and how many times it KO'd the other, and the frames played and per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from core import game_state as gs
from core.atomic_file import atomic_path
from core.melee_ids import character_name_internal, parse_character
from core.stages import parse_stage
from model.checkpoint import load_model
from model.frames import read_replay_frames, table_from_frames
from model.game_start import GameSetup
from model.policies import Policy, ReplayFollower, make_policy
from model.simulation import Simulation
from server.match_runner import Match, MatchResult, MatchRunner

log = logging.getLogger(__name__)


def run_matches(
    sim: Simulation,
    games: dict[int, tuple[Policy, Policy]],
    max_frames: int,
    progress: bool | None = False,
) -> dict[int, MatchResult]:
    """Play games already in `sim` with the match runner, flat out, until each ends or has
    played `max_frames` frames; an ended game leaves the simulation. `progress`: a bar of the
    frames stepped (None: only on a terminal)."""
    runner = MatchRunner(sim)
    matches = {g: Match(policies=policies, max_frames=max_frames) for g, policies in games.items()}
    runner.follow(list(matches.values()), list(matches))
    bar = tqdm(
        total=max_frames,
        desc="match",
        unit="frame",
        disable=None if progress is None else not progress,
    )
    while runner.playing:
        runner.step()
        bar.update()
    if bar.n < max_frames:  # every game ended before the frame limit: the bar ends full
        bar.total = bar.n
    bar.close()
    return {g: match.outcome() for g, match in matches.items()}


def run_match(
    sim: Simulation,
    game_id: int,
    policies: tuple[Policy, Policy],
    max_frames: int,
    progress: bool | None = False,
) -> MatchResult:
    """Play one game until it ends or `max_frames` frames have been played."""
    return run_matches(sim, {game_id: policies}, max_frames, progress)[game_id]


def summary_lines(summary: dict, characters: Sequence[int], policies: Sequence[str]) -> list[str]:
    """A finished match for a terminal. `summary["kos"][i]` counts the stocks player i lost;
    in a two-player game each is a KO for the other player (the rules do not tell a
    self-destruct from a KO)."""
    frames, per_second = summary["frames"], summary["frames_per_second"]
    if summary["end"] is None:
        lines = [f"no winner: the frame limit was reached after {frames:,} frames"]
    elif summary["winner"] is None:
        lines = [f"a draw ({summary['end']}) after {frames:,} frames"]
    else:
        lines = [f"p{summary['winner'] + 1} wins ({summary['end']}) after {frames:,} frames"]
    for i in (0, 1):
        other = 1 - i
        kos = summary["kos"][other]
        name = character_name_internal(characters[i]).lower()
        lines.append(
            f"  p{i + 1} {name} ({policies[i]}): {summary['stocks'][i]} stocks left, "
            f"{summary['percents'][i]:g}%, KO'd p{other + 1} {kos} time{'s' * (kos != 1)}"
        )
    lines.append(f"  {per_second:,} frames/s")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playmodel match", description=__doc__.splitlines()[0])
    parser.add_argument("--p1", default="approach", help="policy of player 1 (default approach)")
    parser.add_argument("--p2", default="random", help="policy of player 2 (default random)")
    parser.add_argument("--stage", default="battlefield", help="stage name or id")
    parser.add_argument("--characters", default="FOX,FALCO", help="two characters, A,B")
    parser.add_argument("--frames", type=int, default=8 * 60 * 60, help="most frames to play")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = argmax decoding")
    parser.add_argument("--start", help="REPLAY[:FRAME]: take over a real game (.slp or parquet)")
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled demo checkpoint")
    parser.add_argument("--config", help="play an untrained model of this config instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, type=Path, help="trajectory .parquet to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        characters = tuple(parse_character(c) for c in args.characters.split(","))
        if len(characters) != 2:
            raise ValueError(f"--characters needs two characters, got {args.characters!r}")
        setup = GameSetup(parse_stage(args.stage), characters, seed=args.seed)
        replay, start_row = None, None
        if args.start:
            path, _, row = args.start.partition(":")
            replay, start_row = read_replay_frames(Path(path)), int(row or 0)
        policies = []
        for spec in (args.p1, args.p2):
            if spec.startswith("replay:"):
                path, _, row = spec[len("replay:") :].partition(":")
                policies.append(ReplayFollower(read_replay_frames(Path(path)), int(row or 0)))
            else:
                policies.append(make_policy(spec))
        model, model_name = load_model(args.checkpoint, args.config, args.device)
    except (ValueError, OSError, KeyError) as e:
        log.error("%s", e)
        return 2

    sim = Simulation(model, temperature=args.temperature, device=args.device)
    game = sim.new_game(setup, replay=replay, start_frame=start_row)
    played = sim.setup(game)
    log.info(
        "p1 %s (%s) against p2 %s (%s), at most %s frames, with %s",
        character_name_internal(played.characters[0]),
        args.p1,
        character_name_internal(played.characters[1]),
        args.p2,
        f"{args.frames:,}",
        model_name,
    )
    result = run_match(sim, game, (policies[0], policies[1]), args.frames, progress=None)
    summary = result.summary
    info = {
        "p1": args.p1,
        "p2": args.p2,
        "model": model_name,
        "setup": dataclasses.asdict(played),
        "summary": summary,
        "events": [e.to_dict() for e in result.events],
    }
    table = table_from_frames(
        {k: v.cpu() for k, v in result.frames.items()},
        metadata={
            b"schema_version": str(gs.SCHEMA_VERSION).encode(),
            b"match_info": json.dumps(info).encode(),
        },
    )
    with atomic_path(args.out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    lines = summary_lines(summary, played.characters, (args.p1, args.p2))
    print("\n".join([*lines, f"  -> {args.out}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
