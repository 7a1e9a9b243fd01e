"""Stage geometry, action names and character names, read from `assets/*.json`.

The client reads the same JSON files as `model/` (which it must not import, since `model`
is the torch side of the project): `stages.json` for blast zones and platforms,
`actions.json` for action names and categories, `melee_ids.json` for stage and character ids.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@functools.cache
def _load(name: str) -> dict:
    path = ASSETS_DIR / name
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"cannot read {path}: {e}") from e


@dataclass(frozen=True)
class Platform:
    left: float
    right: float
    y: float


@dataclass(frozen=True)
class StageGeometry:
    id: int  # Slippi's external stage id
    name: str  # e.g. BATTLEFIELD
    display_name: str  # e.g. Battlefield
    blast_left: float
    blast_right: float
    blast_top: float
    blast_bottom: float
    main: Platform
    platforms: tuple[Platform, ...]  # side and top platforms (moving ones are not listed)


@functools.cache
def stage(stage_id: int) -> StageGeometry:
    """One legal stage's geometry; KeyError (with the legal ids) for any other stage."""
    stages = _load("stages.json")["stages"]
    entry = stages.get(str(stage_id))
    if entry is None:
        raise KeyError(f"no geometry for stage {stage_id}; the legal stages are {legal_stages()}")
    blast, main = entry["blast_zones"], entry["main_platform"]
    return StageGeometry(
        id=stage_id,
        name=entry["name"],
        display_name=entry.get("display_name", entry["name"].title()),
        blast_left=blast["left"],
        blast_right=blast["right"],
        blast_top=blast["top"],
        blast_bottom=blast["bottom"],
        main=Platform(main["left_x"], main["right_x"], main["y"]),
        platforms=tuple(Platform(p["left_x"], p["right_x"], p["y"]) for p in entry["platforms"]),
    )


def legal_stages() -> list[int]:
    return list(_load("melee_ids.json")["legal_stages"])


def stage_name(stage_id: int) -> str:
    return _load("melee_ids.json")["stages"].get(str(stage_id), f"STAGE_{stage_id}")


def character_name(internal_id: int) -> str:
    """Name of an internal (in-game) character id, as in the replays' post-frames."""
    names = _load("melee_ids.json")["characters_internal"]
    return names.get(str(internal_id), f"CHARACTER_{internal_id}")


def playable_characters() -> list[tuple[int, str]]:
    """(internal id, name) of the 26 characters one can pick, in internal id order."""
    names = _load("melee_ids.json")["characters_internal"]
    excluded = {"NANA", "MASTER_HAND", "CRAZY_HAND", "WIREFRAME_MALE", "WIREFRAME_FEMALE"}
    excluded |= {"GIGA_BOWSER", "SANDBAG"}
    return [(int(k), v) for k, v in names.items() if v not in excluded]


# Short names players use for the legal stages.
STAGE_ALIASES = {
    "fd": "FINAL_DESTINATION",
    "bf": "BATTLEFIELD",
    "dl": "DREAM_LAND_N64",
    "dreamland": "DREAM_LAND_N64",
    "ys": "YOSHIS_STORY",
    "yoshis": "YOSHIS_STORY",
    "fod": "FOUNTAIN_OF_DREAMS",
    "ps": "POKEMON_STADIUM",
    "stadium": "POKEMON_STADIUM",
}


def resolve_stage(value: str | int) -> int:
    """A stage id from an id, a name ('battlefield', 'final destination') or a short name
    ('fd', 'bf', 'dl', 'ys', 'fod', 'ps')."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    text = str(value).strip()
    key = STAGE_ALIASES.get(text.lower(), text.upper().replace(" ", "_").replace("'", ""))
    for sid, name in _load("melee_ids.json")["stages"].items():
        if name == key:
            return int(sid)
    names = [stage_name(s).lower() for s in legal_stages()]
    raise ValueError(f"unknown stage {value!r}; the legal stages are {', '.join(names)}")


def resolve_character(value: str | int) -> int:
    """An internal character id from an id or a name ('fox', 'captain falcon')."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    key = str(value).strip().upper().replace(" ", "_").replace("&", "AND")
    for cid, name in playable_characters():
        if name == key:
            return cid
    raise ValueError(f"unknown character {value!r}")


@functools.cache
def _actions() -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    data = _load("actions.json")
    common = {int(k): (v["name"], v["category"]) for k, v in data["common"].items()}
    specific = {int(k): v for k, v in data["character_specific_names"].items()}
    return common, specific


def action_name(action_id: int) -> str:
    """As model/actions.py names it: libmelee's name, or SPECIAL_<id> for unnamed ids."""
    common, specific = _actions()
    if action_id in common:
        return common[action_id][0]
    return specific.get(action_id, f"SPECIAL_{action_id}")


def action_category(action_id: int) -> str:
    entry = _actions()[0].get(action_id)
    return entry[1] if entry else "special"


# Characters' sizes and hitboxes: assets/characters.json, made from libmelee's tables by
# assets/make_characters.py.
DEFAULT_SIZE = 11.0  # a character the table lacks (Master Hand, Sandbag, ...) is Fox-sized


def character_size(internal_id: int) -> float:
    """The character's height in world units (libmelee's `size`: Fox 11, Marth 14)."""
    entry = _load("characters.json")["characters"].get(str(internal_id))
    return float(entry["size"]) if entry else DEFAULT_SIZE


@functools.cache
def _hitbox_table(internal_id: int) -> dict[int, dict[int, tuple[tuple[float, float, float], ...]]]:
    actions = _load("characters.json")["hitboxes"].get(str(internal_id), {})
    return {
        int(action): {int(f): tuple(tuple(h) for h in boxes) for f, boxes in frames.items()}
        for action, frames in actions.items()
    }


def hitboxes(
    internal_id: int, action: int, action_frame: int
) -> tuple[tuple[float, float, float], ...]:
    """The active hitboxes of a character's action on its `action_frame`-th frame (1 = the
    action's first): (radius, x, y) each, offsets from the character's position with x
    forward when facing right and y up, as libmelee's framedata.csv recorded them. Empty
    where the table has none (most actions, and frames between hits)."""
    return _hitbox_table(internal_id).get(action, {}).get(action_frame, ())
