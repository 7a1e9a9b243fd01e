"""PackedFrame: the live trace's frames, read like a dict of tensors without making one."""

from __future__ import annotations

import numpy as np
import torch

from model.config import ModelConfig
from model.frames import player_columns, stacked_columns
from model.game_start import GameSetup
from model.packed_frame import PackedFrame
from model.simulation import Simulation
from model.world_model import WorldModel
from server.column_groups import BatchCopy, Layout
from server.wire_frames import batch_columns

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


def stepped_batch() -> PackedFrame:
    torch.manual_seed(0)
    sim = Simulation(WorldModel(TINY).eval())
    for seed in range(3):
        sim.new_game(GameSetup(stage=(31, 32, 2)[seed], seed=seed))
    for _ in range(5):
        sim.step({})
    assert isinstance(sim.batch_frame, PackedFrame)
    return sim.batch_frame


def test_a_packed_frame_reads_like_the_dict_of_its_fields():
    packed = stepped_batch()
    plain = dict(packed)
    assert list(packed) == list(plain) and len(packed) == len(plain)
    assert "p1_x" in packed and "nothing" not in packed
    assert batch_columns(packed) == batch_columns(plain)
    assert Layout.of(packed, leading=1) is Layout.of(plain, leading=1)
    copies = BatchCopy(packed), BatchCopy(plain)
    for ours, theirs in zip(copies[0].groups, copies[1].groups, strict=True):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    x = float(packed["p1_x"][0])
    with torch.inference_mode():
        packed["p1_x"][0] += 100.0  # a later restore writes in place: the copy must not see it
    assert copies[0].columns["p1_x"][0] == x == copies[1].columns["p1_x"][0]


def test_changes_to_a_packed_frame_are_read_back():
    packed = stepped_batch()
    with torch.inference_mode():  # as the simulation made it
        packed["p1_percent"][1] += 12.0  # in place: the packing changes too
    assert not packed.replaced
    assert batch_columns(packed)["p1_percent"][1] == float(packed["p1_percent"][1])
    packed["p2_x"] = packed["p2_x"] + 5.0  # replaced
    assert packed.replaced
    assert batch_columns(packed)["p2_x"] == packed["p2_x"].tolist()
    plain = dict(packed)
    assert np.array_equal(BatchCopy(packed).columns["p2_x"], BatchCopy(plain).columns["p2_x"])
    del packed["p2_x"]
    assert "p2_x" not in packed and "p2_x" not in list(packed)


def test_fields_stacked_from_a_packed_frame_are_gathered_as_torch_stack_would():
    packed = stepped_batch()
    plain = dict(packed)
    groups = {packed.position(key)[0] for key in ("p2_x", "p1_action", "p1_facing")}
    assert len(groups) > 1  # float and int fields: two groups, promoted as a stack promotes
    for keys in (
        ["p2_x", "p1_action", "p1_percent", "p2_action", "p1_facing"],
        ["p1_x", "p2_x"],
        ["item_x", "item_y", "item_type"],
    ):
        gathered, stacked = stacked_columns(packed, keys), torch.stack([plain[k] for k in keys], -1)
        assert gathered.dtype == stacked.dtype and torch.equal(gathered, stacked), keys
    names = ["x", "action", "stocks"]
    assert torch.equal(
        player_columns(packed, names), player_columns(plain, names)
    )  # (B, 2, 3) both ways
    packed["p1_x"] = packed["p1_x"] + 1.0  # replaced: read field by field again
    assert torch.equal(stacked_columns(packed, ["p1_x"])[..., 0], packed["p1_x"])
