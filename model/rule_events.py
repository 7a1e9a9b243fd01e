"""The events a rule step reports (KOs, respawns, game ends), as codes and as `Event`s.

`rules.rule_step` returns its events as a (B, 5) tensor of codes, made without a branch on
the data so that the step can run from a trace or a CUDA graph; `events_from_codes` turns
them into each game's `Event`s, reading the tensor once and the details only for a game that
has one.
"""

from __future__ import annotations

from torch import Tensor

from core import game_state as gs
from core.events import Event, winner
from model.rule_state import RuleState

ZONES = ("left", "right", "bottom", "top")  # the blast zones, in the order of RuleState.blast

# Columns of the event codes `rule_step` returns, one row per game: a respawn of each player
# (1 or 0), a KO of each player (1 + its zone's index in ZONES, or 0), the game's end (0, or
# END_BY_STOCKS / END_BY_TIME).
RESPAWN_CODES, KO_CODES, END_CODE = (0, 1), (2, 3), 4
END_BY_STOCKS, END_BY_TIME = 1, 2


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
