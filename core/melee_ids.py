"""Melee's id maps (stages, characters), loaded from `assets/melee_ids.json`.

Slippi stores stages by their external id, characters by an external (character-select) id in
the game start block and by an internal (in-game) id in every post-frame; see the JSON's
`_about` for sources.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@functools.cache
def _ids() -> dict:
    with open(ASSETS_DIR / "melee_ids.json", encoding="utf-8") as f:
        return json.load(f)


def stage_name(stage_id: int) -> str:
    return _ids()["stages"].get(str(stage_id), f"UNKNOWN_STAGE_{stage_id}")


def legal_stages() -> frozenset[int]:
    """The six tournament-legal stages: FD, Battlefield, Dream Land, FoD, Stadium, Yoshi's."""
    return frozenset(_ids()["legal_stages"])


def legal_stage_menu() -> list[int]:
    """The legal stages in the order a stage menu lists them (the JSON's: FD, Battlefield,
    Dream Land, FoD, Stadium, Yoshi's)."""
    return list(_ids()["legal_stages"])


def character_name_external(character_id: int) -> str:
    return _ids()["characters_external"].get(str(character_id), f"UNKNOWN_{character_id}")


def character_name_internal(character_id: int) -> str:
    return _ids()["characters_internal"].get(str(character_id), f"UNKNOWN_{character_id}")


CHARACTER_VOCAB = 33  # internal ids 0..32 (core.game_state.CHARACTER_VOCAB)


# Internal ids no player can pick at the character select screen.
UNPICKABLE = frozenset(
    {"NANA", "MASTER_HAND", "CRAZY_HAND", "WIREFRAME_MALE", "WIREFRAME_FEMALE"}
    | {"GIGA_BOWSER", "SANDBAG"}
)


def playable_characters() -> list[tuple[int, str]]:
    """(internal id, name) of the 26 characters one can pick, in internal id order."""
    names = _ids()["characters_internal"]
    return [(int(k), v) for k, v in names.items() if v not in UNPICKABLE]


def parse_character(text: str | int) -> int:
    """A character name (FOX, captain falcon, game & watch) or in-game id -> the in-game
    (internal) id."""
    key = str(text).strip().upper().replace(" ", "_").replace("-", "_").replace("&", "AND")
    if key.isdigit() and int(key) < CHARACTER_VOCAB:
        return int(key)
    for internal_id in range(CHARACTER_VOCAB):
        if character_name_internal(internal_id) == key:
            return internal_id
    raise ValueError(f"unknown character {text!r}: use a name such as FOX or MARTH, or an id")
