"""The training dataset (`training.dataset`) on the 8 real dev replays, ingested once."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import read_tsv_manifest

from core import game_state as gs
from core.manifest import load_manifest
from model.frame_spec import count_state_age, implied_velocity, impute_missing_velocities
from model.frames import Frames, frames_from_table
from training.dataset import GameDataset, in_val

SEQ_LEN = 60
FD, CAPTAIN_FALCON = 32, 2  # external stage id, internal character id


@pytest.fixture(scope="module")
def data_dir(dev_dataset_dir) -> Path:
    return dev_dataset_dir


@pytest.fixture(scope="module")
def manifest(data_dir) -> dict[str, dict]:
    """Ok manifest rows by hash."""
    return {r["hash"]: r for r in load_manifest(data_dir).values() if r["status"] == "ok"}


@pytest.fixture(scope="module")
def hashes(replays) -> dict[str, str]:
    """Game hashes by replay file name."""
    rows = read_tsv_manifest(replays / "dev" / "MANIFEST.tsv")
    return {name: row["sha256"] for name, row in rows.items()}


@pytest.fixture(scope="module")
def reference(data_dir, manifest) -> dict[str, Frames]:
    """Every game's frames read on their own, to check what the dataset hands out."""
    out = {}
    for h, r in manifest.items():
        out[h] = frames_from_table(pq.read_table(data_dir / r["output"]))
        impute_missing_velocities(out[h], r["missing_fields"])
        count_state_age(out[h])  # as the simulation counts it
    return out


@pytest.fixture(scope="module")
def dataset(data_dir) -> GameDataset:
    return GameDataset(data_dir, split="all")


def game_of(window: Frames, b: int, reference: dict[str, Frames]) -> str:
    """The hash of the one game whose consecutive frames window b is."""
    length = window["frame"].shape[1]
    found = []
    for game_hash, frames in reference.items():
        offset = int(window["frame"][b, 0] - frames["frame"][0])
        if 0 <= offset <= len(frames["frame"]) - length and all(
            torch.equal(window[k][b], v[offset : offset + length]) for k, v in frames.items()
        ):
            found.append(game_hash)
    assert len(found) == 1, f"window {b} matches {len(found)} games"
    return found[0]


def test_loads_every_dev_game(dataset, manifest, hashes):
    assert len(dataset) == 8
    assert {g.hash for g in dataset.games} == set(hashes.values())
    assert dataset.total_frames == sum(r["frames"] for r in manifest.values())
    for game in dataset.games:
        assert len(game) == manifest[game.hash]["frames"]
        assert game.missing == frozenset(manifest[game.hash]["missing_fields"])


def test_games_hold_the_frames_of_their_parquet_file(dataset, reference):
    for game in dataset.games:
        assert game.frames.keys() == reference[game.hash].keys()
        for key, values in reference[game.hash].items():
            assert game.frames[key].dtype == values.dtype, key
            assert torch.equal(game.frames[key], values), key


def test_split_is_by_game_deterministic_and_disjoint(data_dir, dataset):
    train = {g.hash for g in GameDataset(data_dir, "train", val_fraction=0.5).games}
    val = {g.hash for g in GameDataset(data_dir, "val", val_fraction=0.5).games}
    assert train and val
    assert not train & val
    assert train | val == {g.hash for g in dataset.games}
    assert val == {h for h in train | val if int(h[:8], 16) / 2**32 < 0.5}
    again = {g.hash for g in GameDataset(data_dir, "val", val_fraction=0.5).games}
    assert again == val


def test_default_split_follows_the_hash_rule(data_dir, dataset):
    train = GameDataset(data_dir)  # "train", val_fraction 0.1
    assert {g.hash for g in train.games} == {
        g.hash for g in dataset.games if not in_val(g.hash, 0.1)
    }


def test_empty_val_split_is_an_error(data_dir):
    with pytest.raises(ValueError, match="no game left after filtering") as e:
        GameDataset(data_dir, "val", val_fraction=0.0)
    assert str(data_dir) in str(e.value)


def test_missing_folder_and_manifest_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no such folder") as e:
        GameDataset(tmp_path / "nowhere")
    assert "nowhere" in str(e.value)
    with pytest.raises(ValueError, match=r"no manifest\.jsonl"):
        GameDataset(tmp_path)


def test_filters_by_stage(data_dir, hashes):
    fd = GameDataset(data_dir, "all", stages=[FD])
    assert [g.hash for g in fd.games] == [hashes["slippi-js__slp__techTester.slp"]]
    assert (fd.games[0].frames["stage"] == FD).all()


def test_filters_by_characters(data_dir, hashes):
    falcons = GameDataset(data_dir, "all", characters=[CAPTAIN_FALCON])
    assert [g.hash for g in falcons.games] == [hashes["slippi-js__slp__techTester.slp"]]
    # Both characters must be allowed: Jigglypuff (15) alone keeps neither of her games.
    with pytest.raises(ValueError, match="no game left"):
        GameDataset(data_dir, "all", characters=[15])
    puff_marth = GameDataset(data_dir, "all", characters=[15, 18])
    assert [g.hash for g in puff_marth.games] == [
        hashes["peppi__benches__data__old_ver_thegang.slp"]
    ]


def test_batch_shapes_and_dtypes(dataset):
    frames, masks = dataset.batch(0, batch_size=16, seq_len=SEQ_LEN)
    assert frames.keys() == dataset.games[0].frames.keys()
    for key, values in frames.items():
        game_values = dataset.games[0].frames[key]
        assert values.shape == (16, SEQ_LEN + 1, *game_values.shape[1:]), key
        assert values.dtype == game_values.dtype, key
    assert frames["item_exists"].shape == (16, SEQ_LEN + 1, gs.ITEM_SLOTS)
    assert set(masks) == set().union(*(g.missing for g in dataset.games))
    assert "p1_hitlag" in masks and "item_slot" in masks
    assert all(m.shape == (16,) and m.dtype == torch.bool for m in masks.values())


def test_batch_windows_are_consecutive_frames_of_one_game(dataset, reference):
    frames, _ = dataset.batch(3, batch_size=32, seq_len=SEQ_LEN)
    assert (frames["frame"][:, 1:] - frames["frame"][:, :-1] == 1).all()
    for b in range(32):
        game_of(frames, b, reference)  # asserts it is a slice of exactly one game


def test_batch_is_a_pure_function_of_seed_and_step(dataset):
    a, a_masks = dataset.batch(7, 8, SEQ_LEN, seed=1)
    b, b_masks = dataset.batch(7, 8, SEQ_LEN, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a_masks[k], b_masks[k]) for k in a_masks)
    next_step, _ = dataset.batch(8, 8, SEQ_LEN, seed=1)
    other_seed, _ = dataset.batch(7, 8, SEQ_LEN, seed=2)
    assert not torch.equal(a["frame"], next_step["frame"])
    assert not torch.equal(a["frame"], other_seed["frame"])


def test_batch_never_picks_a_game_too_short(dataset, hashes, reference):
    longest = max(len(g) for g in dataset.games)  # old_ver_thegang, 19242 frames
    second = sorted(len(g) for g in dataset.games)[-2]
    frames, _ = dataset.batch(0, batch_size=8, seq_len=second)  # only the longest fits
    gang = hashes["peppi__benches__data__old_ver_thegang.slp"]
    assert {game_of(frames, b, reference) for b in range(8)} == {gang}
    with pytest.raises(ValueError, match="no game has"):
        dataset.batch(0, batch_size=8, seq_len=longest)


def test_masks_say_which_games_record_a_column(dataset, manifest, hashes, reference):
    v01 = hashes["peppi__tests__data__v0.1.slp"]
    frames, masks = dataset.batch(0, batch_size=256, seq_len=SEQ_LEN)
    drawn = [game_of(frames, b, reference) for b in range(256)]
    for b, game_hash in enumerate(drawn):
        missing = manifest[game_hash]["missing_fields"]
        for column, recorded in masks.items():
            assert bool(recorded[b]) == (column not in missing), (column, b)
    hitlag = {game_hash: bool(masks["p1_hitlag"][b]) for b, game_hash in enumerate(drawn)}
    assert hitlag[v01] is False  # v0.1 predates hitlag (Slippi 3.8)
    assert hitlag[hashes["slippi-js__slp__techTester.slp"]] is True  # v3.9 records it


def test_windows_cover_each_game_without_overlap(dataset, reference):
    seq_len = 599
    windows = list(dataset.windows(seq_len))
    i = 0
    for game in dataset.games:
        count = len(game) // (seq_len + 1)
        ids = []
        for frames, masks in windows[i : i + count]:
            assert frames["frame"].shape == (1, seq_len + 1)
            assert game_of(frames, 0, reference) == game.hash
            assert {k for k, m in masks.items() if not m[0]} == game.missing
            ids.append(frames["frame"][0])
        i += count
        # Back to back from the game's first frame: no overlap, no gap.
        assert torch.equal(torch.cat(ids), game.frames["frame"][: count * (seq_len + 1)])
    assert i == len(windows)


def test_windows_in_batches_hold_the_same_windows(dataset):
    one = [f["frame"] for f, _ in dataset.windows(SEQ_LEN * 10)]
    batched = [f["frame"] for f, _ in dataset.windows(SEQ_LEN * 10, batch_size=4)]
    assert all(b.shape[0] <= 4 for b in batched)
    assert torch.equal(torch.cat(one), torch.cat(batched))


def test_games_without_velocities_get_their_moves_as_velocities(dataset, manifest):
    old = [g for g in dataset.games if "p1_vel_self_x_air" in g.missing]
    assert old, "the dev replays hold a game older than Slippi 3.5"
    for game in old:
        frames = game.frames
        raw = frames_from_table(pq.read_table(dataset.data_dir / manifest[game.hash]["output"]))
        assert not raw["p1_vel_self_x_air"].any()  # what the replay recorded: nothing
        for p in gs.PLAYERS:
            now = {k: v[1:] for k, v in frames.items()}
            for axis in ("x", "y"):
                move = frames[f"{p}_{axis}"][1:] - frames[f"{p}_{axis}"][:-1]
                regular = move.abs() < 20  # respawns are not velocities
                assert regular.float().mean() > 0.99
                implied = implied_velocity(now, p, axis)
                assert torch.allclose(implied[regular], move[regular], atol=1e-4)
            assert not frames[f"{p}_vel_knockback_x"].any()
    recorded = [g for g in dataset.games if "p1_vel_self_x_air" not in g.missing]
    assert all(
        torch.equal(g.frames["p1_vel_self_y"], dataset_raw(dataset, manifest, g)) for g in recorded
    )


def dataset_raw(dataset, manifest, game):
    table = pq.read_table(dataset.data_dir / manifest[game.hash]["output"])
    return frames_from_table(table)["p1_vel_self_y"]
