"""The one definition of a Melee game frame: every field, once.

Each field says its name, its storage dtype, where it comes from in a Slippi replay (a path
into peppi-py's Arrow frame struct, relative to one player's leader, or to one item), how the
model normalises it, its vocabulary when it is categorical, and the Slippi version that
introduced it. Everything else is derived from this table, never re-listed by hand: the
parquet schema of the dataset (`arrow_schema`), and later the tensor layout and the wire
protocol.

Layout of a frame row in the dataset:

- `frame`, `stage`: one value per frame;
- `p1_<name>` and `p2_<name>` for every `PLAYER_FIELDS` and `CONTROLLER_FIELDS` entry. `p1` is
  the player on the lower port, `p2` the one on the higher port (the manifest keeps the
  real ports, e.g. P2 and P4);
- `item_<name>` for every `ITEM_FIELDS` entry: a list per frame with one value per live item
  (sparse: most frames have no items, and a sparse column costs nothing for them). `item_slot`
  says which of the `ITEM_SLOTS` fixed slots the item occupies; `dense_items` expands the
  lists into (frames, ITEM_SLOTS) arrays with an `exists` mask, which is what the model sees.

Sources: Slippi replay spec (project-slippi/slippi-wiki, SPEC.md) for field meanings and the
version each field appeared in; peppi-py 0.8.6 for the Arrow paths; libmelee for vocabularies.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Bump when a field is added, removed or changes meaning; stored in every parquet file and
# checkpoint so that mismatches are caught at load time.
SCHEMA_VERSION = 1

PLAYERS = ("p1", "p2")

# Projectiles and other items are kept in a fixed number of slots per frame (the design's
# 15). The real replays here never need more: at most 10 live items in a two-player versus
# frame (DK and Bowser's projectiles), 13 in an Adventure-mode frame.
ITEM_SLOTS = 15

# Action states are u16 in the replay. Ids 0..340 are shared by every character; above that
# they are character specific. The real replays in shared/replays reach id 535 (Kirby's
# copy abilities and Peach/G&W specials); we give the model 575 direct ids with headroom and
# fold anything larger into the last id, `ACTION_OTHER`.
ACTION_VOCAB = 576
ACTION_OTHER = ACTION_VOCAB - 1

# Ground ids index the stage's collision lines; the legal stages use ids below 128 and the
# replay writes 65535 while airborne. The model sees 0..126 directly and 127 for "none".
GROUND_VOCAB = 128
GROUND_NONE = 65535

# Item type ids (Melee's item table) stay below 256 for everything that appears in versus.
ITEM_TYPE_VOCAB = 256
LAST_ATTACK_VOCAB = 128  # attack ids (libmelee AttackState) are below 100
CHARACTER_VOCAB = 33  # internal (in-game) character ids 0..32
STAGE_VOCAB = 33  # external stage ids 0..32
JUMPS_VOCAB = 8  # jumps left; Jigglypuff and Kirby have the most (6)
COMBO_MAX = 255

# state_flags byte 3 (0-based), bit 0x02: the player is in hitstun (Slippi spec, post-frame
# 0x2E; checked on the dev replays: set on 98% of frames in damage actions 75-91, never
# elsewhere). While it is set, misc_as holds the hitstun frames left.
HITSTUN_FLAG_BYTE = 3
HITSTUN_FLAG_BIT = 0x02


class Kind(enum.Enum):
    """How the model treats a field (decides its encoder input and its head)."""

    CONTINUOUS = "continuous"  # float, normalised as (value - offset) / scale
    CATEGORICAL = "categorical"  # integer id in [0, vocab)
    BINARY = "binary"  # 0 or 1
    CONSTANT = "constant"  # fixed for the whole game (character, stage)
    CONTROLLER = "controller"  # external input, never predicted


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # numpy / Arrow type name of the stored column
    source: str | None  # peppi path below the player's leader (or the item); None if derived
    kind: Kind
    doc: str
    scale: float = 1.0
    offset: float = 0.0
    vocab: int | None = None
    default: float = 0.0  # value written where the replay predates the field
    since: tuple[int, int, int] = (0, 1, 0)  # Slippi version that introduced the source

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.from_numpy_dtype(self.dtype) if self.dtype != "bool" else pa.bool_()


def _f(name, dtype, source, kind, doc, **kw) -> Field:
    return Field(name=name, dtype=dtype, source=source, kind=kind, doc=doc, **kw)


C, K, B, CONST, CTRL = (
    Kind.CONTINUOUS,
    Kind.CATEGORICAL,
    Kind.BINARY,
    Kind.CONSTANT,
    Kind.CONTROLLER,
)

# Post-frame state of one player. Scales bring typical values to about unit size: positions
# span roughly +-250 world units, percents 0-300, shields 0-60, speeds a few units per frame.
PLAYER_FIELDS: tuple[Field, ...] = (
    _f("x", "float32", "post.position.x", C, "horizontal position, world units", scale=100.0),
    _f("y", "float32", "post.position.y", C, "vertical position, world units", scale=100.0),
    _f("action", "uint16", "post.state", K, "action state id", vocab=ACTION_VOCAB),
    _f(
        "state_age",
        "float32",
        "post.state_age",
        C,
        "frames spent in the current action (follows a rule, not a head)",
        scale=60.0,
        since=(0, 2, 0),
    ),
    _f("percent", "float32", "post.percent", C, "damage percent", scale=100.0),
    _f("shield", "float32", "post.shield", C, "shield strength, 60 when full", scale=60.0),
    _f("stocks", "uint8", "post.stocks", C, "stocks left", scale=4.0),
    _f("facing", "int8", "post.direction", B, "+1 facing right, -1 facing left"),
    _f(
        "airborne",
        "uint8",
        "post.airborne",
        B,
        "1 in the air, 0 on the ground (on_ground = 1 - airborne)",
        since=(2, 0, 0),
    ),
    _f(
        "jumps",
        "uint8",
        "post.jumps",
        K,
        "jumps left",
        vocab=JUMPS_VOCAB,
        since=(2, 0, 0),
    ),
    _f(
        "l_cancel",
        "uint8",
        "post.l_cancel",
        K,
        "0 none, 1 success, 2 failure",
        vocab=3,
        since=(2, 0, 0),
    ),
    _f(
        "hurtbox_state",
        "uint8",
        "post.hurtbox_state",
        K,
        "0 vulnerable, 1 invulnerable, 2 intangible",
        vocab=3,
        since=(2, 1, 0),
    ),
    _f(
        "ground",
        "uint16",
        "post.ground",
        K,
        "id of the ground line stood on; 65535 when airborne",
        vocab=GROUND_VOCAB,
        default=GROUND_NONE,
        since=(2, 0, 0),
    ),
    _f(
        "last_attack_landed",
        "uint8",
        "post.last_attack_landed",
        K,
        "id of the last attack that hit",
        vocab=LAST_ATTACK_VOCAB,
    ),
    _f("combo_count", "uint8", "post.combo_count", C, "combo counter", scale=10.0),
    _f("hitlag", "float32", "post.hitlag", C, "hitlag frames left", scale=10.0, since=(3, 8, 0)),
    _f(
        "hitstun",
        "float32",
        None,
        C,
        "hitstun frames left: post.misc_as while the hitstun flag is set, else 0",
        scale=30.0,
        since=(2, 0, 0),
    ),
    _f(
        "vel_self_x_air",
        "float32",
        "post.velocities.self_x_air",
        C,
        "self-induced air speed x",
        since=(3, 5, 0),
    ),
    _f(
        "vel_self_y",
        "float32",
        "post.velocities.self_y",
        C,
        "self-induced speed y",
        since=(3, 5, 0),
    ),
    _f(
        "vel_knockback_x",
        "float32",
        "post.velocities.knockback_x",
        C,
        "knockback speed x",
        scale=3.0,
        since=(3, 5, 0),
    ),
    _f(
        "vel_knockback_y",
        "float32",
        "post.velocities.knockback_y",
        C,
        "knockback speed y",
        scale=3.0,
        since=(3, 5, 0),
    ),
    _f(
        "vel_self_x_ground",
        "float32",
        "post.velocities.self_x_ground",
        C,
        "self-induced ground speed x",
        since=(3, 5, 0),
    ),
    _f(
        "character",
        "uint8",
        "post.character",
        CONST,
        "internal (in-game) character id",
        vocab=CHARACTER_VOCAB,
    ),
)

# Pre-frame controller state of one player: what the player pressed for this frame.
CONTROLLER_FIELDS: tuple[Field, ...] = (
    _f("joystick_x", "float32", "pre.joystick.x", CTRL, "main stick x, processed, -1..1"),
    _f("joystick_y", "float32", "pre.joystick.y", CTRL, "main stick y, processed, -1..1"),
    _f("cstick_x", "float32", "pre.cstick.x", CTRL, "c-stick x, processed, -1..1"),
    _f("cstick_y", "float32", "pre.cstick.y", CTRL, "c-stick y, processed, -1..1"),
    _f("trigger", "float32", "pre.triggers", CTRL, "analog trigger, processed, 0..1"),
    _f(
        "buttons",
        "uint32",
        "pre.buttons",
        CTRL,
        "processed button bitmask (A 0x100, B 0x200, X 0x400, Y 0x800, Z 0x10, R 0x20, "
        "L 0x40, Start 0x1000, d-pad 0x1-0x8, stick directions 0x10000-0x800000)",
    ),
    _f(
        "buttons_physical",
        "uint16",
        "pre.buttons_physical",
        CTRL,
        "physical button bitmask as read from the controller",
    ),
    _f("trigger_l", "float32", "pre.triggers_physical.l", CTRL, "physical L trigger, 0..1"),
    _f("trigger_r", "float32", "pre.triggers_physical.r", CTRL, "physical R trigger, 0..1"),
)

# One live item (projectile, thrown or held item). Slots are stable: an item keeps its slot from
# the frame it appears until the frame it disappears (assigned by spawn id).
ITEM_FIELDS: tuple[Field, ...] = (
    _f(
        "slot",
        "uint8",
        None,
        CONST,
        "slot 0..14, stable for the item's whole life (assigned by spawn id)",
        since=(3, 0, 0),
    ),
    _f(
        "type",
        "uint16",
        "type",
        K,
        "item type id",
        vocab=ITEM_TYPE_VOCAB,
        since=(3, 0, 0),
    ),
    _f("state", "uint8", "state", K, "item action state", vocab=16, since=(3, 0, 0)),
    _f("x", "float32", "position.x", C, "position x", scale=100.0, since=(3, 0, 0)),
    _f("y", "float32", "position.y", C, "position y", scale=100.0, since=(3, 0, 0)),
    _f("vel_x", "float32", "velocity.x", C, "velocity x", scale=3.0, since=(3, 0, 0)),
    _f("vel_y", "float32", "velocity.y", C, "velocity y", scale=3.0, since=(3, 0, 0)),
    _f(
        "owner",
        "int8",
        "owner",
        K,
        "owning player: 0 = p1, 1 = p2, -1 none (remapped from the replay's port index)",
        vocab=3,
        default=-1,
        since=(3, 6, 0),
    ),
    _f("timer", "float32", "timer", C, "item expiration timer", scale=100.0, since=(3, 0, 0)),
)

FRAME_FIELDS: tuple[Field, ...] = (
    _f("frame", "int32", "id", CONST, "Slippi frame id; -123 is the first, -39 the first playable"),
    _f("stage", "uint8", None, CONST, "external stage id", vocab=STAGE_VOCAB),
)


def player_column(player: str, field: Field) -> str:
    return f"{player}_{field.name}"


def item_column(field: Field) -> str:
    return f"item_{field.name}"


def arrow_schema(metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    """The parquet schema of one game, derived from the field tables above."""
    columns = [pa.field(f.name, f.arrow_type, nullable=False) for f in FRAME_FIELDS]
    for player in PLAYERS:
        for f in PLAYER_FIELDS + CONTROLLER_FIELDS:
            columns.append(pa.field(player_column(player, f), f.arrow_type, nullable=False))
    for f in ITEM_FIELDS:
        columns.append(pa.field(item_column(f), pa.list_(f.arrow_type), nullable=False))
    return pa.schema(columns, metadata=metadata)


class SchemaMismatch(ValueError):
    """A table that is not in `arrow_schema`; the message names the column."""


def check_table(table: pa.Table) -> None:
    """Raise SchemaMismatch naming the first column of `table` that `arrow_schema` does not
    allow: missing, of another type, or with nulls. Extra columns are allowed (nothing reads
    them). A column's type is what decides a frame's tensor dtypes, so a table from outside
    (an upload) is checked before its frames meet the ones made from the schema."""
    for expected in arrow_schema():
        name = expected.name
        index = table.schema.get_field_index(name)
        if index < 0:
            raise SchemaMismatch(f"column {name} is missing (game-state schema: {expected.type})")
        actual = table.schema.field(index).type
        if actual != expected.type:
            raise SchemaMismatch(
                f"column {name} has dtype {_type_name(actual)}; the game-state schema needs "
                f"{_type_name(expected.type)}"
            )
        column = table.column(index)
        nulls = column.null_count
        if pa.types.is_list(actual):
            nulls += sum(chunk.flatten().null_count for chunk in column.chunks)
        if nulls:
            raise SchemaMismatch(f"column {name} has {nulls} null values; every value is needed")


def _type_name(arrow_type: pa.DataType) -> str:
    """The numpy-style name of an Arrow type (float32, not Arrow's 'float'), as in FIELDS."""
    name = str(arrow_type)
    for arrow, numpy in (("halffloat", "float16"), ("float", "float32"), ("double", "float64")):
        name = re.sub(rf"\b{arrow}\b", numpy, name)
    return name


def missing_fields(version: tuple[int, int, int]) -> list[str]:
    """Columns whose source the given Slippi version does not record (filled with defaults).

    The trainer masks these columns for such games instead of learning the defaults.
    """
    missing = []
    for player in PLAYERS:
        for f in PLAYER_FIELDS + CONTROLLER_FIELDS:
            if tuple(version) < f.since:
                missing.append(player_column(player, f))
    missing += [item_column(f) for f in ITEM_FIELDS if tuple(version) < f.since]
    return missing


def dense_items(table: pa.Table) -> dict[str, np.ndarray]:
    """Expand the sparse item lists of a game into fixed slots.

    Returns `exists` (frames, ITEM_SLOTS) bool and, for every other item field, a
    (frames, ITEM_SLOTS) array holding the field's default where the slot is empty.
    """
    n = table.num_rows
    slot_lists = table.column("item_slot").combine_chunks()
    rows = pc.list_parent_indices(slot_lists).to_numpy()
    slots = pc.list_flatten(slot_lists).to_numpy().astype(np.int64)
    out = {"exists": np.zeros((n, ITEM_SLOTS), dtype=bool)}
    out["exists"][rows, slots] = True
    for f in ITEM_FIELDS:
        if f.name == "slot":
            continue
        dense = np.full((n, ITEM_SLOTS), f.default, dtype=f.dtype)
        values = pc.list_flatten(table.column(item_column(f)).combine_chunks())
        dense[rows, slots] = values.to_numpy(zero_copy_only=False)
        out[f.name] = dense
    return out
