"""Ingestion (`playmodel parse`) on the real replays in shared/replays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, read_tsv_manifest

from core import game_state as gs
from core.manifest import MANIFEST_NAME, load_manifest
from core.replay_reader import ReplayUnreadable, read_replay
from training.ingest import ingest, main


def rows_by_name(out: Path) -> dict[str, dict]:
    return {Path(path).name: row for path, row in load_manifest(out).items()}


@pytest.fixture(scope="module")
def dev_dataset(dev_dataset_dir) -> Path:
    return dev_dataset_dir  # all 8 dev games ok, no failure (checked by the fixture)


@pytest.fixture(scope="module")
def fixtures_dataset(replays, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fixtures_dataset")
    ingest([replays / "fixtures"], out, workers=2, progress=False)
    return out


def test_dev_games_keep_every_unique_frame(dev_dataset, replays):
    expected = read_tsv_manifest(replays / "dev" / "MANIFEST.tsv")
    rows = rows_by_name(dev_dataset)
    assert set(rows) == set(expected)
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["reason"])
        assert row["hash"] == expected[name]["sha256"]
        assert row["frames"] == int(expected[name]["frames"]), name
        assert row["slippi_version"] == expected[name]["slippi_version"]
        table = pq.read_table(dev_dataset / row["output"])
        frames = table.column("frame").to_numpy()
        assert len(frames) == row["frames"]
        # One row per frame id, in order, with no gaps: -123, -122, ...
        assert np.array_equal(frames, np.arange(frames[0], frames[0] + len(frames)))


def test_parquet_schema_is_derived_from_the_game_state(dev_dataset):
    row = next(iter(load_manifest(dev_dataset).values()))
    schema = pq.read_schema(dev_dataset / row["output"])
    assert schema.remove_metadata().equals(gs.arrow_schema())
    assert schema.metadata[b"schema_version"] == str(gs.SCHEMA_VERSION).encode()
    info = json.loads(schema.metadata[b"replay_info"])
    assert info["frames"] == row["frames"]


def test_manifest_describes_each_game(dev_dataset):
    rows = rows_by_name(dev_dataset)
    gang = rows["peppi__benches__data__old_ver_thegang.slp"]
    assert gang["ports"] == ["P2", "P4"]
    assert gang["characters_external_names"] == ["JIGGLYPUFF", "MARTH"]
    assert gang["characters_internal_names"] == ["JIGGLYPUFF", "MARTH"]
    assert gang["stage_name"] == "DREAM_LAND_N64"
    assert gang["end_method"] == "RESOLVED"
    assert gang["region"] == "NTSC"
    tech = rows["slippi-js__slp__techTester.slp"]
    assert tech["stage_name"] == "FINAL_DESTINATION"
    assert tech["characters_external"] == [0, 0]  # Captain Falcon's external id
    assert tech["characters_internal"] == [2, 2]  # ... and his in-game id
    assert rows["peppi__tests__data__v0.1.slp"]["region"] is None  # not recorded before 1.5


def test_old_replays_fill_documented_defaults(dev_dataset):
    row = rows_by_name(dev_dataset)["peppi__tests__data__v0.1.slp"]
    assert {"p1_hitlag", "p1_airborne", "p1_ground", "p2_vel_self_y"} <= set(row["missing_fields"])
    table = pq.read_table(dev_dataset / row["output"])
    assert set(table.column("p1_ground").to_numpy()) == {gs.GROUND_NONE}
    assert not table.column("p1_hitlag").to_numpy().any()
    # Fields the version does record are real data, not defaults.
    assert "p1_x" not in row["missing_fields"]
    assert np.ptp(table.column("p1_x").to_numpy()) > 50


def test_ice_climbers_keep_the_leader(dev_dataset):
    row = rows_by_name(dev_dataset)["peppi__tests__data__ics2.slp"]
    assert row["characters_external_names"][0] == "ICE_CLIMBERS"
    assert row["characters_internal_names"][0] == "POPO"
    table = pq.read_table(dev_dataset / row["output"])
    assert set(table.column("p1_character").to_numpy()) == {10}  # Popo throughout


def test_hitstun_only_in_damage_actions(dev_dataset):
    row = rows_by_name(dev_dataset)["peppi__tests__data__duplicate_game_end.slp"]
    table = pq.read_table(dev_dataset / row["output"])
    hitstun = table.column("p1_hitstun").to_numpy()
    action = table.column("p1_action").to_numpy()
    assert hitstun.max() > 10
    damage = (action >= 75) & (action <= 91)  # DAMAGE_* action states
    assert (hitstun[~damage] == 0).mean() > 0.99


def test_rollback_frames_keep_the_last_copy(dev_dataset, replays):
    from peppi_py._peppi import read_slippi

    name = "peppi__tests__data__duplicate_game_end.slp"
    row = rows_by_name(dev_dataset)[name]
    assert row["frames_raw"] > row["frames"]  # this online game rolled back
    raw = read_slippi(str(replays / "dev" / name), False).frames
    ids = raw.field("id").to_numpy()
    # The remote player's stick is what the game had to guess before the rollback, so the
    # first and last copies of a re-simulated frame differ there.
    raw_stick = raw.field("ports").field("P2").field("leader").field("pre").field("joystick")
    raw_stick = raw_stick.field("x").to_numpy()
    table = pq.read_table(dev_dataset / row["output"])
    frames, stick = table.column("frame").to_numpy(), table.column("p2_joystick_x").to_numpy()
    assert len(np.unique(frames)) == len(frames)
    corrected = 0
    for frame in np.unique(ids[np.r_[False, ids[1:] <= ids[:-1]]]):
        copies = np.flatnonzero(ids == frame)
        if raw_stick[copies[0]] != raw_stick[copies[-1]]:
            assert stick[frames == frame][0] == raw_stick[copies[-1]], frame
            corrected += 1
    assert corrected > 100


def test_items_are_kept_in_stable_slots(fixtures_dataset, replays):
    from peppi_py._peppi import read_slippi

    name = "slippi-js__slp__consistencyTest__DKVBows-nB.slp"  # up to 10 live barrels
    row = rows_by_name(fixtures_dataset)[name]
    assert row["status"] == "ok" and row["items_dropped"] == 0
    table = pq.read_table(fixtures_dataset / row["output"])
    items = gs.dense_items(table)
    raw_items = read_slippi(str(replays / "fixtures" / name), False).frames.field("item")
    raw_counts = np.array([len(frame) for frame in raw_items.to_pylist()])
    assert np.array_equal(items["exists"].sum(axis=1), raw_counts)
    assert raw_counts.max() == 10
    assert set(np.unique(items["type"][items["exists"]])) == {100}  # DK's barrel
    # A slot changes occupant only through an empty frame or a large jump in position:
    # positions move continuously while one item holds it.
    both = items["exists"][1:] & items["exists"][:-1]
    step = np.hypot(*(np.diff(items[k], axis=0)[both] for k in ("x", "y")))
    assert np.median(step) < 5


def test_item_owners_are_players(fixtures_dataset):
    row = rows_by_name(fixtures_dataset)["peppi__tests__data__items.slp"]
    items = gs.dense_items(pq.read_table(fixtures_dataset / row["output"]))
    owners = set(np.unique(items["owner"][items["exists"]]))
    assert items["exists"].any() and owners <= {-1, 0, 1}
    assert set(np.unique(items["type"][items["exists"]])) == {99}  # Peach's turnips


def test_slot_assignment_never_shares_or_moves_a_slot(replays):
    import pyarrow.compute as pc
    from peppi_py._peppi import read_slippi

    from core.replay_reader import _assign_slots

    game = read_slippi(str(replays / "dev" / "peppi__tests__data__duplicate_game_end.slp"), False)
    items = game.frames.field("item")
    rows = pc.list_parent_indices(items).to_numpy()
    ids = pc.list_flatten(items).field("id").to_numpy()
    slots = _assign_slots(rows, ids)
    assert (slots >= 0).all()
    for spawn in np.unique(ids):
        assert len(np.unique(slots[ids == spawn])) == 1
    pairs = rows.astype(np.int64) * gs.ITEM_SLOTS + slots
    assert len(np.unique(pairs)) == len(pairs)


def test_broken_and_special_files_do_not_stop_the_run(fixtures_dataset, replays):
    expected = read_tsv_manifest(replays / "fixtures" / "MANIFEST.tsv")
    rows = rows_by_name(fixtures_dataset)
    assert set(rows) == set(expected)
    for name, row in rows.items():
        assert row["status"] in ("ok", "skipped", "failed")
        if expected[name]["peppi"].startswith("ERR"):
            assert row["status"] == "failed", name
            assert row["reason"], name
        if row["status"] == "ok":
            assert row["frames"] == int(expected[name]["frames"]), name
    reasons = {name: row["reason"] for name, row in rows.items()}
    assert "truncated" in reasons["peppi__tests__data__corrupt.slp"]
    assert "truncated" in reasons["slippi-js__slp__incomplete.slp"]
    assert "panicked" in reasons["slippi-js__history__slp__gameModeTest__10-Man.slp"]
    assert "two-player" in reasons["peppi__tests__data__crazy_name_tags.slp"]
    assert "Camera mode" in reasons["slippi-js__history__slp__gameModeTest__Camera.slp"]
    assert "legal stages" in reasons["slippi-js__history__slp__moveTest__id_22.slp"]
    for real_game in ("ranked_game1_tiebreak", "unranked_game1", "sheik_vs_ics_yoshis", "test"):
        assert rows[f"slippi-js__slp__{real_game}.slp"]["status"] == "ok"
    summary_counts = {s: sum(r["status"] == s for r in rows.values()) for s in ("ok", "failed")}
    assert summary_counts["ok"] > 50 and summary_counts["failed"] > 10


@pytest.mark.parametrize(
    "name",
    ["slippi-js__history__slp__gameModeTest__10-Man.slp", "slippi-js__history__test__test.slp"],
)
def test_a_parser_panic_is_an_ordinary_error(replays, name):
    """peppi-py panics on these files (shared/replays/fixtures/MANIFEST.tsv); a panic is a
    BaseException, which callers that catch Exception (the server's upload check) missed."""
    with pytest.raises(ReplayUnreadable, match=r"the parser \(peppi-py\) panicked: \S") as error:
        read_replay(replays / "fixtures" / name)
    assert isinstance(error.value, ValueError)


def test_parser_panics_stay_out_of_the_terminal(replays, tmp_path):
    """peppi-py prints each panic to stderr before it is handled: the run's terminal shows one
    summary line per failed file instead, and the parser's messages go to DIR/parse.log."""
    fixtures = replays / "fixtures"
    panics = [
        "slippi-js__history__slp__gameModeTest__10-Man.slp",
        "slippi-js__history__test__test.slp",
    ]
    sources = [str(fixtures / name) for name in panics]
    sources.append(str(fixtures / "peppi__benches__data__short_game_tbh10.slp"))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "training", "parse", *sources, "--out", str(out), "--workers", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "panicked at" not in result.stderr and "RUST_BACKTRACE" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("parsed 3 files: 1 ok, 0 skipped, 2 failed")
    failed = [line for line in lines if line.startswith("  failed: ")]
    assert len(failed) == 2
    for name, line in zip(sorted(panics), failed, strict=True):
        assert name in line and "the parser (peppi-py) panicked" in line
    assert "panicked at" in (out / "parse.log").read_text()
    assert str(out / "parse.log") in lines[-1]


def test_a_clean_run_leaves_no_parser_log(replays, tmp_path):
    src = replays / "fixtures" / "peppi__benches__data__short_game_tbh10.slp"
    summary = ingest([src], tmp_path, workers=1, progress=False)
    assert summary.ok == 1 and summary.parser_log is None
    assert not (tmp_path / "parse.log").exists()
    assert summary.lines(tmp_path) == [summary.line(tmp_path)]


def test_not_a_replay_fails_beside_good_files(replays, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.slp").write_text("these are not the frames you are looking for\n")
    (src / "empty.slp").write_bytes(b"")
    good = replays / "fixtures" / "peppi__benches__data__short_game_tbh10.slp"
    (src / "good.slp").write_bytes(good.read_bytes())
    summary = ingest([src], tmp_path / "out", workers=1, progress=False)
    assert (summary.ok, summary.failed) == (1, 2)
    rows = rows_by_name(tmp_path / "out")
    assert "not a Slippi replay" in rows["notes.slp"]["reason"]
    assert "not a Slippi replay" in rows["empty.slp"]["reason"]


def test_rerun_is_a_no_op(dev_dataset, replays):
    manifest = (dev_dataset / MANIFEST_NAME).read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in dev_dataset.glob("*.parquet")}
    summary = ingest([replays / "dev"], dev_dataset, workers=2, progress=False)
    assert summary.processed == 0 and summary.already_done == 8
    assert (dev_dataset / MANIFEST_NAME).read_bytes() == manifest
    assert {p.name: p.stat().st_mtime_ns for p in dev_dataset.glob("*.parquet")} == mtimes


def test_force_parses_again(replays, tmp_path):
    src = replays / "fixtures" / "peppi__tests__data__netplay.slp"
    assert ingest([src], tmp_path, workers=1, progress=False).ok == 1
    assert ingest([src], tmp_path, workers=1, progress=False).already_done == 1
    assert ingest([src], tmp_path, workers=1, force=True, progress=False).ok == 1
    assert len(load_manifest(tmp_path)) == 1


def test_duplicate_content_is_listed_once(replays, tmp_path):
    src = replays / "fixtures"
    files = [
        src / "peppi__tests__data__netplay.slp",
        src / "peppi__history__peppi__tests__data__netplay.slp",
    ]
    copy = tmp_path / "copy.slp"
    copy.write_bytes(files[0].read_bytes())
    summary = ingest([files[0], copy], tmp_path / "out", workers=1, progress=False)
    assert (summary.ok, summary.skipped) == (1, 1)
    reasons = [r["reason"] for r in load_manifest(tmp_path / "out").values() if r["reason"]]
    assert reasons and "same content" in reasons[0]


def test_interrupted_run_is_completed_by_the_next(replays, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "training", "parse", str(replays / "dev"), "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--workers", "1"],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.parquet"))) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(load_manifest(out))
    assert 0 < done_before < 8

    summary = ingest([replays / "dev"], out, workers=2, progress=False)
    assert summary.already_done + summary.processed == 8
    rows = load_manifest(out)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows.values())
    for row in rows.values():
        assert pq.read_table(out / row["output"]).num_rows == row["frames"]
    assert not list(out.glob(".*")), "temporary files were left behind"


def children_of(pid: int) -> set[int]:
    """Live child processes of `pid`, from /proc (Linux)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead process nobody has reaped yet; in a
    container PID 1 may never reap the orphans it adopts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while (alive := {p for p in pids if is_running(p)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_parse_is_killed(replays, tmp_path):
    command = [sys.executable, "-m", "training", "parse", str(replays / "fixtures")]
    process = subprocess.Popen(
        [*command, "--out", str(tmp_path / "out"), "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers := children_of(process.pid)) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        assert len(workers) == 2, workers
    finally:
        process.kill()  # SIGKILL to the parent alone, as `kill -9 PID` does
        process.wait()
    orphans = wait_until_gone(workers, 3.0)
    for pid in orphans:  # a failing run leaves nothing behind
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers outlived the killed parse"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_watchdog_ends_a_worker_without_the_death_signal(tmp_path):
    """The fallback where prctl is missing: a thread that notices the re-parenting."""
    script = (
        "import os, time\n"
        "from training.ingest import exit_with_parent\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    exit_with_parent(parent, poll_s=0.05, death_signal=False)\n"
        "    print(os.getpid(), flush=True)  # armed\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(process.stdout.readline())
        assert is_running(child)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    orphans = wait_until_gone({child}, 3.0)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "the child outlived its parent"


def test_cli_summary_and_exit_codes(replays, tmp_path, capsys):
    good = replays / "fixtures" / "peppi__tests__data__netplay.slp"
    assert main([str(good), "--out", str(tmp_path / "a")]) == 0
    assert "1 ok, 0 skipped, 0 failed, 128 frames" in capsys.readouterr().out
    corrupt = replays / "fixtures" / "peppi__tests__data__corrupt.slp"
    assert main([str(corrupt), "--out", str(tmp_path / "b")]) == 1  # nothing could be read
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    # A missing source beside a good one is reported, and the good one is parsed.
    assert main([str(tmp_path / "missing"), str(good), "--out", str(tmp_path / "d")]) == 0
