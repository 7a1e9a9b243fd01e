"""Frames as the wire protocol sends them: a batch of simulated frames to `frame` messages.

The tick loop converts the whole batch to Python lists once (`batch_columns`) and then builds
each session's message from its row, so the per-session cost is a few dict lookups and one
msgpack call, not a tensor operation per field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch

from model import game_state as gs
from model.actions import action_category, action_name
from model.packed_frame import PackedFrame
from model.rules import Event

PLAYER_WIRE_FIELDS = (
    "character",
    "x",
    "y",
    "percent",
    "shield",
    "stocks",
    "facing",
    "action",
    "state_age",
    "airborne",
    "jumps",
    "hitlag",
    "hitstun",
    "hurtbox_state",
    "joystick_x",
    "joystick_y",
    "buttons",
)
ITEM_WIRE_FIELDS = ("exists", "type", "x", "y", "owner")
WIRE_COLUMNS = (
    "frame",
    *(f"{p}_{name}" for p in gs.PLAYERS for name in PLAYER_WIRE_FIELDS),
    *(f"item_{name}" for name in ITEM_WIRE_FIELDS),
)


def batch_columns(frames: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, list]:
    """The fields the wire needs, as Python lists (one row per game, or per frame), from
    tensors or numpy arrays (a packed frame: a group of fields at a time)."""
    if isinstance(frames, PackedFrame):
        return frames.lists(WIRE_COLUMNS)
    return {key: frames[key].tolist() for key in WIRE_COLUMNS}


@lru_cache(maxsize=4096)
def _action_labels(action: int) -> tuple[str, str]:
    return action_name(action), action_category(action)


def frame_message(
    columns: Mapping[str, Sequence],
    row: int,
    events: Sequence[Event] = (),
    substituted: Sequence[int] = (),
) -> dict:
    """Row `row` of `columns` as a `frame` message in wire form (see server.protocol.Frame)."""
    players = []
    for port, p in enumerate(gs.PLAYERS, start=1):

        def get(name: str, p=p):
            return columns[f"{p}_{name}"][row]

        action = int(get("action"))
        name, category = _action_labels(action)
        players.append(
            {
                "port": port,
                "character": int(get("character")),
                "x": float(get("x")),
                "y": float(get("y")),
                "percent": float(get("percent")),
                "shield": float(get("shield")),
                "stocks": int(get("stocks")),
                "facing": 1 if get("facing") >= 0 else -1,
                "action": action,
                "action_name": name,
                "category": category,
                "state_age": float(get("state_age")),
                "airborne": bool(get("airborne")),
                "jumps": int(get("jumps")),
                "hitlag": float(get("hitlag")),
                "hitstun": float(get("hitstun")),
                "invulnerable": int(get("hurtbox_state")) != 0,
                "stick_x": float(get("joystick_x")),
                "stick_y": float(get("joystick_y")),
                "buttons": int(get("buttons")),
            }
        )
    projectiles = []
    exists = columns["item_exists"][row]
    for slot, present in enumerate(exists):
        if present:
            projectiles.append(
                {
                    "slot": slot,
                    "type": int(columns["item_type"][row][slot]),
                    "x": float(columns["item_x"][row][slot]),
                    "y": float(columns["item_y"][row][slot]),
                    "owner": int(columns["item_owner"][row][slot]),
                }
            )
    return {
        "type": "frame",
        "frame": int(columns["frame"][row]),
        "players": players,
        "projectiles": projectiles,
        "events": [event.to_dict() for event in events],
        "substituted": list(substituted),
    }
