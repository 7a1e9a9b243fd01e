"""Read one Slippi replay into a columnar table in the dataset schema (`core.game_state`).

peppi-py's low-level reader (`peppi_py._peppi.read_slippi`) returns the whole game as one Arrow
struct array, items included (its public `read_slippi` drops them). Everything here is
columnar: numpy over whole columns, and Python loops only over players, fields and distinct
items, never over frames.

Choices (documented for users in docs/DATA.md):
- Netplay replays repeat frame ids when the game rolled back; the last row of each id wins.
- Ice Climbers: only the leader (Popo) is kept; the follower (Nana) is dropped. Her presence is
  not modelled, so Ice Climbers games teach the leader's physics only.
- Fields that an older Slippi version did not record are filled with the field's default
  (`Field.default`) and listed in the manifest and the file metadata so the trainer can mask.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import game_state as gs
from core import melee_ids

VERSUS_SCENES = {2: "versus", 8: "online"}  # start.scene.major (recorded since Slippi 3.7)
# Other major scenes, named from the slippi-js game-mode test replays in shared/replays.
OTHER_SCENES = {
    3: "Classic",
    4: "Adventure",
    5: "All-Star",
    10: "Camera mode",
    16: "Super Sudden Death",
    17: "Invisible Melee",
    18: "Slo-Mo Melee",
    19: "Lightning Melee",
    28: "Training mode",
    29: "Tiny Melee",
    30: "Giant Melee",
    42: "Fixed-Camera mode",
    44: "Single-Button mode",
}


class ReplaySkipped(Exception):
    """The replay is valid but does not belong in the training dataset; str() says why."""


class ReplayUnreadable(ValueError):
    """The parser gave up on the file in a way Python code does not expect; str() says why."""


@dataclasses.dataclass
class ParsedReplay:
    table: pa.Table  # one row per unique frame, in `gs.arrow_schema()`
    info: dict  # manifest fields: version, stage, characters, ports, frames, ...
    timer_seconds: int | None = None  # the game's clock (start block), where it has one


def read_replay(path: str | Path, *, dataset_only: bool = True) -> ParsedReplay:
    """Parse `path`. Raises ReplaySkipped for games outside the dataset's scope (with
    `dataset_only=False`, as a viewer reads replays, only for games of other than two
    players), and for unreadable files what peppi raises (OSError, ValueError) or
    ReplayUnreadable."""
    from peppi_py._peppi import read_slippi  # imported here so workers load it lazily

    try:
        game = read_slippi(str(path), False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # pyo3's PanicException derives from BaseException alone
        if type(e).__name__ != "PanicException":
            raise
        # A Rust panic on a malformed or unsupported file (special game modes: see
        # shared/replays/fixtures/MANIFEST.tsv) is a bad input, not a crash: as a plain
        # exception, callers that catch Exception (a server checking an upload) catch it.
        raise ReplayUnreadable(f"the parser (peppi-py) panicked: {e}") from e
    start = game.start
    info = _game_info(start, game.end)
    _check_scope(start, info, dataset_only)

    frames = game.frames
    if frames is None or len(frames) == 0:
        raise ReplaySkipped("the replay has no frames")
    frame_ids = frames.field("id").to_numpy()
    info["frames_raw"] = len(frame_ids)
    keep = last_row_per_frame(frame_ids)
    rollbacks = len(keep) != len(frame_ids)
    if rollbacks:
        frame_ids = frame_ids[keep]
    else:
        keep = None  # every row is kept; skip the gathers
    info["frames"] = len(frame_ids)
    info["first_frame"] = int(frame_ids[0])
    info["last_frame"] = int(frame_ids[-1])

    ports = info["ports"]
    columns: dict[str, np.ndarray | pa.Array] = {
        "frame": frame_ids.astype(np.int32),
        "stage": np.full(len(frame_ids), start["stage"], dtype=np.uint8),
    }
    port_arrays = frames.field("ports")
    for player, port in zip(gs.PLAYERS, ports, strict=True):
        leader = port_arrays.field(port).field("leader")
        columns.update(_player_columns(player, leader, keep))
    info["characters_internal"] = [int(columns[f"{p}_character"][0]) for p in gs.PLAYERS]
    info["characters_internal_names"] = [
        melee_ids.character_name_internal(c) for c in info["characters_internal"]
    ]

    items = frames.field("item") if frames.type.get_field_index("item") >= 0 else None
    if items is not None and keep is not None:
        items = items.take(pa.array(keep))
    item_columns, info["items_dropped"] = _item_columns(items, len(frame_ids), ports)
    columns.update(item_columns)

    version = tuple(start["slippi"]["version"])
    info["missing_fields"] = gs.missing_fields(version)
    schema = gs.arrow_schema(
        metadata={
            b"schema_version": str(gs.SCHEMA_VERSION).encode(),
            b"replay_info": json.dumps(info).encode(),
        }
    )
    arrays = [_to_arrow(columns[field.name], field.type) for field in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    return ParsedReplay(table=table, info=info, timer_seconds=start.get("timer") or None)


def last_row_per_frame(frame_ids: np.ndarray) -> np.ndarray:
    """Row indices that keep the last occurrence of each frame id, in frame order.

    A rollback re-sends frames the game re-simulated; the last copy is the one that counted.
    """
    if len(frame_ids) < 2 or bool(np.all(frame_ids[1:] > frame_ids[:-1])):
        return np.arange(len(frame_ids))
    reversed_ids = frame_ids[::-1]
    _, first_in_reversed = np.unique(reversed_ids, return_index=True)  # sorted by frame id
    return len(frame_ids) - 1 - first_in_reversed


def _game_info(start: dict, end: dict | None) -> dict:
    players = sorted(start["players"], key=lambda p: p["port"])
    scene = start.get("scene")
    is_pal = start.get("is_pal")
    return {
        "slippi_version": ".".join(str(v) for v in start["slippi"]["version"]),
        "stage": start["stage"],
        "stage_name": melee_ids.stage_name(start["stage"]),
        "ports": [p["port"] for p in players],
        "player_types": [p["type"] for p in players],
        "characters_external": [p["character"] for p in players],
        "characters_external_names": [
            melee_ids.character_name_external(p["character"]) for p in players
        ],
        "is_teams": bool(start["is_teams"]),
        "scene": scene and scene["major"],
        "end_method": _end_method_name(end),
        "region": None if is_pal is None else ("PAL" if is_pal else "NTSC"),
    }


def _end_method_name(end: dict | None) -> str | None:
    if not end or end.get("method") is None:
        return None
    # peppi writes the enum in CamelCase ("NoContest"); the manifest uses UPPER_SNAKE.
    name = end["method"]
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


def _check_scope(start: dict, info: dict, dataset_only: bool) -> None:
    n_players = len(info["ports"])
    if n_players != 2:
        raise ReplaySkipped(f"not a two-player game ({n_players} players)")
    if not dataset_only:
        return
    scene = info["scene"]
    # Replays before Slippi 3.7 do not record the scene; they are kept (special modes in
    # them still fail the stage check, since those modes use their own stages).
    if scene is not None and scene not in VERSUS_SCENES:
        mode = OTHER_SCENES.get(scene, "an unknown mode")
        raise ReplaySkipped(f"not a versus or online game ({mode}, scene {scene})")
    if info["is_teams"]:
        raise ReplaySkipped("team game")
    if start["stage"] not in melee_ids.legal_stages():
        raise ReplaySkipped(
            f"stage {info['stage_name']} ({start['stage']}) is not one of the six legal stages"
        )


def _column(struct: pa.StructArray, path: str) -> pa.Array | None:
    """Follow a dotted path into nested struct arrays; None if this replay lacks it."""
    array = struct
    for part in path.split("."):
        if array.type.get_field_index(part) < 0:
            return None
        array = array.field(part)
    return array


def _numpy(array: pa.Array, field: gs.Field) -> np.ndarray:
    if array.null_count:
        array = pc.fill_null(array, pa.scalar(field.default).cast(array.type))
    return array.to_numpy(zero_copy_only=False)


def _player_columns(
    player: str, leader: pa.StructArray, keep: np.ndarray | None
) -> dict[str, np.ndarray]:
    """One numpy column per player and controller field; `keep` selects rows (rollbacks)."""
    n = len(leader) if keep is None else len(keep)
    out = {}
    for field in gs.PLAYER_FIELDS + gs.CONTROLLER_FIELDS:
        name = gs.player_column(player, field)
        if field.name == "hitstun":
            values = _hitstun(leader)
        elif (array := _column(leader, field.source)) is None:
            values = None
        elif field.name == "facing":
            values = np.where(_numpy(array, field) < 0, -1, 1)
        else:
            values = _numpy(array, field)
        if values is None:
            values = np.full(n, field.default)
        elif keep is not None:
            values = values[keep]
        out[name] = values.astype(field.dtype, copy=False)
    return out


def _hitstun(leader: pa.StructArray) -> np.ndarray | None:
    misc = _column(leader, "post.misc_as")
    flags = _column(leader, f"post.state_flags.{gs.HITSTUN_FLAG_BYTE}")
    if misc is None or flags is None:
        return None
    in_hitstun = (flags.to_numpy(zero_copy_only=False) & gs.HITSTUN_FLAG_BIT) != 0
    return np.where(in_hitstun, misc.to_numpy(zero_copy_only=False), 0.0)


def _item_columns(
    items: pa.ListArray | None, n_frames: int, ports: list[str]
) -> tuple[dict[str, pa.Array], int]:
    """Sparse item lists (one entry per live item per frame) with a stable slot for each item.

    Returns the columns and how many item-frames found no free slot (dropped)."""
    if items is None or len(items.values) == 0:  # no items, or a replay older than 3.0
        empty_offsets = pa.array(np.zeros(n_frames + 1, dtype=np.int32))
        return {
            gs.item_column(f): pa.ListArray.from_arrays(empty_offsets, pa.array([], f.arrow_type))
            for f in gs.ITEM_FIELDS
        }, 0
    rows = pc.list_parent_indices(items).to_numpy()
    flat = pc.list_flatten(items)
    slots = _assign_slots(rows, flat.field("id").to_numpy())
    # Keep items that found a slot, ordered by (frame, slot) so that each frame's list reads
    # in slot order.
    kept = np.flatnonzero(slots >= 0)
    kept = kept[np.lexsort((slots[kept], rows[kept]))]
    offsets = pa.array(np.searchsorted(rows[kept], np.arange(n_frames + 1)).astype(np.int32))

    out = {}
    for field in gs.ITEM_FIELDS:
        if field.name == "slot":
            values = slots[kept]
        elif (array := _column(flat, field.source)) is None:
            values = np.full(len(kept), field.default)
        else:
            values = _numpy(array, field)[kept]
            if field.name == "owner":
                values = _owner_to_player(values, ports)
        values = pa.array(values.astype(field.dtype, copy=False), type=field.arrow_type)
        out[gs.item_column(field)] = pa.ListArray.from_arrays(offsets, values)
    return out, int(len(slots) - len(kept))


def _assign_slots(rows: np.ndarray, spawn_ids: np.ndarray) -> np.ndarray:
    """Give each item (by spawn id) one slot for its whole life, lowest free slot first.

    An item occupies its slot from its first to its last frame. Items that find no free slot
    get -1. The loop runs once per distinct item, not per frame.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((rows, spawn_ids))
    sorted_ids = spawn_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = np.r_[starts[1:], len(order)] - 1
    first_row, last_row = rows[order[starts]], rows[order[ends]]

    slot_of_item = np.full(len(starts), -1, dtype=np.int64)
    busy_until = np.full(gs.ITEM_SLOTS, -1, dtype=np.int64)  # last frame row of the occupant
    for item in np.argsort(first_row, kind="stable"):
        free = np.flatnonzero(busy_until < first_row[item])
        if len(free):
            slot_of_item[item] = free[0]
            busy_until[free[0]] = last_row[item]

    item_index = np.empty(len(order), dtype=np.int64)
    item_index[order] = np.repeat(np.arange(len(starts)), ends - starts + 1)
    return slot_of_item[item_index]


def _owner_to_player(owner_port: np.ndarray, ports: list[str]) -> np.ndarray:
    """Replay owners are port indices (0 = P1); the dataset uses player indices (0 = p1)."""
    player = np.full(owner_port.shape, -1, dtype=np.int8)
    for index, port in enumerate(ports):
        player[owner_port == int(port[1:]) - 1] = index
    return player


def _to_arrow(values: np.ndarray | pa.Array, arrow_type: pa.DataType) -> pa.Array:
    if isinstance(values, pa.Array):
        return values
    return pa.array(values, type=arrow_type)
