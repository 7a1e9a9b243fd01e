"""A frame as the wire protocol sends it (`server.protocol.Frame`), from the game-state
columns: one `frame_message` for the server's live frames and the client's recorded games.

`columns` maps dataset column names (`core.game_state`) to rows: tensors turned into lists by
`server.wire_frames.batch_columns`, or numpy arrays of a recorded game with its items dense
(`core.game_state.dense_items`). The wire renames a few fields for players: `hurtbox_state`
becomes `invulnerable`, `joystick_x`/`_y` become `stick_x`/`_y`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from core import game_state as gs
from core.actions import action_category, action_name
from core.events import Event

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
