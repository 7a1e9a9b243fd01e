"""The world model on real frames: sequence forward vs steps, decoding, sizes, checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core import game_state as gs
from core.controller import BUTTON_BITS
from core.replay_reader import read_replay
from model import frame_spec as fs
from model.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from model.config import ModelConfig, load_config
from model.decoding import REST_RESIDUAL, REST_SPEED, decode
from model.encoder import FrameEncoder
from model.frames import controls_of, frames_from_table, index, model_inputs, stack
from model.heads import head_targets
from model.world_model import WorldModel

TINY = ModelConfig(d_model=32, n_layers=2, d_state=16, expand=2, headdim=16, chunk_size=16)


@pytest.fixture(scope="module")
def game(replays):
    """A real game with items (Peach's turnips) as frame tensors."""
    table = read_replay(replays / "fixtures" / "peppi__tests__data__items.slp").table
    return frames_from_table(table)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WorldModel(TINY).eval()


def window(frames, start, length):
    return index(frames, slice(start, start + length))


def batch_first(frames):
    return {k: v.unsqueeze(0) for k, v in frames.items()}


def test_preset_sizes():
    large = WorldModel(load_config("mamba2-large")).num_parameters()
    small = WorldModel(load_config("mamba2-small")).num_parameters()
    assert 14_000_000 <= large <= 16_000_000
    assert 1_000_000 <= small <= 3_000_000


def test_every_encoder_input_is_predicted_ruled_constant_or_external():
    player_heads = {s.name for s in fs.PLAYER_HEADS if s.kind is not fs.Head.BINARY}
    player_heads |= set(fs.BINARY_HEAD_SOURCE.values())
    item_heads = {f"item_{s.name}" for s in fs.ITEM_HEADS}
    covered = player_heads | item_heads
    covered |= set(fs.RULE_FIELDS) | set(fs.CONSTANT_FIELDS) | set(fs.EXTERNAL_FIELDS)
    inputs = FrameEncoder.input_fields()
    orphans = [name for name in inputs if name not in covered]
    assert not orphans, f"encoder inputs with no head, rule or label: {orphans}"
    # And the encoder reads nothing beyond what input_fields() declares.
    encoder = FrameEncoder(TINY)
    frame = {f"{p}_{n}": torch.zeros(1) for p in gs.PLAYERS for n in inputs}
    frame.update({n: torch.zeros(1, gs.ITEM_SLOTS) for n in inputs if n.startswith("item_")})
    frame["stage"] = torch.zeros(1, dtype=torch.long)
    read = set()

    class Spy(dict):
        def __getitem__(self, key):
            read.add(key)
            return dict.__getitem__(self, key)

    encoder(Spy(frame), Spy(frame))
    declared = {f"{p}_{n}" for p in gs.PLAYERS for n in inputs} | set(inputs)
    assert read <= declared


def test_jump_input_acts_in_the_same_frame(replays):
    """The timing convention: the controller of frame t changes the state of frame t."""
    jumps = hits = 0
    for name in ("slippi-js__slp__techTester.slp", "peppi__tests__data__v2.0.slp"):
        frames = frames_from_table(read_replay(replays / "dev" / name).table)
        for p in gs.PLAYERS:
            buttons = frames[f"{p}_buttons"]
            jump = (buttons & (BUTTON_BITS["X"] | BUTTON_BITS["Y"])) != 0
            pressed = jump[1:] & ~jump[:-1]
            standing = frames[f"{p}_action"][:-1] == 14  # WAIT
            t = torch.nonzero(pressed & standing).flatten() + 1
            jumps += len(t)
            hits += int((frames[f"{p}_action"][t] == 24).sum())  # KNEE_BEND (jump squat)
    assert jumps > 20
    assert hits / jumps > 0.9


def test_sequence_forward_equals_steps(model, game):
    prev, controls, _ = model_inputs(window(game, 2000, 201))
    with torch.no_grad():
        full = model(batch_first(prev), batch_first(controls))
        cache = model.allocate_inference_cache(1)
        for t in range(200):
            step = model.step(
                {k: v[t : t + 1] for k, v in prev.items()},
                {k: v[t : t + 1] for k, v in controls.items()},
                cache,
            )
            for key, value in step.items():
                assert torch.allclose(value[0], full[key][0, t], atol=1e-4), (key, t)


def test_prefill_then_steps_equals_forward(model, game):
    prev, controls, _ = model_inputs(window(game, 3000, 151))
    with torch.no_grad():
        full = model(batch_first(prev), batch_first(controls))
        cache = model.allocate_inference_cache(1)
        model(batch_first(window(prev, 0, 100)), batch_first(window(controls, 0, 100)), cache)
        for t in range(100, 150):
            step = model.step(
                {k: v[t : t + 1] for k, v in prev.items()},
                {k: v[t : t + 1] for k, v in controls.items()},
                cache,
            )
            assert torch.allclose(step["p1_action"][0], full["p1_action"][0, t], atol=1e-4)
            assert torch.allclose(step["item_x"][0], full["item_x"][0, t], atol=1e-4)


def test_batched_step_equals_games_stepped_alone(model, game):
    starts = (100, 2500, 6000)
    games = [model_inputs(window(game, s, 31)) for s in starts]
    with torch.no_grad():
        batch_cache = model.allocate_inference_cache(len(starts))
        alone = [model.allocate_inference_cache(1) for _ in starts]
        for t in range(30):
            prev = stack([index(g[0], t) for g in games])
            controls = stack([index(g[1], t) for g in games])
            together = model.step(prev, controls, batch_cache)
            for i, (p, c, _) in enumerate(games):
                single = model.step(batch_first(index(p, t)), batch_first(index(c, t)), alone[i])
                assert torch.allclose(together["p2_x"][i], single["p2_x"][0], atol=1e-5)


def perfect_predictions(prev, frame):
    """Predictions that a perfect model would make: targets as regressions, one-hot logits."""
    preds = {}
    heads = {f"{p}_{s.name}": s for p in gs.PLAYERS for s in fs.PLAYER_HEADS}
    heads |= {f"item_{s.name}": s for s in fs.ITEM_HEADS}
    for key, target in head_targets(prev, frame).items():
        spec = heads[key]
        if spec.kind is fs.Head.CATEGORICAL:
            preds[key] = torch.nn.functional.one_hot(target, spec.vocab).float() * 50
        elif spec.kind is fs.Head.BINARY:
            preds[key] = (target * 2 - 1) * 50
        else:
            preds[key] = target
    return preds


def test_decoding_perfect_predictions_reproduces_the_next_frame(game):
    prev, controls, target = model_inputs(window(game, 1000, 3000))
    decoded = decode(perfect_predictions(prev, target), prev, controls)
    assert decoded.keys() >= {k for k in game if k != "frame"} - {"p1_buttons_physical"}
    for key, value in decoded.items():
        if key.endswith("state_age"):
            continue  # follows a rule, see test_state_age_rule
        expected = target[key]
        if key.startswith("item_") and key != "item_exists":
            expected = torch.where(target["item_exists"], expected, expected.new_tensor(0))
            value = torch.where(target["item_exists"], value, value.new_tensor(0))
        tolerance = 1e-3
        if "_vel_" in key:  # a speed under REST_SPEED decodes as rest (docs/MODEL.md)
            expected = torch.where(expected.abs() < REST_SPEED, 0.0, expected)
        if key[3:] in ("x", "y"):  # and the position moves by at most that and a residual
            tolerance += 2 * REST_SPEED + REST_RESIDUAL
        assert torch.allclose(value.float(), expected.float(), atol=tolerance), key


def test_a_head_that_predicts_no_change_keeps_the_previous_values(model, game):
    # The copy prior: with the heads' raw output at zero, every categorical and binary field
    # decodes to last frame's value (most of them change on few frames).
    prev, controls, _ = (batch_first(f) for f in model_inputs(window(game, 1000, 200)))
    raw = {k: torch.zeros_like(v) for k, v in model(prev, controls).items()}
    decoded = decode(raw, prev, controls)
    for p in gs.PLAYERS:
        for name in ("action", "jumps", "hurtbox_state", "ground", "last_attack_landed"):
            assert torch.equal(decoded[f"{p}_{name}"], prev[f"{p}_{name}"].long()), name
        assert torch.equal(decoded[f"{p}_facing"], torch.where(prev[f"{p}_facing"] > 0, 1, -1))
        assert torch.equal(decoded[f"{p}_airborne"], (prev[f"{p}_airborne"] != 0).long())
    assert torch.equal(decoded["item_exists"], prev["item_exists"].bool())


def test_decoding_reads_the_heads_tensors_and_a_dict_alike(model, game):
    """decode reads the two tensors the heads' predictions are views of; a plain dict of the
    same predictions, or one changed after the heads made it, decodes from its entries."""
    prev, controls, _ = (batch_first(f) for f in model_inputs(window(game, 1000, 200)))
    with torch.no_grad():
        preds = model(prev, controls)
    assert preds.raw is not None
    fast, plain = decode(preds, prev, controls), decode(dict(preds), prev, controls)
    assert list(fast) == list(plain)
    for key in fast:
        assert fast[key].dtype == plain[key].dtype and torch.equal(fast[key], plain[key]), key

    logits = preds["p1_action"].clone()
    logits[..., 341] = 1e4  # a class these frames never show
    preds["p1_action"] = logits
    assert preds.raw is None  # its tensors no longer match the entries
    assert (decode(preds, prev, controls)["p1_action"] == 341).all()
    preds.update(p1_action=torch.zeros_like(logits))
    assert not (decode(preds, prev, controls)["p1_action"] == 341).any()


def test_state_age_rule(game):
    """+1 while the action stays, else 0. Slippi's counter follows animation speed and pauses
    in hitlag, so the rule matches the replays exactly on most frames, not all."""
    prev, controls, target = model_inputs(window(game, 500, 2000))
    decoded = decode(perfect_predictions(prev, target), prev, controls)
    same = target["p1_action"] == prev["p1_action"]
    assert torch.equal(decoded["p1_state_age"][same], prev["p1_state_age"][same] + 1)
    assert (decoded["p1_state_age"][~same] == 0).all()
    exact = decoded["p1_state_age"] == target["p1_state_age"]
    assert exact.float().mean() > 0.65  # 0.70 on this game; 0.80 of same-action frames


def test_seeded_sampling_is_reproducible(model, game):
    prev = batch_first(index(game, 4000))
    controls = controls_of(batch_first(index(game, 4001)))
    with torch.no_grad():
        preds = model.step(prev, controls, model.allocate_inference_cache(1))
    samples = [
        decode(preds, prev, controls, temperature=1.0, generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert all(torch.equal(samples[0][k], samples[1][k]) for k in samples[0])
    assert any(not torch.equal(samples[0][k], samples[2][k]) for k in samples[0])


def test_checkpoint_round_trip(model, game, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, model, provenance={"command": "test"})
    loaded, meta = load_checkpoint(path, expect_config=TINY)
    assert meta["provenance"] == {"command": "test"}
    assert meta["schema_version"] == gs.SCHEMA_VERSION
    prev, controls, _ = model_inputs(window(game, 100, 41))
    with torch.no_grad():
        a = model(batch_first(prev), batch_first(controls))
        b = loaded.eval()(batch_first(prev), batch_first(controls))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".*")), "a temporary file was left behind"


def test_checkpoint_mismatches_name_the_field(model, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, model)
    other = dataclasses.replace(TINY, n_layers=3)
    with pytest.raises(CheckpointError, match="n_layers: 2 \\(expected 3\\)"):
        load_checkpoint(path, expect_config=other)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_metadata(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_checkpoint_of_another_schema_is_refused(model, tmp_path, monkeypatch):
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, model)
    monkeypatch.setattr(gs, "SCHEMA_VERSION", gs.SCHEMA_VERSION + 1)
    with pytest.raises(CheckpointError, match="schema_version"):
        load_checkpoint(path)


def test_the_live_step_reads_no_tensor_value_into_python(model, game, monkeypatch):
    """A CUDA graph capture refuses every read of a tensor's value on the host (`.item()`, a
    tensor in an `if`, ...): the captured step (model.step + decode) must make none."""
    reads = []
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def read(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    frames = window(game, 1000, 3)
    prev, controls = index(frames, slice(0, 2)), controls_of(index(frames, slice(1, 3)))
    cache = model.allocate_inference_cache(2)
    with torch.inference_mode():
        decode(model.step(prev, controls, cache), prev, controls)
    assert reads == []


@pytest.mark.gpu
def test_cuda_graph_step_equals_eager(game):
    from model.cuda_graph import CudaGraphStep

    torch.manual_seed(0)
    model = WorldModel(TINY).cuda().eval()
    frames = {k: v.cuda() for k, v in window(game, 1000, 40).items()}
    starts = torch.tensor([0, 5, 10], device="cuda")
    prev = index(frames, starts)
    graph = CudaGraphStep(model, prev, controls_of(index(frames, starts + 1)))
    cache = model.allocate_inference_cache(3, device="cuda")
    graph_prev, eager_prev = prev, prev
    with torch.inference_mode():
        for t in range(1, 20):
            controls = controls_of(index(frames, starts + t))
            graph_out = {k: v.clone() for k, v in graph.replay(graph_prev, controls).items()}
            eager_out = decode(model.step(eager_prev, controls, cache), eager_prev, controls)
            for key in eager_out:
                assert torch.allclose(graph_out[key].float(), eager_out[key].float(), atol=1e-4)
            graph_prev, eager_prev = graph_out, eager_out


def test_bf16_weights_keep_fp32_state_and_residual(game):
    torch.manual_seed(0)
    model = WorldModel(TINY).eval()
    half = WorldModel(TINY).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    assert half.blocks[0].mixer.A_log.dtype == torch.float32
    prev = batch_first(index(game, 3000))
    controls = controls_of(batch_first(index(game, 3001)))
    cache, half_cache = model.allocate_inference_cache(1), half.allocate_inference_cache(1)
    with torch.no_grad():
        for _ in range(5):
            full = model.step(prev, controls, cache)
            low = half.step(prev, controls, half_cache)
    assert half_cache.layers[0].ssm_state.dtype == torch.float32
    # bf16 weights carry about 3 significant digits; the predictions stay close.
    assert torch.allclose(low["p1_x"].float(), full["p1_x"], atol=0.05)


def test_a_grounded_frame_never_rises_by_its_own_speed(game):
    """A prediction of an upward own speed decodes as 0 where the frame is on the ground (a
    landing that overshot would climb from the stage) and as predicted in the air."""
    prev, controls, target = model_inputs(window(game, 1000, 600))
    preds = perfect_predictions(prev, target)
    for p in gs.PLAYERS:
        preds[f"{p}_vel_self_y"] = preds[f"{p}_vel_self_y"] + 3.0 / 0.5  # +3 units a frame
    decoded = decode(preds, prev, controls)
    for p in gs.PLAYERS:
        grounded = decoded[f"{p}_airborne"] == 0
        assert grounded.any() and (~grounded).any()
        speed = decoded[f"{p}_vel_self_y"]
        assert (speed[grounded] <= 0).all()
        assert (speed[~grounded] > 0).any()
