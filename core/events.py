"""Game events: a KO, a respawn, the end of a game.

The live rules (`model/rules.py`) announce an `Event` when they make one happen; a recorded
game (a Slippi replay, a trajectory) shows the same events in its columns, and
`recorded_events` reads them from there, so that a replay viewer announces what the rules
would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.actions import ON_HALO_DESCENT


@dataclass
class Event:
    type: str  # "ko", "respawn" or "game_end"
    frame: int
    player: int | None = None  # 0 = p1, 1 = p2
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"type": self.type, "frame": self.frame, "player": self.player, **self.detail}


def winner(stocks: Sequence[int], percents: Sequence[float]) -> int | None:
    """The player (0 or 1) who wins a game that ends with these stocks and percents: more
    stocks, else less damage (the tournament rule for a game that times out; Melee itself
    would play sudden death); None for a true tie."""
    if stocks[0] != stocks[1]:
        return 0 if stocks[0] > stocks[1] else 1
    if percents[0] != percents[1]:
        return 0 if percents[0] < percents[1] else 1
    return None


def recorded_events(
    frame_ids: np.ndarray,
    stocks: Sequence[np.ndarray],
    actions: Sequence[np.ndarray],
    percents: Sequence[np.ndarray],
) -> list[list[Event]]:
    """The events on each row of a recorded game of two players (per-player columns over
    rows): a KO where a player's stocks drop, a respawn where one enters the revival
    platform's descent, and the game's end on the last row."""
    n = len(frame_ids)
    events: list[list[Event]] = [[] for _ in range(n)]
    for player, (stock, action) in enumerate(zip(stocks, actions, strict=True)):
        stock, action = np.asarray(stock).astype(np.int64), np.asarray(action)
        for row in np.flatnonzero(stock[1:] < stock[:-1]) + 1:
            events[row].append(Event("ko", int(frame_ids[row]), player))
        entered = (action[1:] == ON_HALO_DESCENT) & (action[:-1] != ON_HALO_DESCENT)
        for row in np.flatnonzero(entered) + 1:
            events[row].append(Event("respawn", int(frame_ids[row]), player))
    if n:
        last = [int(s[-1]) for s in stocks], [float(p[-1]) for p in percents]
        events[-1].append(Event("game_end", int(frame_ids[-1]), winner(*last)))
    return events
