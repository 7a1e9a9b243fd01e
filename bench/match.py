"""Headless match throughput: game-frames per second, all games together.

    python bench/match.py [--config mamba2-small] [--games 1,8,32] [--frames N] [--json OUT]

Plays random-vs-random games through the real `Simulation` and the match runner
(`run_matches`: policies, one batched model step, decoding, the rules, each frame copied into
its match's log), untrained weights, no timer end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from model.config import load_config
from model.game_start import GameSetup
from model.policies import RandomPolicy
from model.simulation import Simulation
from model.world_model import WorldModel
from server.match import run_matches


def new_games(sim: Simulation, games: int) -> dict[int, tuple[RandomPolicy, RandomPolicy]]:
    ids = [sim.new_game(GameSetup(stage=31, seed=i, timer_frames=10**9)) for i in range(games)]
    return {g: (RandomPolicy(2 * g), RandomPolicy(2 * g + 1)) for g in ids}


def throughput(model: WorldModel, games: int, frames: int) -> float:
    sim = Simulation(model)
    run_matches(sim, new_games(sim, games), 20)  # warm up; its games leave the simulation
    policies = new_games(sim, games)
    start = time.perf_counter()
    results = run_matches(sim, policies, frames)
    elapsed = time.perf_counter() - start
    played = sum(len(r.frames["frame"]) - 1 for r in results.values())
    return played / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="mamba2-small")
    parser.add_argument("--games", default="1,8,32")
    parser.add_argument("--frames", type=int, default=600, help="frames per game")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = WorldModel(load_config(args.config)).eval()
    rows = []
    print(f"machine: {describe_machine()}, {torch.get_num_threads()} threads")
    print(f"{args.config}: {model.num_parameters():,} parameters, {args.frames} frames per game")
    for games in (int(g) for g in args.games.split(",")):
        fps = throughput(model, games, args.frames)
        rows.append({"games": games, "game_frames_per_s": round(fps)})
        print(f"{games:>4} games: {fps:>10,.0f} game-frames/s ({fps / 60:,.1f}x real time)")
    if args.json:
        result = {"config": args.config, "machine": describe_machine(), "results": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
