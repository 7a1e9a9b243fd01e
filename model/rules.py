"""The rules of Melee, applied after every predicted frame, for a batch of games at once.

A learned model drifts: characters float off stage, percents climb without bound, and no
model trained on replays has learned death and respawn reliably. The rules make every frame
well-formed whatever the model predicts:

1. Clamp every field to its legal range (`LIMITS`).
2. A player outside a blast zone is KO'd: one stock less, then, if stocks remain, respawned on
   the revival platform at 0% with zero velocity, in the platform-wait action and invulnerable
   for `RESPAWN_INVULNERABLE_FRAMES`.
3. The entry animation plays as in Melee (ENTRY, ENTRY_START, ENTRY_END, no input changes
   it), then the players stand at the stage's start points until GO (frame -39); after a
   respawn, they stand still on the revival platform, which they leave when their controller
   is touched or after `HALO_MAX_FRAMES` (then falling, as in Melee).
4. The stage is solid: nobody sinks through the main stage, a fall through it lands, a
   grounded player stands on the surface under them, and one with nothing under them falls
   (`model/stage_collision.py`). A knockback speed grows only in the actions a hit puts a
   player in (DAMAGE_*, the bounces); elsewhere it keeps at most its size of the frame before.
5. Stocks change only through rule 2; the model's stock prediction is overwritten.
6. The game ends when a player has no stocks left, or when the timer runs out (the player
   with more stocks, then less damage, wins; equal is a draw).
7. A finite grounded action (a jab, a landing, a shield's release, a run's brake...) ends
   when it has lasted longer than any real run of it for that character, into STANDING
   (`model/action_ends.py`); a dash held forward longer than any real one becomes a run.

`rule_step` reports each KO, respawn and game end as a code in a (B, 5) tensor, made without a
branch on the data so that the step can run from a trace or a CUDA graph; `events_from_codes`
turns the codes into each game's `Event`s, reading the tensor once and the details only for a
game that has one. What the rules keep of each game between frames, and the stage geometry
they read, is the `RuleState` (`model/rule_state.py`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from core import game_state as gs
from core.actions import CATEGORIES, ON_HALO_DESCENT, ON_HALO_WAIT, category_table
from core.events import Event, winner
from model.action_ends import end_overlong, run_after_held_dash
from model.rule_state import Players, RuleState
from model.stage_collision import FALL_ACTION, collide_with_stage

# Legal ranges, in game units. Percent and shield from the game's own limits (999%, 60 HP
# shields); speeds are capped well above anything in the real replays (knockback reaches
# about 15 units per frame at high percent) so that only a runaway prediction is touched.
LIMITS: dict[str, tuple[float, float]] = {
    "percent": (0.0, 999.0),
    "shield": (0.0, 60.0),
    "stocks": (0.0, 4.0),
    "hitlag": (0.0, 60.0),
    "hitstun": (0.0, 200.0),
    "combo_count": (0.0, 255.0),
    "jumps": (0.0, gs.JUMPS_VOCAB - 1),
    "state_age": (0.0, 10_000.0),
    "vel_self_x_air": (-20.0, 20.0),
    "vel_self_y": (-20.0, 20.0),
    "vel_knockback_x": (-30.0, 30.0),
    "vel_knockback_y": (-30.0, 30.0),
    "vel_self_x_ground": (-20.0, 20.0),
}
# Positions are kept within this margin beyond the blast zones: far enough out to register a
# KO, near enough that a runaway prediction cannot reach absurd values.
POSITION_MARGIN = 20.0
ITEM_LIMITS = {"vel_x": (-30.0, 30.0), "vel_y": (-30.0, 30.0), "timer": (0.0, 10_000.0)}

# After a KO Melee puts the player on the revival platform; leaving it gives 120 frames
# (2 seconds) of invincibility (SmashWiki, "Revival platform"), counted from leaving it.
RESPAWN_INVULNERABLE_FRAMES = 120
# Measured on the 84 games of shared/replays: a player never moves while on the revival
# platform (41 waits), leaves it into FALL, and waits at most 240 frames. The entry animation
# is over by frame -44; in it nobody moves sideways, nobody moves at all in ENTRY, and in
# ENTRY_START / ENTRY_END players bob by at most 0.09 units a frame.
HALO_MAX_FRAMES = 240
# A KO'd player stays where they crossed the blast line, in a DEAD_* action, for 60 frames
# (57 of the 69 KOs; star KOs through the top last longer in Melee), then the revival platform
# descends for 60 frames, linearly from the stage's respawn_top_y to its respawn point (63 of
# 65 descents), before the wait above. The stock is lost when the KO starts (76 of 77).
DEAD_FRAMES = 60
DESCENT_FRAMES = 60
DEAD_ACTIONS = {"bottom": 0, "left": 1, "right": 2, "top": 4}  # DEAD_DOWN, _LEFT, _RIGHT, _FLY_STAR
# The entry animation, by frame id (the last frame of each action), as the corpus's games
# play it: ENTRY to -119, ENTRY_START to -90, ENTRY_END to -60 (274 of 300 games; the rest
# run 5 or 10 frames later). Then real players fall onto their start point, land by about
# -46 and stand from -9. No input changes it, and the model only saw it in 1.5% of its
# training frames, so the rules play it; from -59 to GO the players stand at the stage's start
# points (assets/stages.json `starts`, mined from the corpus), and the model takes them over.
ENTRY_PHASES = ((-119, 322), (-90, 323), (-60, 324))
GO_FRAME = -39
STANDING_ACTION = 14
KIRBY, JIGGLYPUFF = 4, 15  # internal ids: six jumps (one from the ground, five in the air)
STICK_DEADZONE = 0.2875  # Melee reads smaller stick values as neutral
FIRST_TIMER_FRAME = 0  # the match clock starts at frame 0 (Slippi: -39 is the first playable)

ZONES = ("left", "right", "bottom", "top")  # the blast zones, in the order of RuleState.blast

# Columns of the event codes `rule_step` returns, one row per game: a respawn of each player
# (1 or 0), a KO of each player (1 + its zone's index in ZONES, or 0), the game's end (0, or
# END_BY_STOCKS / END_BY_TIME).
RESPAWN_CODES, KO_CODES, END_CODE = (0, 1), (2, 3), 4
END_BY_STOCKS, END_BY_TIME = 1, 2


@functools.lru_cache(maxsize=8)
def _constants(device: torch.device) -> dict[str, Tensor]:
    """The rules' constant tensors, made once per device: a CUDA graph capture refuses a
    host-to-device copy, and a trace keeps them as constants. Made outside inference mode, as
    the tensors of `model.decoding._constants` are."""
    with torch.inference_mode(False):
        return {
            # How far outside the blast zones a position may be: left, right, bottom, top.
            "margins": torch.tensor(
                [-POSITION_MARGIN, POSITION_MARGIN, -POSITION_MARGIN, POSITION_MARGIN],
                device=device,
            ),
            # The DEAD_* action of each zone, in ZONES order.
            "dead_actions": torch.tensor([float(DEAD_ACTIONS[z]) for z in ZONES], device=device),
            # Per action id: whether it is one a hit puts a player in (core/actions.py).
            "hit_actions": torch.tensor(
                [c == CATEGORIES.index("damage") for c in category_table()], device=device
            ),
        }


def _clamp(frame: dict[str, Tensor], players: Players, rules: RuleState) -> None:
    """Rule 1, in place: every field of a (B,) frame within its legal range."""
    for name, (low, high) in LIMITS.items():
        players[name] = players[name].clamp(low, high)
    margins = _constants(rules.blast.device)["margins"]
    bounds = rules.blast[:, None, :] + margins  # (B, 1, 4): left, right, bottom, top
    players["x"] = torch.minimum(torch.maximum(players["x"], bounds[..., 0]), bounds[..., 1])
    players["y"] = torch.minimum(torch.maximum(players["y"], bounds[..., 2]), bounds[..., 3])
    for name, (low, high) in ITEM_LIMITS.items():
        frame[f"item_{name}"] = frame[f"item_{name}"].clamp(low, high)
    for axis, (low, high) in (("x", (0, 1)), ("y", (2, 3))):
        value = frame[f"item_{axis}"]
        lo = rules.blast[:, low, None] - POSITION_MARGIN
        hi = rules.blast[:, high, None] + POSITION_MARGIN
        frame[f"item_{axis}"] = torch.minimum(torch.maximum(value, lo), hi)


def hold_entry(frame: dict[str, Tensor], prev: dict[str, Tensor], rules: RuleState) -> None:
    """Rule 3a, in place: Melee's entry animation, which no input changes, played as real
    games play it, then both players standing where it leaves them until GO."""
    players, before = Players(frame), Players(prev)
    _hold_entry(frame, players, before, rules)
    _count_ages(players, before)
    players.write_back()


def _hold_entry(
    frame: dict[str, Tensor], players: Players, prev: Players, rules: RuleState
) -> None:
    frame_id = frame["frame"][:, None]  # (B, 1)
    action = torch.full_like(players["action"], STANDING_ACTION)
    for last_frame, entry_action in reversed(ENTRY_PHASES):  # the earliest phase wins
        action = torch.where(frame_id <= last_frame, entry_action, action)
    held = (frame_id <= GO_FRAME).expand_as(action)  # (B, 2)
    animating = held & (frame_id <= ENTRY_PHASES[-1][0])
    standing = held & ~animating
    start = rules.start  # (B, 2, 2): y, ground
    _hold(players, animating, prev["x"], prev["y"])
    _hold(players, standing, prev["x"], start[..., 0])  # straight down from the spawn
    players["action"] = torch.where(held, action, players["action"])
    players["airborne"] = torch.where(held, animating.long(), players["airborne"])
    ground = torch.where(standing, start[..., 1].long(), gs.GROUND_NONE)
    players["ground"] = torch.where(held, ground, players["ground"])
    character = players["character"]
    full = torch.where((character == KIRBY) | (character == JIGGLYPUFF), 6, 2)
    players["jumps"] = torch.where(standing, full, players["jumps"])
    for name in ("percent", "hitlag", "hitstun"):
        players[name] = torch.where(held, 0.0, players[name].float()).to(players[name].dtype)


def _hold_on_platform(
    players: Players, rules: RuleState, controls: dict[str, Tensor] | None
) -> None:
    """Rule 3b, in place: a respawned player waits on the revival platform until their
    controller is touched or `HALO_MAX_FRAMES` have passed, then falls from it."""
    on_halo = rules.halo > 0  # (B, 2)
    touched = []
    for index, p in enumerate(gs.PLAYERS):
        if controls is not None and f"{p}_joystick_x" in controls:
            stick = torch.maximum(
                controls[f"{p}_joystick_x"].abs(), controls[f"{p}_joystick_y"].abs()
            )
            touched.append((stick > STICK_DEADZONE) | (controls[f"{p}_buttons"] != 0))
        else:  # controls without this player's columns: untouched
            touched.append(torch.zeros_like(on_halo[:, index]))
    leaving = on_halo & (torch.stack(touched, -1) | (rules.halo == 1))
    point = rules.respawn  # (B, 2, 2)
    _hold(players, on_halo, point[..., 0], point[..., 1])  # leaving: falls from the spot
    action = torch.where(leaving, FALL_ACTION, ON_HALO_WAIT)
    players["action"] = torch.where(on_halo, action, players["action"])
    players["airborne"] = torch.where(on_halo, 1, players["airborne"])
    rules.halo.copy_(torch.where(on_halo & ~leaving, rules.halo - 1, 0))


def knockback_only_from_hits(frame: dict[str, Tensor], prev: dict[str, Tensor]) -> None:
    """Rule 4b, in place: a knockback speed grows only in the actions a hit puts a player in."""
    players = Players(frame)
    _knockback_only_from_hits(players, Players(prev))
    players.write_back()


def _knockback_only_from_hits(players: Players, prev: Players) -> None:
    """A player's knockback speed grows only in the actions a hit puts them in (DAMAGE_*,
    the bounces): Melee sets it when a hit lands and takes some off every frame after. Of
    the 2,947 frames of the corpus's validation games on which it grew, every one was in such
    an action. Elsewhere it keeps at most the frame before's size; in a state it never saw,
    the model let it grow from 0 and float a player to the top blast zone."""
    hit = _constants(players["action"].device)["hit_actions"][
        players["action"].long().clamp(0, gs.ACTION_VOCAB - 1)
    ]
    x, y = players["vel_knockback_x"], players["vel_knockback_y"]
    size = torch.hypot(x, y)
    allowed = torch.hypot(prev["vel_knockback_x"].float(), prev["vel_knockback_y"].float())
    scale = torch.where(hit | (size <= allowed), 1.0, allowed / size.clamp(min=1e-6))
    players["vel_knockback_x"] = x * scale
    players["vel_knockback_y"] = y * scale


def _count_ages(players: Players, prev: Players) -> None:
    """`state_age` as the simulation counts it (+1 while the action stays, else 0), for the
    action the rules left: decoding counted it for the model's, which a rule may have
    replaced. A player the revival platform let go is in FALL from its first frame, as in
    Melee; counted on from the platform's 60, the model (which never saw a fall that old and
    still) held them in the air for two seconds and then let them rise to the top zone."""
    age = torch.where(players["action"] == prev["action"], prev["state_age"].float() + 1, 0.0)
    players["state_age"] = age.to(players["state_age"].dtype)


def _hold(players: Players, mask: Tensor, x: Tensor, y: Tensor) -> None:
    """The masked players at (x, y) with no speed."""
    players["x"] = torch.where(mask, x.to(players["x"].dtype), players["x"])
    players["y"] = torch.where(mask, y.to(players["y"].dtype), players["y"])
    for name in (
        "vel_self_x_air",
        "vel_self_y",
        "vel_knockback_x",
        "vel_knockback_y",
        "vel_self_x_ground",
    ):
        players[name] = torch.where(mask, torch.zeros_like(players[name]), players[name])


def apply_rules(
    frame: dict[str, Tensor],
    rules: RuleState,
    prev: dict[str, Tensor] | None = None,
    controls: dict[str, Tensor] | None = None,
) -> list[list[Event]]:
    """Clamp, KO and the way back (death, platform descent, platform wait: given this frame's
    controls), standing still in the entry, the end of an over-long action and the solid stage
    (given the previous frame), stocks and game end for a (B,) batch of frames, in place.

    Games already over are left as they are. Returns each game's events.
    """
    codes = rule_step(frame, rules, prev, controls)
    return events_from_codes(codes, frame, rules)


def rule_step(
    frame: dict[str, Tensor],
    rules: RuleState,
    prev: dict[str, Tensor] | None = None,
    controls: dict[str, Tensor] | None = None,
) -> Tensor:
    """Every rule, the clamp first, in place, as tensor ops without a branch on the data and
    over both players at once: the live step's trace runs them after the model, and each
    game's rows get the same result whatever else is in the batch. Returns the event codes,
    (B, 5) long (see RESPAWN_CODES, KO_CODES, END_CODE), read by `events_from_codes`."""
    players = Players(frame)
    _clamp(frame, players, rules)
    live = ~rules.over
    respawned = _way_back(players, rules)
    _hold_on_platform(players, rules, controls)
    if prev is not None:
        before = Players(prev)
        _hold_entry(frame, players, before, rules)
        end_overlong(players, before)
        run_after_held_dash(players, before, rules, controls)
        collide_with_stage(players, before, rules)
        _count_ages(players, before)
        _knockback_only_from_hits(players, before)
    dead_actions = _constants(rules.dead_at.device)["dead_actions"]
    x, y = players["x"], players["y"]  # (B, 2)
    blast = rules.blast[:, None, :]  # (B, 1, 4): left, right, bottom, top
    beyond = torch.stack(
        [x < blast[..., 0], x > blast[..., 1], y < blast[..., 2], y > blast[..., 3]], -1
    )  # (B, 2, 4)
    returning = (rules.dead > 0) | (rules.descent > 0)
    ko = beyond.any(-1) & live[:, None] & (rules.stocks > 0) & ~returning  # (B, 2)
    zone = beyond.long().argmax(-1)  # the first zone crossed, in ZONES order
    kos = torch.where(ko, zone + 1, 0)
    rules.stocks.sub_(ko.long())
    dead_at = rules.dead_at  # (B, 2, 3)
    dead_at[..., 2] = torch.where(ko, dead_actions[zone], dead_at[..., 2])
    dead_at[..., 0] = torch.where(ko, x.float(), dead_at[..., 0])
    dead_at[..., 1] = torch.where(ko, y.float(), dead_at[..., 1])
    rules.dead.copy_(torch.where(ko, DEAD_FRAMES, rules.dead))
    rules.halo.copy_(torch.where(ko, 0, rules.halo))
    rules.invulnerable.copy_(torch.where(ko, 0, rules.invulnerable))
    _hold_dead(players, ko, dead_at)
    # From the KO until the platform is left, and for the invulnerability after it, the
    # player cannot be hit, whatever hurtbox the model predicts.
    away = (rules.dead > 0) | (rules.descent > 0)
    protected = away | (rules.halo > 0) | (rules.invulnerable > 0)
    players["hurtbox_state"] = torch.where(protected, 1, players["hurtbox_state"])
    counting = (~away & (rules.halo == 0)).long()  # the platform protects
    rules.invulnerable.copy_((rules.invulnerable - counting).clamp(min=0))
    players["stocks"] = rules.stocks.to(players["stocks"].dtype)
    players.write_back()

    ending = _end_games(frame, rules, live)
    return torch.cat([respawned, kos, ending[:, None]], -1)


def events_from_codes(
    codes: Tensor, frame: dict[str, Tensor], rules: RuleState
) -> list[list[Event]]:
    """Each game's events from `rule_step`'s codes, with their details read from the frame
    and the rule state after the step (one read of the codes; more only for a game with an
    event, which is rare)."""
    rows = codes.tolist()
    if not any(any(row) for row in rows):
        return [[] for _ in rows]
    frame_ids = frame["frame"].tolist() if "frame" in frame else [0] * len(rows)
    events: list[list[Event]] = []
    for b, row in enumerate(rows):
        game: list[Event] = []
        events.append(game)
        if not any(row):
            continue
        for index, column in enumerate(RESPAWN_CODES):
            if row[column]:
                game.append(Event("respawn", frame_ids[b], index))
        for index, column in enumerate(KO_CODES):
            if row[column]:
                zone = ZONES[row[column] - 1]
                stocks = int(rules.stocks[b, index])
                game.append(Event("ko", frame_ids[b], index, {"zone": zone, "stocks": stocks}))
        if row[END_CODE]:
            stocks = rules.stocks[b].tolist()
            percents = [float(frame[f"{p}_percent"][b]) for p in gs.PLAYERS]
            method = "stocks" if row[END_CODE] == END_BY_STOCKS else "time"
            game.append(
                Event("game_end", frame_ids[b], winner(stocks, percents), {"method": method})
            )
    return events


def _way_back(players: Players, rules: RuleState) -> Tensor:
    """Advance KO'd players: held where they died; then, with stocks left, respawned on the
    descending revival platform; then waiting on it (`_hold_on_platform`). Returns (B, 2):
    1 where a player respawned this frame, else 0."""
    dead = rules.dead > 0  # (B, 2)
    rules.dead.copy_((rules.dead - 1).clamp(min=0))
    back = dead & (rules.dead == 0) & (rules.stocks > 0)
    _hold_dead(players, dead & ~back, rules.dead_at)
    point = rules.respawn  # (B, 2, 2)
    top_y = rules.respawn_top[:, None]  # (B, 1)
    _respawn(players, back, point[..., 0], top_y.expand_as(back))
    players["action"] = torch.where(back, ON_HALO_DESCENT, players["action"])
    rules.invulnerable.copy_(torch.where(back, RESPAWN_INVULNERABLE_FRAMES, rules.invulnerable))
    # A player who respawns this frame starts the descent at its top next frame.
    descending = (rules.descent > 0) & ~back
    rules.descent.copy_(torch.where(descending, (rules.descent - 1).clamp(min=0), rules.descent))
    rules.descent.copy_(torch.where(back, DESCENT_FRAMES, rules.descent))
    left = rules.descent.float() / DESCENT_FRAMES  # 1 at the top, 0 at rest
    y = point[..., 1] + left * (top_y - point[..., 1])
    _hold(players, descending, point[..., 0], y)
    players["action"] = torch.where(descending, ON_HALO_DESCENT, players["action"])
    players["airborne"] = torch.where(descending, 1, players["airborne"])
    landed = descending & (rules.descent == 0)
    rules.halo.copy_(torch.where(landed, HALO_MAX_FRAMES, rules.halo))
    return back.long()


def _hold_dead(players: Players, mask: Tensor, dead_at: Tensor) -> None:
    _hold(players, mask, dead_at[..., 0], dead_at[..., 1])
    action = dead_at[..., 2].to(players["action"].dtype)
    players["action"] = torch.where(mask, action, players["action"])
    players["airborne"] = torch.where(mask, 1, players["airborne"])


def _respawn(players: Players, mask: Tensor, x: Tensor, y: Tensor) -> None:
    """Put the masked players on their revival platform at 0%, still, invulnerable."""

    def put(name: str, value: Tensor | float) -> None:
        # A number stays a number (a scalar operand): made into a tensor it would be a
        # host-to-device copy, which a CUDA graph capture refuses.
        old = players[name]
        if isinstance(value, Tensor):
            value = value.to(old.dtype)
        players[name] = torch.where(mask, value, old)

    put("x", x)
    put("y", y)
    for name in ("percent", "hitlag", "hitstun", "combo_count", "state_age"):
        put(name, 0)
    for name in ("vel_self_x_air", "vel_self_y", "vel_knockback_x", "vel_knockback_y"):
        put(name, 0)
    put("vel_self_x_ground", 0)
    put("shield", 60.0)
    put("action", ON_HALO_WAIT)
    put("airborne", 1)
    put("hurtbox_state", 1)
    put("ground", gs.GROUND_NONE)
    put("facing", torch.where(x > 0, -1, 1))  # face the centre of the stage


def _end_games(frame, rules: RuleState, live: Tensor) -> Tensor:
    """Marks games over; returns (B,) long: END_BY_STOCKS, END_BY_TIME or 0."""
    out_of_stocks = (rules.stocks == 0).any(-1) & live
    if "frame" in frame:
        out_of_time = (frame["frame"] >= rules.timer_frames) & live
    else:
        out_of_time = torch.zeros_like(live)
    rules.over |= out_of_stocks | out_of_time
    return torch.where(out_of_stocks, END_BY_STOCKS, torch.where(out_of_time, END_BY_TIME, 0))
