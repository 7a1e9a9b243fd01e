"""int8 inference (`model.quantize`): the quantised demo model plays the same game as the fp32
one, closely, through the traced simulation step and through the server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from core.replay_reader import read_replay
from model.checkpoint import load_checkpoint
from model.frames import controls_of, frames_from_table, index
from model.quantize import maybe_quantize, quantize_int8
from model.simulation import Simulation
from server.serve import ServerThread
from server.settings import ServerSettings

DEMO = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "demo.safetensors"


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO)[0]


def test_the_mixers_and_player_heads_become_int8_and_the_original_is_untouched(demo):
    quantized = quantize_int8(demo)
    for block, original in zip(quantized.blocks, demo.blocks, strict=True):
        assert block.mixer.in_proj.weight().dtype == torch.qint8
        assert block.mixer.out_proj.weight().dtype == torch.qint8
        assert block.mixer.conv1d.weight.dtype == torch.float32
        assert isinstance(original.mixer.in_proj.weight, torch.nn.Parameter)
    assert quantized.heads.player.weight().dtype == torch.qint8
    for linear in (quantized.encoder.proj, quantized.heads.item_hidden, quantized.heads.item_out):
        assert linear.weight.dtype == torch.float32  # an int8 encoder doubles the drift
    assert isinstance(demo.heads.player.weight, torch.nn.Parameter)
    with pytest.raises(ValueError, match="quantize must be one of none, int8, not 'int4'"):
        maybe_quantize(demo, "int4")
    assert maybe_quantize(demo, "none") is demo


def test_the_int8_model_takes_over_a_real_game_close_to_the_fp32_one(demo, replays):
    frames = frames_from_table(
        read_replay(replays / "dev" / "slippi-js__slp__techTester.slp").table
    )
    controls = controls_of(frames)
    sims = [Simulation(demo), Simulation(quantize_int8(demo))]
    games = [sim.new_game(replay=frames, start_frame=2000) for sim in sims]
    same_action, worst = 0, 0.0
    steps = 60
    for t in range(steps):
        step_controls = index(controls, 2000 + t)
        out = [sim.step({g: step_controls})[g].frame for sim, g in zip(sims, games, strict=True)]
        same_action += int(out[0]["p1_action"]) == int(out[1]["p1_action"])
        same_action += int(out[0]["p2_action"]) == int(out[1]["p2_action"])
        for key in ("p1_x", "p1_y", "p2_x", "p2_y"):
            worst = max(worst, abs(float(out[0][key]) - float(out[1][key])))
    assert sims[1].trace, "the int8 model's step is traced too"
    # Measured: 119 of the 120 actions the same, positions apart by at most 4.9 units (a
    # character is about 10 wide) after this second of play; an int8 error in the wrong place
    # (a per-tensor weight scale, say, or a quantised state) changes actions and sends
    # players elsewhere.
    assert same_action >= 0.95 * 2 * steps
    assert worst < 10.0


def test_the_server_serves_the_int8_model(tmp_path):
    settings = ServerSettings(port=0, quantize="int8", recordings_dir=None)
    with ServerThread(settings) as server:
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["model"].endswith("(int8)")
        response = httpx.post(
            f"{server.url}/v1/matches", json={"p1": "random:1", "p2": "approach", "max_frames": 60}
        )
        match_id = response.json()["match_id"]
        done = httpx.get(
            f"{server.url}/v1/matches/{match_id}", params={"wait": "true"}, timeout=120
        ).json()
        assert done["status"] == "done" and done["summary"]["frames"] == 60
