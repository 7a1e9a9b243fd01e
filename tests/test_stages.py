"""Stage geometry (`core.stages`) against libmelee's figures and the real replays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_tsv_manifest

from core import melee_ids, stages
from core.actions import DEAD_IDS, ON_HALO_DESCENT, ON_HALO_WAIT
from core.replay_reader import ReplaySkipped, read_replay

STANDING = 14  # libmelee Action.STANDING
POPO = 10  # internal character id: Ice Climbers' leader stands 5 units off spawn points
SPAWN_FRAME = -123  # the first frame of every replay (slippi-js Frames.FIRST)

# The one stretch of frames in the dev replays where a live player is past a blast zone: this
# Jigglypuff is launched above Yoshi's Story's top zone (168) in hitstun, peaks at y = 177.3
# and comes back (see core/stages.py).
SURVIVED_ABOVE_TOP = {("peppi__tests__data__v2.0.slp", "p1"): range(8451, 8486)}
# Respawns pushed to x = 16.0 because the other player had just used the revival platform.
SHIFTED_RESPAWNS = {("peppi__tests__data__v0.1.slp", "p2", 4344)}


@pytest.fixture(scope="module")
def dev_games(replays) -> list[tuple[str, dict, dict[str, np.ndarray]]]:
    """(file name, info, numpy columns) of every dev replay."""
    return [_load(path) for path in sorted((replays / "dev").glob("*.slp"))]


def _load(path: Path) -> tuple[str, dict, dict[str, np.ndarray]]:
    parsed = read_replay(path)
    columns = {name: parsed.table.column(name).to_numpy() for name in _COLUMNS}
    return path.name, parsed.info, columns


_COLUMNS = ["frame", "stage"] + [
    f"{p}_{f}"
    for p in ("p1", "p2")
    for f in ("x", "y", "action", "airborne", "ground", "character")
]


def _version(info: dict) -> tuple[int, ...]:
    return tuple(int(v) for v in info["slippi_version"].split("."))


def test_blast_zones_edges_and_platforms_are_libmelee_figures(replays):
    with open(replays.parent / "reference" / "melee_facts.json", encoding="utf-8") as f:
        facts = json.load(f)["stage_geometry"]["stages"]
    assert len(facts) == 6
    for libmelee in facts.values():
        stage = stages.get_stage(libmelee["slippi_external_stage_id"])
        zones = libmelee["blastzones"]
        assert (stage.blast_left, stage.blast_right, stage.blast_top, stage.blast_bottom) == (
            zones["left_x"],
            zones["right_x"],
            zones["top_y"],
            zones["bottom_y"],
        )
        edge = libmelee["edge_ground_position_x"]
        assert stage.main.left_x == pytest.approx(-edge, abs=1e-4)
        assert stage.main.right_x == pytest.approx(edge, abs=1e-4)
        expected = [
            (p["left_x"], p["right_x"], p["height_y"])
            for key in ("left_platform", "right_platform", "top_platform")
            if (p := libmelee[key]) is not None
        ]
        got = [(p.left_x, p.right_x, p.y) for p in stage.platforms]
        assert np.allclose(got, expected, atol=1e-4), stage.name


def test_every_legal_stage_loads():
    assert set(stages.legal_stage_ids()) == melee_ids.legal_stages()
    for stage_id in stages.legal_stage_ids():
        stage = stages.get_stage(stage_id)
        assert stage.id == stage_id and stage.name == melee_ids.stage_name(stage_id)
        assert len(stage.spawns) == 4 and len(stage.respawns) >= 2
        assert 0 < stage.main_flat_x <= stage.main.right_x
        for x, y in (*stage.spawns, *stage.respawns, (0.0, stage.respawn_top_y)):
            assert stage.outside_blast_zone(x, y) is None
            assert stage.main.left_x < x < stage.main.right_x and y > stage.main.y
    assert stages.get_stage(2).platforms == stages.get_stage(2).platforms[:1]  # FoD: top only


def test_non_legal_stages_raise_a_clear_key_error():
    with pytest.raises(KeyError, match=r"stage 4 \(PRINCESS_PEACHS_CASTLE\) is not one of"):
        stages.get_stage(4)


@pytest.mark.parametrize("stage_id", [2, 3, 8, 28, 31, 32])
def test_outside_blast_zone_names_the_zone_crossed(stage_id):
    stage = stages.get_stage(stage_id)
    eps = 0.01
    inside = [
        (stage.blast_left + eps, 0.0),
        (stage.blast_right - eps, 0.0),
        (0.0, stage.blast_top - eps),
        (0.0, stage.blast_bottom + eps),
        (stage.blast_left, stage.blast_top),  # on the lines
    ]
    for x, y in inside:
        assert stage.outside_blast_zone(x, y) is None, (x, y)
    assert stage.outside_blast_zone(stage.blast_left - eps, 0.0) == "left"
    assert stage.outside_blast_zone(stage.blast_right + eps, 0.0) == "right"
    assert stage.outside_blast_zone(0.0, stage.blast_top + eps) == "top"
    assert stage.outside_blast_zone(0.0, stage.blast_bottom - eps) == "bottom"
    assert stage.outside_blast_zone(np.float32(stage.blast_right + 1), np.float32(0)) == "right"


def test_live_players_stay_inside_the_blast_zones(dev_games):
    for name, info, cols in dev_games:
        stage = stages.get_stage(info["stage"])
        for p in ("p1", "p2"):
            x, y, frame = cols[f"{p}_x"], cols[f"{p}_y"], cols["frame"]
            dead = np.isin(cols[f"{p}_action"], DEAD_IDS)
            dying = dead | np.r_[dead[1:], False]  # a KO starts the frame after the crossing
            sides = (x < stage.blast_left) | (x > stage.blast_right) | (y < stage.blast_bottom)
            above = (y > stage.blast_top) & ~np.isin(frame, SURVIVED_ABOVE_TOP.get((name, p), []))
            outside = np.flatnonzero((sides | above) & ~dying)
            assert len(outside) == 0, (name, p, frame[outside[:5]], x[outside[:5]], y[outside[:5]])


def test_grounded_players_stand_at_the_main_platform_height(dev_games):
    checked = 0
    for name, info, cols in dev_games:
        if _version(info) < (2, 0, 0):  # no airborne or ground fields before Slippi 2.0
            continue
        stage = stages.get_stage(info["stage"])
        for p in ("p1", "p2"):
            x, y, ground = cols[f"{p}_x"], cols[f"{p}_y"], cols[f"{p}_ground"]
            grounded = cols[f"{p}_airborne"] == 0
            # The main platform is the ground line under the stage's centre.
            centre = grounded & (np.abs(x) < 5) & (y < 5)
            main_line = np.bincount(ground[centre]).argmax()
            on_main = grounded & (ground == main_line) & (cols[f"{p}_action"] == STANDING)
            on_main &= np.abs(x) < min(stage.main.right_x, stage.main_flat_x)
            assert np.abs(y[on_main] - stage.main.y).max(initial=0) < 0.01, (name, p)
            checked += int(on_main.sum())
    assert checked > 5_000


def test_main_platform_is_flat_out_to_main_flat_x(dev_games):
    """Yoshi's Story slopes beyond main_flat_x; inside it, standing players are at main.y."""
    for name, info, cols in dev_games:
        if _version(info) < (2, 0, 0):
            continue
        stage = stages.get_stage(info["stage"])
        lowest = min((p.y for p in stage.platforms), default=np.inf)
        for p in ("p1", "p2"):
            x, y = cols[f"{p}_x"], cols[f"{p}_y"]
            standing = (cols[f"{p}_airborne"] == 0) & (cols[f"{p}_action"] == STANDING)
            low = standing & (y < lowest - 1) & (y < 5)
            flat = low & (np.abs(x) < stage.main_flat_x)
            assert np.abs(y[flat] - stage.main.y).max(initial=0) < 0.01, (name, p)
            if info["stage"] == 8:  # the slopes are really there
                assert (y[low & (np.abs(x) > stage.main_flat_x + 1)] < stage.main.y - 0.1).all()


def test_spawn_points_match_the_first_frame_of_the_replays(replays):
    checked = set()
    for folder in ("dev", "fixtures"):
        manifest = read_tsv_manifest(replays / folder / "MANIFEST.tsv")
        for file, row in sorted(manifest.items()):
            if row["peppi"] != "OK":  # broken files and modes peppi cannot read
                continue
            try:
                name, info, cols = _load(replays / folder / file)
            except ReplaySkipped:  # not a two-player versus game on a legal stage
                continue
            old_dream_land = info["stage"] == 28 and _version(info) < (2, 0, 0)  # stages.json
            if cols["frame"][0] != SPAWN_FRAME or old_dream_land:
                continue
            _check_spawns(name, info, cols, checked)
    # Slots 1 and 2 of every stage are measured, P2-vs-P4 games included.
    measured = {
        (s, stages.get_stage(s).spawns[i]) for s in stages.legal_stage_ids() for i in (0, 1)
    }
    assert checked == measured


def _check_spawns(name: str, info: dict, cols: dict[str, np.ndarray], checked: set) -> None:
    points = stages.spawn_points_for(info["stage"], tuple(info["ports"]))
    for p, point in zip(("p1", "p2"), points, strict=True):
        if cols[f"{p}_character"][0] == POPO:
            continue
        got = (cols[f"{p}_x"][0], cols[f"{p}_y"][0])
        assert got == pytest.approx(point, abs=0.01), (name, p, info["ports"])
        checked.add((info["stage"], point))


def test_spawn_slots_follow_port_order():
    yoshis = stages.get_stage(8)
    assert stages.spawn_points_for(8) == yoshis.spawns[:2]
    assert stages.spawn_points_for(8, ("P2", "P4")) == yoshis.spawns[:2]
    assert stages.spawn_points_for(8, ("P4", "P2")) == yoshis.spawns[1::-1]
    assert stages.spawn_points_for(8, ("P1", "P2", "P3", "P4")) == yoshis.spawns
    with pytest.raises(ValueError, match="distinct"):
        stages.spawn_points_for(8, ("P1", "P1"))
    with pytest.raises(ValueError, match="P5"):
        stages.spawn_points_for(8, ("P1", "P5"))


def test_respawns_rest_at_the_revival_platform_points(dev_games):
    seen = set()
    for name, info, cols in dev_games:
        stage = stages.get_stage(info["stage"])
        for slot, p in enumerate(("p1", "p2")):
            action, x, y = cols[f"{p}_action"], cols[f"{p}_x"], cols[f"{p}_y"]
            descent = action == ON_HALO_DESCENT
            starts = np.flatnonzero(descent & ~np.r_[False, descent[:-1]])
            assert np.allclose(y[starts], stage.respawn_top_y, atol=0.01), name
            waits = np.flatnonzero((action == ON_HALO_WAIT) & np.r_[False, descent[:-1]])
            for i in waits:
                rest_x, rest_y = stage.respawns[slot]
                assert y[i] == pytest.approx(rest_y, abs=0.01), (name, p, cols["frame"][i])
                if cols[f"{p}_character"][i] == POPO:
                    rest_x -= 5.0  # Popo rests 5 units left of the point (Nana to the right)
                if (name, p, cols["frame"][i]) in SHIFTED_RESPAWNS:
                    rest_x = 16.0
                assert x[i] == pytest.approx(rest_x, abs=0.01), (name, p, cols["frame"][i])
                seen.add(info["stage"])
    assert seen == {2, 8, 28, 32}  # the dev replays respawn on these stages
