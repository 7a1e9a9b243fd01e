"""The one match runner: policy-vs-policy games stepped together in one `Simulation`, one
batched model call per frame. `playmodel match` (server/match.py) runs it flat out until its
games end; the REST service (server/match_service.py) runs it a slice at a time, between the
live ticks.

A frame of every match is made like this: the module policies are asked first, each on its own
thread (`policy_modules.ask_policies`), then every policy's answer is taken by one shared
deadline `POLICY_WAIT_S` later (a late one plays its previous answer); the batch is stepped;
the frame made is copied out of it once (`column_groups.BatchCopy`) and each match appends its row
to its `FrameLog` (about 1 KB a frame). A match that ends (its game is over, its frame limit
is reached, or its policy failed) leaves the batch at once, with the others ending in the same
frame.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from core import game_state as gs
from core.events import Event
from model.frames import Frames
from model.policies import FrameView, Policy
from model.simulation import Simulation
from model.snapshots import Snapshot
from server.column_groups import BatchCopy
from server.frame_log import FrameLog
from server.policy_modules import (
    POLICY_WAIT_S,
    ask_policies,
    frozen,
    has_module_policy,
    policy_columns,
    policy_failure,
)


@dataclass
class MatchResult:
    frames: Frames  # (T, ...) every frame, the start frame first
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def summary(self) -> dict:
        last = {k: v[-1] for k, v in self.frames.items()}
        end = next((e for e in self.events if e.type == "game_end"), None)
        return {
            "winner": None if end is None else end.player,
            "end": None if end is None else end.detail["method"],
            "stocks": [int(last[f"{p}_stocks"]) for p in gs.PLAYERS],
            "percents": [round(float(last[f"{p}_percent"]), 1) for p in gs.PLAYERS],
            "kos": [sum(e.type == "ko" and e.player == i for e in self.events) for i in (0, 1)],
            "frames": len(self.frames["frame"]) - 1,
            "frames_per_second": round((len(self.frames["frame"]) - 1) / max(self.seconds, 1e-9)),
        }


@dataclass(kw_only=True)
class Match:
    """One game in a `MatchRunner`: its two policies, its frame limit, and what it has played
    so far. `game_id` and `log` are set while it is in the runner's batch."""

    policies: tuple[Policy, Policy]
    max_frames: int
    game_id: int | None = None
    frames_played: int = 0
    events: list[Event] = field(default_factory=list)
    log: FrameLog | None = None  # its frames, the start frame first
    started: float = 0.0  # time.perf_counter() when it joined the batch
    failure: str | None = None  # why its policy failed, if that ended it

    @property
    def players(self) -> list[tuple[Policy, int]]:
        return list(zip(self.policies, (0, 1), strict=False))

    def outcome(self) -> MatchResult:
        """Its frames, events and the time it has taken so far."""
        return MatchResult(self.log.frames(), self.events, time.perf_counter() - self.started)


class MatchRunner:
    """Steps the matches it holds, all in one batch of `sim`."""

    def __init__(self, sim: Simulation):
        self.sim = sim
        self.playing: list[Match] = []

    def join(self, matches: Sequence[Match], starts: Sequence[Snapshot]) -> None:
        """Matches into the batch from their start states, in one join (each join copies the
        batch)."""
        game_ids = self.sim.add_from_snapshots(list(starts))
        self.follow(matches, game_ids)

    def follow(self, matches: Sequence[Match], game_ids: Sequence[int]) -> None:
        """Matches played by games already in the batch; each match's log gets its first
        frame."""
        copy = BatchCopy(self.sim.batch_frame)
        for match, game_id in zip(matches, game_ids, strict=True):
            match.game_id, match.started = game_id, time.perf_counter()
            match.log = FrameLog(match.max_frames + 1)
            match.log.append(copy.row(self.sim.game_ids.index(game_id)))
            self.playing.append(match)

    def step(self) -> list[Match]:
        """One frame of every match; returns the ones that ended with it, out of the batch
        (`failure` set on those whose policy failed: only they end)."""
        playing = self.playing
        controls = self._controls(playing)
        results = self.sim.step(controls)
        copy = BatchCopy(self.sim.batch_frame)  # the frame made, one copy for every match
        ended: list[Match] = []
        for match in playing:
            result = results[match.game_id]
            match.frames_played += 1
            match.events += result.events
            match.log.append(copy.row(result.row))
            match.failure = policy_failure(match.policies)
            if match.failure is not None or result.over or match.frames_played >= match.max_frames:
                ended.append(match)
        if ended:
            # They leave the batch in one selection of the rows that stay (each removal copies).
            self.sim.remove_games([match.game_id for match in ended])
            for match in ended:
                match.game_id = None
            self.playing = [match for match in playing if match.game_id is not None]
        return ended

    def _controls(self, playing: list[Match]) -> dict[int, dict]:
        """Every match's controller columns: module policies are all asked first, then every
        answer is taken by one deadline."""
        batch = self.sim.batch_frame
        if any(has_module_policy(match.policies) for match in playing):
            batch = frozen(batch)  # read by the module policies' threads
        rows = {game_id: row for row, game_id in enumerate(self.sim.game_ids)}
        views = [FrameView(batch, rows[match.game_id]) for match in playing]
        for match, view in zip(playing, views, strict=True):
            ask_policies(match.players, view)
        due = time.perf_counter() + POLICY_WAIT_S
        return {
            match.game_id: policy_columns(match.players, view, due)
            for match, view in zip(playing, views, strict=True)
        }
