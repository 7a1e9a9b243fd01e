"""How a game starts: its setup (stage, characters, stocks, timer, seed) and frame -123.

Every replay begins with both players at their spawn points in the entry action, and so does
every game the `Simulation` starts from a `GameSetup`; what happens between the entry and GO
is the rules' (`model/rules.py`, rule 3). The behaviour probes start on the main stage
instead (`GameSetup.on_main_stage`, `main_stage_x`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core import game_state as gs
from core.stages import get_stage, spawn_points_for
from model.frames import Frames
from model.rule_state import DEFAULT_TIMER_FRAMES

ENTRY_ACTION = 322  # ENTRY: every replay starts with both players in it at frame -123
FIRST_FRAME = -123


@dataclass(frozen=True)
class GameSetup:
    stage: int = 32  # external stage id (Final Destination)
    characters: tuple[int, int] = (1, 22)  # internal character ids (Fox, Falco)
    stocks: int = 4
    timer_frames: int = DEFAULT_TIMER_FRAMES  # the game ends when the frame id reaches this
    seed: int = 0
    # After the entry both players stand on the main stage, straight below their spawn points
    # (kept over its flat part), rather than where Melee puts them: on the side platforms on
    # every legal stage but Final Destination. The behaviour probes start so (inputs do other
    # things on a platform: down from a shield drops through it).
    on_main_stage: bool = False
    # With on_main_stage: each player's x there (None: below the spawn point, within
    # MAIN_STAGE_START of the flat part's half width).
    start_x: tuple[float, float] | None = None


MAIN_STAGE_START = 0.8  # of the flat part's half width: how far out `on_main_stage` starts


def main_stage_x(stage_id: int) -> tuple[float, float]:
    """The players' x on the main stage with `GameSetup.on_main_stage` (and no `start_x`):
    below their spawn points, within MAIN_STAGE_START of the flat part's half width."""
    flat = get_stage(stage_id).main_flat_x * MAIN_STAGE_START
    p1, p2 = (max(-flat, min(flat, x)) for x, _ in spawn_points_for(stage_id)[:2])
    return p1, p2


def standard_start(setup: GameSetup) -> Frames:
    """Frame -123 of a new game: both players at their spawn points in the entry action, as
    every real replay begins (checked on the dev replays)."""
    spawns = spawn_points_for(setup.stage)
    if setup.on_main_stage:
        xs = setup.start_x if setup.start_x is not None else main_stage_x(setup.stage)
        spawns = [(x, y) for x, (_, y) in zip(xs, spawns[:2], strict=True)]
    frame: Frames = {
        "frame": torch.tensor(FIRST_FRAME),
        "stage": torch.tensor(setup.stage),
    }
    for index_, p in enumerate(gs.PLAYERS):
        x, y = spawns[index_]
        values = {
            "x": x,
            "y": y,
            "action": ENTRY_ACTION,
            "state_age": -1.0,  # the replays' value on the first frame
            "shield": 60.0,
            "stocks": setup.stocks,
            "facing": 1 if x < 0 else -1,
            "airborne": 1,
            "jumps": 1,
            "ground": gs.GROUND_NONE,
            "character": setup.characters[index_],
        }
        for field in gs.PLAYER_FIELDS + gs.CONTROLLER_FIELDS:
            value = values.get(field.name, field.default)
            dtype = torch.float32 if field.dtype.startswith("float") else torch.int64
            frame[f"{p}_{field.name}"] = torch.tensor(value, dtype=dtype)
    for field in gs.ITEM_FIELDS:
        if field.name == "slot":
            continue
        dtype = torch.float32 if field.dtype.startswith("float") else torch.int64
        frame[f"item_{field.name}"] = torch.full((gs.ITEM_SLOTS,), field.default, dtype=dtype)
    frame["item_exists"] = torch.zeros(gs.ITEM_SLOTS, dtype=torch.bool)
    return frame
