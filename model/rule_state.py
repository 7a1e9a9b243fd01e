"""What the rules keep of each game between frames, and how they read a frame's players.

`RuleState` holds, for a batch of games, the rules' own state (stocks, invulnerability, the
KO and revival-platform countdowns, whether the game is over) and the stage's geometry as
tensors (blast zones, the main stage's floor, its platforms, the respawn and start points),
so that every rule runs as batched tensor ops (`model/rules.py`, `model/stage_collision.py`).
`Players` is the view every rule reads and writes a frame's player fields through: (B, 2)
tensors, one column per player, so one op serves both players.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core import game_state as gs
from core.stages import Stage

DEFAULT_TIMER_FRAMES = 8 * 60 * 60  # 8:00, the default versus timer, at 60 frames per second


@dataclass
class RuleState:
    """Per-game rule state for a batch: (B, 2) per player, (B,) per game."""

    stocks: Tensor  # (B, 2) long
    invulnerable: Tensor  # (B, 2) long, frames of respawn invulnerability left
    over: Tensor  # (B,) bool
    timer_frames: Tensor  # (B,) long, the frame at which time runs out
    blast: Tensor  # (B, 4) float: left, right, bottom, top
    respawn: Tensor  # (B, 2, 2) float: per player x, y
    # (B, 5) float: half-width of the main stage's flat part, its surface y, half-width of
    # the whole main stage (to its edges, past the slopes of Yoshi's Story and Fountain), and
    # 1.0 where the main stage and `platforms` are every surface to stand on above the main
    # stage's height (not on Fountain of Dreams or Pokemon Stadium), else 0.0, and 1.0 where
    # nothing is past its edges below its height either (not on Yoshi's Story), else 0.0
    floor: Tensor
    halo: Tensor  # (B, 2) long: frames left on the revival platform (0: not on it)
    dead: Tensor  # (B, 2) long: frames left in the KO animation
    descent: Tensor  # (B, 2) long: frames left of the revival platform's descent
    dead_at: Tensor  # (B, 2, 3) float: where a KO'd player is held, x, y, DEAD_* action
    respawn_top: Tensor  # (B,) float: y where the revival platform's descent starts
    start: Tensor  # (B, 2, 2) float: per player y, ground id where the entry leaves them
    # (straight below the spawn point: x stays the spawn's)
    platforms: Tensor  # (B, MAX_PLATFORMS, 3) float: left x, right x, y (unused rows: far away)
    # (B, 2) long: DASHING frames in a row, facing one way, with the stick held forward (the
    # held-dash rule, `model.action_ends.run_after_held_dash`; 0 when not dashing so)
    dash_held: Tensor

    @staticmethod
    def new(
        stage: Stage,
        stocks: tuple[int, int],
        timer_frames: int = DEFAULT_TIMER_FRAMES,
        device: torch.device | str = "cpu",
        on_main_stage: bool = False,
    ) -> RuleState:
        """One game's rule state, on the device its frames live on; `on_main_stage`: the
        entry leaves the players on the main stage rather than at the stage's start points
        (`game_start.GameSetup.on_main_stage`)."""
        blast = [stage.blast_left, stage.blast_right, stage.blast_bottom, stage.blast_top]
        starts = stage.starts[:2]
        if on_main_stage:
            starts = [(x, stage.main.y, stage.main_ground) for x, _, _ in starts]
        long, f32 = (
            {"dtype": torch.long, "device": device},
            {"dtype": torch.float32, "device": device},
        )
        return RuleState(
            stocks=torch.tensor([stocks], **long),
            invulnerable=torch.zeros(1, 2, **long),
            over=torch.zeros(1, dtype=torch.bool, device=device),
            timer_frames=torch.tensor([timer_frames], **long),
            blast=torch.tensor([blast], **f32),
            respawn=torch.tensor([list(stage.respawns[:2])], **f32),
            floor=torch.tensor(
                [
                    [
                        stage.main_flat_x,
                        stage.main.y,
                        stage.main.right_x,
                        stage.surfaces_known,
                        stage.clear_below_edges,
                    ]
                ],
                **f32,
            ),
            halo=torch.zeros(1, 2, **long),
            dead=torch.zeros(1, 2, **long),
            descent=torch.zeros(1, 2, **long),
            dead_at=torch.zeros(1, 2, 3, **f32),
            respawn_top=torch.tensor([stage.respawn_top_y], **f32),
            start=torch.tensor([[(y, ground) for _, y, ground in starts]], **f32),
            platforms=torch.tensor([_platform_rows(stage)], **f32),
            dash_held=torch.zeros(1, 2, **long),
        )

    def tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @staticmethod
    def from_tensors(tensors: dict[str, Tensor]) -> RuleState:
        return RuleState(**tensors)


MAX_PLATFORMS = 3  # Battlefield's three; the other legal stages list fewer


def _platform_rows(stage: Stage) -> list[list[float]]:
    rows = [[p.left_x, p.right_x, p.y] for p in stage.platforms[:MAX_PLATFORMS]]
    return rows + [[1e9, 1e9, 1e9]] * (MAX_PLATFORMS - len(rows))


class Players:
    """A frame's player fields as (B, 2) tensors, stacked over the players on first read and
    written back as per-player columns by `write_back`. The rules then make one op for both
    players where they made one for each: the live trace's cost is its count of ops."""

    def __init__(self, frame: dict[str, Tensor]):
        self.frame, self.fields, self.changed = frame, {}, set()

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.fields:
            self.fields[name] = torch.stack([self.frame[f"{p}_{name}"] for p in gs.PLAYERS], -1)
        return self.fields[name]

    def __setitem__(self, name: str, value: Tensor) -> None:
        self.fields[name] = value
        self.changed.add(name)

    def write_back(self) -> None:
        for name in self.changed:
            for index, p in enumerate(gs.PLAYERS):
                self.frame[f"{p}_{name}"] = self.fields[name][:, index]
        self.changed.clear()
