"""What the rules, simulation and traced-step tests share: a tiny model's config, a frame
and rule state at a stage, and ways to drive a simulation (the fixtures `model`, `any_model`
and `replay_frames` are in conftest.py)."""

from __future__ import annotations

import torch

from core.stages import get_stage
from model.checkpoint import DEMO_CHECKPOINT  # noqa: F401 - the tests' import of it
from model.config import ModelConfig
from model.frames import controls_of, index, stack
from model.game_start import GameSetup, standard_start
from model.rule_state import RuleState
from model.rules import apply_rules

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


def batch_frame(stage_id: int, stocks=(4, 4)):
    frame = {k: v.unsqueeze(0) for k, v in standard_start(GameSetup(stage=stage_id)).items()}
    frame["frame"] = torch.tensor([100])
    frame["p1_stocks"] = torch.tensor([stocks[0]])
    frame["p2_stocks"] = torch.tensor([stocks[1]])
    return frame, RuleState.new(get_stage(stage_id), stocks)


def beyond(stage, zone):
    """A point 5 units past a blast zone, level with the stage centre."""
    return {
        "left": (stage.blast_left - 5, 20.0),
        "right": (stage.blast_right + 5, 20.0),
        "bottom": (0.0, stage.blast_bottom - 5),
        "top": (0.0, stage.blast_top + 5),
    }[zone]


def after_frames(frame, rules, count: int, controls=None, drift: bool = True) -> list:
    """Apply the rules `count` more times to a model that keeps predicting the same thing
    (with `drift`, a player 30 units right of the stage centre); returns the events."""
    events = []
    for _ in range(count):
        if drift:
            frame["p1_x"][0], frame["p1_y"][0], frame["p1_action"][0] = 30.0, 5.0, 14
            frame["p1_hurtbox_state"][0] = 0
        events += apply_rules(frame, rules, controls=controls)[0]
    return events


def run(sim, games, frames, controls_of_frame):
    out = {g: [] for g in games}
    for t in range(frames):
        results = sim.step({g: controls_of_frame(g, t) for g in games})
        for g in games:
            out[g].append(results[g].frame)
    return {g: stack(v) for g, v in out.items()}


def replay_controls(replay_frames, offset):
    controls = controls_of(replay_frames)
    return lambda g, t: index(controls, 500 + 97 * offset[g] + t)
