"""The game rules (`model.rules`, `model.stage_collision`): KOs through each blast zone, the
death descent and the revival platform, the entry and GO, stocks and the game's end, clamping,
and the stage's solid surface."""

from __future__ import annotations

import math

import pytest
import torch
from simulation_setup import (
    after_frames,
    batch_frame,
    beyond,
)

from core.actions import ON_HALO_DESCENT, ON_HALO_WAIT
from core.stages import get_stage, legal_stage_ids
from model.frames import frames_from_table
from model.game_start import FIRST_FRAME, GameSetup
from model.rule_state import RuleState
from model.rules import LIMITS, RESPAWN_INVULNERABLE_FRAMES, apply_rules
from model.simulation import Simulation


@pytest.mark.parametrize("stage_id", legal_stage_ids())
@pytest.mark.parametrize("zone", ["left", "right", "bottom", "top"])
def test_ko_through_each_blast_zone_then_death_descent_and_platform(stage_id, zone):
    from model.rules import DEAD_ACTIONS, DEAD_FRAMES, DESCENT_FRAMES

    stage = get_stage(stage_id)
    frame, rules = batch_frame(stage_id)
    crossing = beyond(stage, zone)
    frame["p1_x"][0], frame["p1_y"][0] = crossing
    frame["p1_percent"][0] = 140.0
    frame["p1_vel_knockback_x"][0] = 9.0
    events = apply_rules(frame, rules)[0]
    assert [e.type for e in events] == ["ko"]
    assert events[0].player == 0 and events[0].detail["zone"] == zone
    assert rules.stocks[0].tolist() == [3, 4] and int(frame["p1_stocks"][0]) == 3
    # Held where they crossed, in the KO animation, for DEAD_FRAMES, whatever the model says.
    events = after_frames(frame, rules, DEAD_FRAMES - 1)
    assert events == []
    assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx(crossing)
    assert int(frame["p1_action"][0]) == DEAD_ACTIONS[zone]
    assert float(frame["p1_vel_knockback_x"][0]) == 0.0
    assert int(frame["p1_hurtbox_state"][0]) == 1
    # Then back on the revival platform, at its top, 0%, descending linearly.
    events = after_frames(frame, rules, 1)
    assert [e.type for e in events] == ["respawn"]
    x_rest, y_rest = stage.respawns[0]
    assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx(
        (x_rest, stage.respawn_top_y)
    )
    assert float(frame["p1_percent"][0]) == 0.0
    assert int(frame["p1_action"][0]) == ON_HALO_DESCENT
    after_frames(frame, rules, DESCENT_FRAMES // 2)
    assert float(frame["p1_y"][0]) == pytest.approx((y_rest + stage.respawn_top_y) / 2, abs=0.01)
    after_frames(frame, rules, DESCENT_FRAMES // 2)
    assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx((x_rest, y_rest))
    assert int(frame["p1_action"][0]) == ON_HALO_WAIT
    assert int(frame["p1_hurtbox_state"][0]) == 1  # invulnerable
    assert int(frame["p2_stocks"][0]) == 4  # the other player is untouched


def test_respawned_player_waits_on_the_platform_then_is_invulnerable_for_its_period():
    from model.rules import DEAD_FRAMES, DESCENT_FRAMES, HALO_MAX_FRAMES

    frame, rules = batch_frame(31)
    frame["p1_y"][0] = get_stage(31).blast_bottom - 1
    apply_rules(frame, rules)
    after_frames(frame, rules, DEAD_FRAMES + DESCENT_FRAMES)
    on_platform, protected = 0, 0
    x_rest, y_rest = get_stage(31).respawns[0]
    for _ in range(HALO_MAX_FRAMES + RESPAWN_INVULNERABLE_FRAMES + 10):
        after_frames(frame, rules, 1)  # the model keeps predicting a drift and no hurtbox
        if int(frame["p1_action"][0]) == ON_HALO_WAIT:
            on_platform += 1
            assert (float(frame["p1_x"][0]), float(frame["p1_y"][0])) == pytest.approx(
                (x_rest, y_rest)
            )
        protected += int(frame["p1_hurtbox_state"][0]) == 1
    assert HALO_MAX_FRAMES - 3 <= on_platform <= HALO_MAX_FRAMES
    assert on_platform + RESPAWN_INVULNERABLE_FRAMES <= protected <= on_platform + 125


def test_touching_the_controller_leaves_the_platform_falling():
    from model.rules import DEAD_FRAMES, DESCENT_FRAMES
    from model.stage_collision import FALL_ACTION

    frame, rules = batch_frame(31)
    frame["p1_y"][0] = get_stage(31).blast_bottom - 1
    apply_rules(frame, rules)
    idle = {f"p1_{k}": torch.zeros(1) for k in ("joystick_x", "joystick_y")}
    idle["p1_buttons"] = torch.zeros(1, dtype=torch.long)
    after_frames(frame, rules, DEAD_FRAMES + DESCENT_FRAMES + 10, controls=idle, drift=False)
    assert int(frame["p1_action"][0]) == ON_HALO_WAIT
    tilt = dict(idle, p1_joystick_x=torch.tensor([0.2]))  # inside Melee's deadzone
    apply_rules(frame, rules, controls=tilt)
    assert int(frame["p1_action"][0]) == ON_HALO_WAIT
    push = dict(idle, p1_joystick_x=torch.tensor([0.8]))
    prev = {k: v.clone() for k, v in frame.items()}
    apply_rules(frame, rules, prev, controls=push)
    assert int(frame["p1_action"][0]) == FALL_ACTION
    assert int(frame["p1_state_age"][0]) == 0  # the fall's first frame
    assert int(rules.halo[0, 0]) == 0
    frame["p1_x"][0] = 50.0
    apply_rules(frame, rules, controls=idle)  # gone: the model moves the player again
    assert float(frame["p1_x"][0]) == 50.0


def test_the_entry_plays_as_in_real_games(dev_dataset_dir):
    """The rules' entry animation has the real games' actions on nearly all of its frames
    (some real entries run 5 or 10 frames late), and leaves the players where real ones
    stand at GO."""
    import pyarrow.parquet as pq

    from model.rules import ENTRY_PHASES, GO_FRAME, hold_entry

    matched = []
    for path in sorted(dev_dataset_dir.glob("*.parquet")):
        real = frames_from_table(pq.read_table(path))
        stage = int(real["stage"][0])
        if stage not in legal_stage_ids() or int(real["frame"][0]) != -123:
            continue
        rules = RuleState.new(get_stage(stage), (4, 4))
        frame = {k: v[:1].clone() for k, v in real.items()}
        same, animation = 0, range(1, ENTRY_PHASES[-1][0] + 124)  # frames -122 .. -60
        for row in range(1, GO_FRAME + 124):
            prev, frame = frame, {k: v[row : row + 1].clone() for k, v in real.items()}
            frame["p1_action"][0] = 0  # whatever the model says
            hold_entry(frame, prev, rules)
            same += row in animation and int(frame["p1_action"][0] == real["p1_action"][row])
        matched.append(same / len(animation))
        for slot, p in enumerate(("p1", "p2")):
            start = get_stage(stage).starts[slot]
            spawn_x = float(real[f"{p}_x"][animation[-1]])  # the entry falls straight down
            assert float(frame[f"{p}_x"][0]) == pytest.approx(spawn_x, abs=1)
            assert float(frame[f"{p}_y"][0]) == pytest.approx(start[1], abs=0.01)
    assert len(matched) >= 3 and min(matched) > 0.6, matched
    assert sorted(matched)[len(matched) // 2] > 0.95, matched


def test_at_go_players_stand_at_the_start_points_whatever_the_model_says():
    from model.rules import GO_FRAME, STANDING_ACTION, hold_entry

    prev, rules = batch_frame(31)
    prev["frame"] = torch.tensor([GO_FRAME - 1])
    frame = {k: v.clone() for k, v in prev.items()}  # both players still in ENTRY
    frame["frame"] = torch.tensor([GO_FRAME])
    frame["p2_action"][0] = 29  # the model has p2 falling
    frame["p2_y"][0] = 90.0
    hold_entry(frame, prev, rules)
    for slot, p in enumerate(("p1", "p2")):
        x, y, ground = get_stage(31).starts[slot]
        assert int(frame[f"{p}_action"][0]) == STANDING_ACTION
        assert int(frame[f"{p}_airborne"][0]) == 0 and int(frame[f"{p}_ground"][0]) == ground
        assert float(frame[f"{p}_x"][0]) == pytest.approx(x, abs=1e-4)  # the spawn's x
        assert float(frame[f"{p}_y"][0]) == pytest.approx(y, abs=1e-4)
    frame["frame"] = torch.tensor([GO_FRAME + 1])  # after GO the model moves them
    frame["p1_action"][0] = 20
    hold_entry(frame, prev, rules)
    assert int(frame["p1_action"][0]) == 20


def test_a_game_set_up_on_the_main_stage_starts_there_on_every_legal_stage(model):
    """The probes' start: at GO both players stand on the main stage's flat part (its height
    and ground id), not on the side platforms where Melee puts them."""
    from model.rules import GO_FRAME

    sim = Simulation(model)
    stages = legal_stage_ids()
    ids = [sim.new_game(GameSetup(stage=s, on_main_stage=True)) for s in stages]
    for _ in range(GO_FRAME - FIRST_FRAME):
        sim.step({})
    frame = sim.batch_frame
    assert int(frame["frame"][0]) == GO_FRAME
    for row, stage_id in enumerate(stages):
        stage = get_stage(stage_id)
        for p in ("p1", "p2"):
            assert float(frame[f"{p}_y"][row]) == pytest.approx(stage.main.y, abs=1e-4)
            assert int(frame[f"{p}_ground"][row]) == stage.main_ground
            assert int(frame[f"{p}_airborne"][row]) == 0
            assert abs(float(frame[f"{p}_x"][row])) <= stage.main_flat_x
    assert len(ids) == len(stages)


def test_the_entry_hold_stops_a_drifting_model():
    from model.rules import hold_entry

    prev, rules = batch_frame(31)
    prev["frame"] = torch.tensor([-100])
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = torch.tensor([-99])
    frame["p1_x"][0] += 3.0
    frame["p1_y"][0] -= 2.0
    hold_entry(frame, prev, rules)
    assert float(frame["p1_x"][0]) == float(prev["p1_x"][0])
    assert float(frame["p1_y"][0]) == float(prev["p1_y"][0])


def test_stocks_change_only_by_kos():
    frame, rules = batch_frame(32)
    frame["p1_stocks"][0] = 0  # the model predicting a lost stock decides nothing
    frame["p2_stocks"][0] = 7
    assert apply_rules(frame, rules) == [[]]
    assert int(frame["p1_stocks"][0]) == 4 and int(frame["p2_stocks"][0]) == 4


def test_last_stock_ends_the_game():
    frame, rules = batch_frame(8, stocks=(1, 2))
    frame["p1_x"][0] = get_stage(8).blast_right + 1
    events = apply_rules(frame, rules)[0]
    assert [e.type for e in events] == ["ko", "game_end"]
    assert events[-1].player == 1 and events[-1].detail["method"] == "stocks"
    assert bool(rules.over[0])


def test_timer_ends_the_game(model):
    sim = Simulation(model)
    game = sim.new_game(GameSetup(stage=31, timer_frames=-100))
    ends = []
    for _ in range(30):
        ends += [e for e in sim.step({})[game].events if e.type == "game_end"]
    assert len(ends) == 1 and ends[0].detail["method"] == "time" and ends[0].frame == -100
    assert sim.is_over(game)
    assert int(sim.frame(game)["frame"]) == -100  # a finished game stays on its last frame


def test_clamping_keeps_every_field_legal():
    frame, rules = batch_frame(2)
    frame["p1_percent"][0] = 1e6
    frame["p1_shield"][0] = -5
    frame["p1_vel_self_y"][0] = -1e4
    frame["p2_x"][0] = 1e9
    frame["item_vel_x"][0, 3] = 1e5
    apply_rules(frame, rules)
    assert float(frame["p1_percent"][0]) == 999.0 and float(frame["p1_shield"][0]) == 0.0
    assert float(frame["p1_vel_self_y"][0]) == LIMITS["vel_self_y"][0]
    assert math.isfinite(float(frame["p2_x"][0]))
    assert float(frame["item_vel_x"][0, 3]) == 30.0


@pytest.mark.parametrize("stage_id", legal_stage_ids())
def test_nobody_falls_through_the_main_stage_from_above(stage_id):
    from model.stage_collision import FLOOR_TOLERANCE

    stage = get_stage(stage_id)
    prev, rules = batch_frame(stage_id)
    prev["p1_x"][0], prev["p1_y"][0] = 10.0, stage.main.y + 2.0
    prev["p2_x"][0], prev["p2_y"][0] = stage.main.right_x + 20.0, stage.main.y - 30.0  # recovering
    frame = {k: v.clone() for k, v in prev.items()}
    frame["p1_y"][0] = stage.main.y - FLOOR_TOLERANCE - 5.0  # sinks through
    frame["p1_vel_self_y"][0] = -3.0
    frame["p2_y"][0] = stage.main.y - 31.0  # below the stage, off to the side: untouched
    apply_rules(frame, rules, prev)
    assert float(frame["p1_y"][0]) == pytest.approx(stage.main.y)
    assert float(frame["p1_vel_self_y"][0]) == 0.0
    assert float(frame["p2_y"][0]) == pytest.approx(stage.main.y - 31.0)


def test_the_solid_stage_rule_never_moves_a_real_player(dev_dataset_dir):
    """On real games the rules of the solid stage must be invisible: apply them to every frame
    given the one before."""
    import pyarrow.parquet as pq

    from model.stage_collision import keep_above_main_stage

    paths = sorted(dev_dataset_dir.glob("*.parquet"))
    assert len(paths) == 8
    for path in paths:
        frames = frames_from_table(pq.read_table(path))
        stage = get_stage(int(frames["stage"][0]))
        n = len(frames["frame"]) - 1
        rules = RuleState.new(stage, (4, 4))
        rules = RuleState.from_tensors(
            {k: v.expand(n, *v.shape[1:]).clone() for k, v in rules.tensors().items()}
        )
        prev = {k: v[:-1] for k, v in frames.items()}
        new = {k: v[1:].clone() for k, v in frames.items()}
        before = {k: new[k].clone() for k in ("p1_y", "p2_y")}
        kept = {
            f"{p}_{k}": new[f"{p}_{k}"].clone()
            for p in ("p1", "p2")
            for k in ("action", "airborne", "vel_self_x_air")
        }
        keep_above_main_stage(new, prev, rules)
        for key, value in kept.items():  # nobody real falls off an edge they stand on
            changed = int((new[key] != value).sum())
            assert changed == 0, f"{path.name}: the rule changed {key} on {changed} frames"
        for key, value in before.items():
            # Standing players are put at the surface's height as assets/stages.json has
            # it, which may differ from a replay's by a few thousandths of a unit.
            moved = (new[key] - value).abs().max()
            assert moved < 0.01, f"{path.name}: the rule moved {key} by {moved}"


@pytest.mark.parametrize("falling, landed", [(25, 42), (65, 70), (35, 43)])
def test_a_player_falling_through_the_stage_lands_on_it(falling, landed):
    """Melee's collision: a jump, an aerial or a helpless fall that the model carries through
    the stage's surface lands there, in the landing that action lands in."""
    prev, rules = batch_frame(32)
    stage = get_stage(32)
    for frame_ in (prev,):
        frame_["p1_action"][0], frame_["p1_airborne"][0], frame_["p1_y"][0] = falling, 1, 3.0
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    frame["p1_y"][0] = stage.main.y - 9.0  # through the surface, still in the air
    frame["p1_vel_self_y"][0] = -3.0
    apply_rules(frame, rules, prev)
    assert int(frame["p1_action"][0]) == landed and int(frame["p1_airborne"][0]) == 0
    assert float(frame["p1_y"][0]) == pytest.approx(stage.main.y)
    assert float(frame["p1_vel_self_y"][0]) == 0.0


@pytest.mark.parametrize("stage_id", legal_stage_ids())
def test_a_player_run_past_the_edge_falls(stage_id):
    """Melee's collision: nothing under a player the model keeps running past the stage's
    edge, so they fall (FALL, airborne, the run's speed carried into the air); one still on
    the stage, or below it recovering, is left alone."""
    from model.stage_collision import EDGE_OVERHANG, FALL_ACTION

    stage = get_stage(stage_id)
    prev, rules = batch_frame(stage_id)
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    run_brake, run = 23, 21
    for p, x, action in (
        ("p1", stage.main.right_x + 3.0, run_brake),
        ("p2", -stage.main.right_x + 2.0, run),
    ):
        frame[f"{p}_action"][0], frame[f"{p}_airborne"][0] = action, 0
        frame[f"{p}_x"][0], frame[f"{p}_y"][0] = x, stage.main.y
        frame[f"{p}_vel_self_x_ground"][0] = 1.5
    apply_rules(frame, rules, prev)
    assert int(frame["p1_action"][0]) == FALL_ACTION and int(frame["p1_airborne"][0]) == 1
    assert int(frame["p1_state_age"][0]) == 0
    assert float(frame["p1_vel_self_x_air"][0]) == 1.5
    assert float(frame["p1_vel_self_x_ground"][0]) == 0.0
    assert int(frame["p2_action"][0]) == run and int(frame["p2_airborne"][0]) == 0  # on stage
    assert EDGE_OVERHANG < 3.0


@pytest.mark.parametrize(
    "stage_id, x, y, falls",
    [
        (31, -10.0, 27.2, True),  # Battlefield: run off the left platform's end, at its height
        (31, -30.0, 27.2, False),  # on that platform
        (31, -57.9, 27.2, False),  # its end, within EDGE_OVERHANG: a teeter
        (8, -59.5, 23.45, False),  # Yoshi's Story: a side platform past the main stage's edge
        (2, 30.0, 20.0, False),  # Fountain of Dreams: its side platforms move, not listed
        (3, -40.0, 14.5, False),  # Pokemon Stadium: a transformation's surface
        (32, 0.0, 10.0 + 13.0, True),  # Final Destination: high above its only surface
        (31, -94.0, -16.0, True),  # Battlefield: past the edge, below the stage
        (8, 60.6, -13.6, False),  # Yoshi's Story: there Randall may carry them
    ],
)
def test_a_grounded_player_with_nothing_under_them_falls(stage_id, x, y, falls):
    """Off a platform's end the same as off the stage's edge; but on the stages whose surfaces
    move or change, only past the main stage's edge (the rules do not know their surfaces)."""
    from model.stage_collision import FALL_ACTION

    prev, rules = batch_frame(stage_id)
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    frame["p1_action"][0], frame["p1_airborne"][0] = 21, 0  # RUN
    frame["p1_x"][0], frame["p1_y"][0] = x, y
    frame["p1_vel_self_y"][0] = 0.0
    apply_rules(frame, rules, prev)
    assert (int(frame["p1_action"][0]) == FALL_ACTION) == falls
    assert int(frame["p1_airborne"][0]) == int(falls)


@pytest.mark.parametrize(
    "stage_id, x, y, falls",
    [
        (31, -94.0, -16.0, True),  # Battlefield: a landing in mid-air past the edge (in play)
        (31, 30.0, -5.0, False),  # a landing's dip below the surface, over the stage
        (32, 0.0, 10.0 + 13.0, False),  # off the surface's height: a landing's animation may be
        (8, 60.6, -13.6, False),  # Yoshi's Story: Randall, below the edge
    ],
)
def test_a_landing_past_the_edge_falls(stage_id, x, y, falls):
    """A landing the model makes where nothing is, past the main stage's edge, is a fall;
    elsewhere its position is the animation's, and the model's."""
    from model.stage_collision import FALL_ACTION, LANDING

    prev, rules = batch_frame(stage_id)
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    frame["p1_action"][0], frame["p1_airborne"][0] = LANDING, 0
    frame["p1_x"][0], frame["p1_y"][0] = x, y
    frame["p1_vel_self_y"][0] = -2.7
    prev["p1_x"][0], prev["p1_y"][0] = x, y + 0.8
    apply_rules(frame, rules, prev)
    assert (int(frame["p1_action"][0]) == FALL_ACTION) == falls
    assert int(frame["p1_airborne"][0]) == int(falls)


@pytest.mark.parametrize("action", [21, 42, 70], ids=["RUN", "LANDING", "NAIR_LANDING"])
@pytest.mark.parametrize("stage_id, stands", [(31, True), (32, True), (3, False)])
def test_a_grounded_player_inside_the_stage_stands_on_it(stage_id, stands, action):
    """A player the model keeps running, or landing, a few units inside the main stage
    stands on its surface; not on Pokemon Stadium, whose transformations have lower ground."""
    stage = get_stage(stage_id)
    prev, rules = batch_frame(stage_id)
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    for f in (prev, frame):
        f["p1_action"][0], f["p1_airborne"][0] = action, 0
        f["p1_x"][0], f["p1_y"][0] = 10.0, stage.main.y - 5.9
    frame["p1_vel_self_y"][0] = 0.0
    apply_rules(frame, rules, prev)
    expected = stage.main.y if stands else stage.main.y - 5.9
    assert float(frame["p1_y"][0]) == pytest.approx(expected, abs=1e-3)
    assert int(frame["p1_airborne"][0]) == 0


@pytest.mark.parametrize(
    "stage_id, height, drops",
    [(8, "main", False), (31, "main", False), (31, "platform", True), (3, "main", True)],
    ids=["yoshis-main", "battlefield-main", "battlefield-platform", "stadium-main"],
)
def test_nobody_drops_through_the_main_stage(stage_id, height, drops):
    """A crouch the model drops through the main stage (PLATFORM_DROP) stays a crouch on it;
    a drop from a platform is left alone, as is one on Pokemon Stadium, whose surfaces move."""
    from model.stage_collision import PLATFORM_DROP

    stage = get_stage(stage_id)
    x, y = (0.0, stage.main.y)
    if height == "platform":
        platform = stage.platforms[0]
        x, y = (platform.left_x + platform.right_x) / 2, platform.y
    prev, rules = batch_frame(stage_id)
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    prev["p1_action"][0], prev["p1_airborne"][0] = 40, 0  # SQUAT_WAIT
    prev["p1_x"][0], prev["p1_y"][0] = x, y
    frame["p1_action"][0], frame["p1_airborne"][0] = PLATFORM_DROP, 1
    frame["p1_x"][0], frame["p1_y"][0] = x, y - 1.5
    frame["p1_vel_self_y"][0] = -1.5
    apply_rules(frame, rules, prev)
    assert (int(frame["p1_action"][0]) == PLATFORM_DROP) == drops
    if not drops:
        assert int(frame["p1_action"][0]) == 40 and int(frame["p1_airborne"][0]) == 0
        assert float(frame["p1_y"][0]) == pytest.approx(stage.main.y, abs=1e-3)
        assert float(frame["p1_vel_self_y"][0]) == 0.0


def test_knockback_grows_only_from_a_hit():
    """Outside the actions a hit puts a player in, a knockback speed keeps at most its size:
    a standing player the model gives knockback from nothing stays put; one flying from a hit
    keeps what the model says."""
    prev, rules = batch_frame(32)
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    frame["p1_action"][0], frame["p2_action"][0] = 14, 88  # STANDING, DAMAGE_FLY_NEUTRAL
    for p in ("p1", "p2"):
        prev[f"{p}_vel_knockback_x"][0], prev[f"{p}_vel_knockback_y"][0] = 0.0, 0.0
        frame[f"{p}_vel_knockback_x"][0], frame[f"{p}_vel_knockback_y"][0] = 0.3, 0.4
    apply_rules(frame, rules, prev)
    assert float(frame["p1_vel_knockback_x"][0]) == 0.0
    assert float(frame["p1_vel_knockback_y"][0]) == 0.0
    assert float(frame["p2_vel_knockback_y"][0]) == pytest.approx(0.4)
    # Decaying outside a hit (after hitstun, say) is left as it is; growing is cut to the size.
    prev["p1_vel_knockback_y"][0], frame["p1_vel_knockback_y"][0] = 2.0, 1.9
    frame["p1_vel_knockback_x"][0] = 0.0
    apply_rules(frame, rules, prev)
    assert float(frame["p1_vel_knockback_y"][0]) == pytest.approx(1.9)


def test_the_knockback_rule_never_changes_a_real_player(dev_dataset_dir):
    import pyarrow.parquet as pq

    from model.rules import knockback_only_from_hits

    for path in sorted(dev_dataset_dir.glob("*.parquet")):
        frames = frames_from_table(pq.read_table(path))
        prev = {k: v[:-1] for k, v in frames.items()}
        new = {k: v[1:].clone() for k, v in frames.items()}
        before = {k: new[k].clone() for k in new if "knockback" in k}
        knockback_only_from_hits(new, prev)
        for key, value in before.items():
            changed = (new[key] - value).abs().max()
            assert changed < 1e-4, f"{path.name}: the rule changed {key} by {changed}"


def _on_main_stage_in(action: int, age: float, stage_id: int = 32):
    """A frame and the one before, both players grounded on the main stage in `action`, the
    previous frame `age` frames into it, and the rule state (Fox vs Falco)."""
    stage = get_stage(stage_id)
    prev, rules = batch_frame(stage_id)
    for index, p in enumerate(("p1", "p2")):
        prev[f"{p}_action"][0], prev[f"{p}_airborne"][0] = action, 0
        prev[f"{p}_x"][0], prev[f"{p}_y"][0] = (-20.0, 20.0)[index], stage.main.y
        prev[f"{p}_ground"][0] = stage.main_ground
        prev[f"{p}_state_age"][0] = age
    frame = {k: v.clone() for k, v in prev.items()}
    frame["frame"] = prev["frame"] + 1
    return frame, prev, rules


def test_a_jab_held_longer_than_real_games_allow_ends_in_standing():
    """Fox's and Falco's real jabs last at most 20 frames (ages 0-19, model/action_ends.csv,
    from the corpus): a jab the model keeps past that becomes STANDING, its age counted from 0;
    one a frame younger stays."""
    from model.action_ends import action_end_table

    jab, standing = 44, 14
    assert action_end_table()[(1, jab)] == (19, standing)  # Fox
    assert action_end_table()[(22, jab)] == (19, standing)  # Falco
    frame, prev, rules = _on_main_stage_in(jab, 19.0)
    prev["p2_state_age"][0] = 17.0
    apply_rules(frame, rules, prev)
    assert [int(frame[f"{p}_action"][0]) for p in ("p1", "p2")] == [standing, jab]
    assert [float(frame[f"{p}_state_age"][0]) for p in ("p1", "p2")] == [0.0, 18.0]
    # The model keeps p2's jab for two frames more: its last real age (19), then one past it.
    for age, action in ((19.0, jab), (0.0, standing)):
        prev = frame
        frame = {k: v.clone() for k, v in prev.items()}
        frame["frame"] = prev["frame"] + 1
        frame["p2_action"][0] = jab
        apply_rules(frame, rules, prev)
        assert int(frame["p2_action"][0]) == action
        assert float(frame["p2_state_age"][0]) == age
        assert int(frame["p1_action"][0]) == standing  # p1 stays where the rule put it


@pytest.mark.parametrize("action", [14, 179, 21])  # STANDING, SHIELD, RUNNING
def test_held_actions_have_no_end(action):
    """Standing, a held shield and a run last as long as the input: the rule never ends them."""
    frame, prev, rules = _on_main_stage_in(action, 5000.0)
    apply_rules(frame, rules, prev)
    assert int(frame["p1_action"][0]) == action
    assert float(frame["p1_state_age"][0]) == 5001.0


def test_the_action_end_rule_never_changes_a_real_player(dev_dataset_dir):
    """The dev games are not in the corpus the limits were mined from: no real action in them
    lasts longer than the table lets it."""
    import pyarrow.parquet as pq

    from model.action_ends import end_overlong_actions
    from model.frame_spec import count_state_age

    for path in sorted(dev_dataset_dir.glob("*.parquet")):
        frames = frames_from_table(pq.read_table(path))
        count_state_age(frames)  # as the model reads it and the simulation counts it
        prev = {k: v[:-1] for k, v in frames.items()}
        new = {k: v[1:].clone() for k, v in frames.items()}
        before = {k: new[k].clone() for k in ("p1_action", "p2_action")}
        end_overlong_actions(new, prev)
        for key, value in before.items():
            changed = int((new[key] != value).sum())
            assert changed == 0, f"{path.name}: the rule changed {key} on {changed} frames"


def _stick(p1_x: float, p2_x: float) -> dict[str, torch.Tensor]:
    controls = {}
    for p, x in (("p1", p1_x), ("p2", p2_x)):
        controls[f"{p}_joystick_x"] = torch.tensor([x])
        controls[f"{p}_joystick_y"] = torch.tensor([0.0])
        controls[f"{p}_buttons"] = torch.tensor([0])
    return controls


def test_a_dash_held_forward_past_the_real_ones_becomes_a_run():
    """Fox's real dashes, held forward, last 11 frames (model/dash_runs.csv, from the corpus),
    then he runs. A dash the model keeps with the stick held becomes RUNNING on the 12th frame,
    age 0, at the speed of the dash's last frame; Falco's, the stick let go, stays a dash."""
    from model.action_ends import dash_run_table

    dash, run = 20, 21
    assert dash_run_table()[1] == 11  # Fox
    assert dash_run_table()[22] == 11  # Falco
    frame, prev, rules = _on_main_stage_in(14, 30.0)  # standing
    for p in ("p1", "p2"):
        prev[f"{p}_facing"][0] = 1
    controls = _stick(1.0, 0.0)
    for held in range(1, 13):
        prev = frame
        frame = {k: v.clone() for k, v in prev.items()}
        frame["frame"] = prev["frame"] + 1
        for p in ("p1", "p2"):
            frame[f"{p}_action"][0] = dash  # the model keeps the dash...
            frame[f"{p}_vel_self_x_ground"][0] = 2.2 - 0.1 * max(0, held - 11)  # ...slowing
            frame[f"{p}_x"][0] = prev[f"{p}_x"][0] + frame[f"{p}_vel_self_x_ground"][0]
        apply_rules(frame, rules, prev, controls)
        expected = dash if held <= 11 else run
        assert int(frame["p1_action"][0]) == expected, held
        assert int(frame["p2_action"][0]) == dash
    assert float(frame["p1_state_age"][0]) == 0.0
    assert float(frame["p1_vel_self_x_ground"][0]) == pytest.approx(2.2)
    assert float(frame["p1_x"][0] - prev["p1_x"][0]) == pytest.approx(2.2)
    assert float(frame["p2_state_age"][0]) == 11.0


def test_a_dash_held_back_or_without_a_stick_stays_a_dash():
    """The stick held away from where the player faces, or no stick in the controls, holds
    nothing: the dash stays the model's."""
    frame, prev, rules = _on_main_stage_in(20, 40.0)
    for p in ("p1", "p2"):
        frame[f"{p}_facing"][0] = prev[f"{p}_facing"][0] = 1
    rules.dash_held.fill_(40)
    apply_rules(frame, rules, prev, _stick(-1.0, 0.5))
    assert [int(frame[f"{p}_action"][0]) for p in ("p1", "p2")] == [20, 20]
    assert rules.dash_held.tolist() == [[0, 0]]
    apply_rules(frame, rules, prev)
    assert [int(frame[f"{p}_action"][0]) for p in ("p1", "p2")] == [20, 20]


def test_the_held_dash_rule_never_changes_a_real_player(dev_dataset_dir):
    """The dev games are not in the corpus the limits were mined from: no real dash in them is
    held forward longer than the table lets it, and the rule counts held frames as the mining
    script does."""
    import numpy as np
    import pyarrow.parquet as pq

    from core import game_state as gs
    from model.action_ends import run_after_held_dash
    from model.frame_spec import count_state_age
    from model.rule_state import Players
    from training.mine_dash_runs import held_dash

    for path in sorted(dev_dataset_dir.glob("*.parquet")):
        frames = frames_from_table(pq.read_table(path))
        count_state_age(frames)
        held = torch.stack(
            [
                torch.from_numpy(
                    held_dash(
                        frames[f"{p}_action"].numpy(),
                        frames[f"{p}_facing"].numpy(),
                        frames[f"{p}_joystick_x"].numpy(),
                    )
                )
                for p in gs.PLAYERS
            ],
            -1,
        )  # (T, 2)
        prev = {k: v[:-1] for k, v in frames.items()}
        new = {k: v[1:].clone() for k, v in frames.items()}
        controls = {k: v for k, v in new.items() if "joystick" in k}
        rules = RuleState.new(get_stage(int(frames["stage"][0])), (4, 4))
        rules = RuleState.from_tensors(
            {k: v.expand(len(held) - 1, *v.shape[1:]).clone() for k, v in rules.tensors().items()}
        )
        rules.dash_held.copy_(held[:-1])
        players = Players(new)
        before = players["action"].clone()
        run_after_held_dash(players, Players(prev), rules, controls)
        changed = int((players["action"] != before).sum())
        assert changed == 0, f"{path.name}: the rule changed an action on {changed} frames"
        assert np.array_equal(rules.dash_held.numpy(), held[1:].numpy()), path.name
