"""What the client draws by: stage geometry, action and character names (from `core`, which
reads `assets/*.json` for every package), and the characters' sizes and hitboxes, which only
the client uses (`assets/characters.json`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from core import melee_ids, stages
from core.actions import action_category, action_name
from core.melee_ids import playable_characters
from core.stages import Stage

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

__all__ = [
    "Stage",
    "action_category",
    "action_name",
    "character_name",
    "character_size",
    "hitboxes",
    "legal_stages",
    "playable_characters",
    "resolve_character",
    "resolve_stage",
    "stage",
    "stage_name",
]


@functools.cache
def _load(name: str) -> dict:
    path = ASSETS_DIR / name
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"cannot read {path}: {e}") from e


def stage(stage_id: int) -> Stage:
    """One legal stage's geometry; KeyError (with the legal ids) for any other stage."""
    return stages.get_stage(stage_id)


def legal_stages() -> list[int]:
    """The legal stages in menu order (FD, Battlefield, ...)."""
    return melee_ids.legal_stage_menu()


stage_name = melee_ids.stage_name
character_name = melee_ids.character_name_internal  # internal (in-game) ids, as in post-frames


def resolve_stage(value: str | int) -> int:
    """A legal stage's id from an id, a name ('battlefield', 'final destination') or a short
    name ('fd', 'bf', 'dl', 'ys', 'fod', 'ps')."""
    return stages.parse_stage(value)


def resolve_character(value: str | int) -> int:
    """An internal character id from an id or a name ('fox', 'captain falcon')."""
    return melee_ids.parse_character(value)


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
