"""Geometry of the six legal stages, loaded from `assets/stages.json`.

Pure Python and json: the game rules, the client's renderer and the tests all read the same
numbers. Coordinates are Melee world units, as in a Slippi post-frame (`p1_x`, `p1_y`).

Sources (each number in the JSON names its own): blast zones, ledges and platforms from
libmelee 0.47.6 `melee/stages.py` (via shared/reference/melee_facts.json); the main platform's
height, spawn and respawn points measured on the real replays in shared/replays; the points no
replay shows are derived, and the JSON says how. Things worth knowing:

- Spawn and respawn points are listed by player *slot*, not by port: in a game of two the
  player on the lower port spawns at slot 1 and the other at slot 2, whatever the ports (a
  P2-vs-P4 game on Yoshi's Story spawns at slots 1 and 2). `spawn_points_for` does this.
- Fountain of Dreams' side platforms move, so `platforms` leaves them out; Yoshi's Story's
  Randall cloud likewise. Pokemon Stadium is described in its neutral form.
- The main platform of Yoshi's Story slopes down near its ledges and Fountain of Dreams' rises
  slightly: `main.y` holds for `abs(x) < main_flat_x` only.
- Passing the top blast zone is not always a KO: in dev/peppi__tests__data__v2.0.slp
  (frames 8451-8485) a Jigglypuff in hitstun rises to y = 177.3 on Yoshi's Story (top 168) and
  lives. The left, right and bottom zones hold in every replay here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from core import melee_ids

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
PORTS = ("P1", "P2", "P3", "P4")


@dataclass(frozen=True)
class Platform:
    left_x: float
    right_x: float
    y: float  # height of the surface players stand on


@dataclass(frozen=True)
class Stage:
    id: int  # Slippi's external stage id (game start block)
    name: str  # e.g. BATTLEFIELD
    display_name: str  # e.g. Battlefield, as a menu shows it
    blast_left: float
    blast_right: float
    blast_top: float
    blast_bottom: float
    main: Platform  # edges at +-libmelee's EDGE_GROUND_POSITION (where a player teeters)
    platforms: tuple[Platform, ...]  # side and top platforms that do not move
    spawns: tuple[tuple[float, float], ...]  # (x, y) at frame -123, player slots 1..4
    respawns: tuple[tuple[float, float], ...]  # revival platform rest point, by player slot
    starts: tuple[tuple[float, float, int], ...]  # (x, y, ground id) after the entry, slots 1-2
    main_flat_x: float  # main.y holds for abs(x) < main_flat_x (Yoshi's and FoD are not flat)
    main_ground: int  # Slippi's ground id of the main platform's centre
    respawn_top_y: float  # y where ON_HALO_DESCENT starts; it lasts 60 frames down to respawns
    # The main platform and `platforms` are every surface above the main stage's height (not
    # where platforms move or the stage transforms: stages.json's `surfaces_move`)
    surfaces_known: bool = True
    # Nothing to stand on past the main stage's edges, below its height either (not on
    # Yoshi's Story, where Randall circles there: stages.json's `surfaces_below_edges`)
    clear_below_edges: bool = True

    def outside_blast_zone(self, x: float, y: float) -> str | None:
        """Which blast zone (x, y) lies beyond: "left", "right", "top", "bottom", or None.

        A point on a line is inside. Past a corner, the side zone is named first."""
        if x < self.blast_left:
            return "left"
        if x > self.blast_right:
            return "right"
        if y > self.blast_top:
            return "top"
        if y < self.blast_bottom:
            return "bottom"
        return None


@functools.cache
def _stages() -> dict[int, Stage]:
    path = ASSETS_DIR / "stages.json"
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {int(key): _stage(int(key), raw, path) for key, raw in data["stages"].items()}


def _stage(stage_id: int, raw: dict, path: Path) -> Stage:
    zones, main = raw["blast_zones"], raw["main_platform"]
    spawns = tuple((float(p["x"]), float(p["y"])) for p in raw["spawns"])
    respawns = tuple((float(p["x"]), float(p["y"])) for p in raw["respawns"])
    assert len(spawns) == 4, f"{path}: stage {stage_id} needs 4 spawn points, has {len(spawns)}"
    assert len(respawns) >= 2, f"{path}: stage {stage_id} needs >= 2 respawn points"
    return Stage(
        id=stage_id,
        name=raw["name"],
        display_name=raw.get("display_name", raw["name"].replace("_", " ").title()),
        blast_left=float(zones["left"]),
        blast_right=float(zones["right"]),
        blast_top=float(zones["top"]),
        blast_bottom=float(zones["bottom"]),
        main=Platform(float(main["left_x"]), float(main["right_x"]), float(main["y"])),
        platforms=tuple(
            Platform(float(p["left_x"]), float(p["right_x"]), float(p["y"]))
            for p in raw["platforms"]
        ),
        spawns=spawns,
        respawns=respawns,
        starts=tuple((float(p["x"]), float(p["y"]), int(p["ground"])) for p in raw["starts"]),
        main_flat_x=float(main["flat_half_width"]),
        main_ground=int(main["ground"]),
        respawn_top_y=float(raw["respawn_top_y"]["y"]),
        surfaces_known=not raw.get("surfaces_move", False),
        clear_below_edges=not raw.get("surfaces_below_edges", False),
    )


# Short names players use for the legal stages (and on the command line).
STAGE_ALIASES = {
    **{"fd": 32, "bf": 31, "dl": 28, "fod": 2, "ps": 3, "ys": 8, "stadium": 3},
    **{"yoshis": 8, "dreamland": 28, "fountain": 2, "pokemon": 3, "final": 32},
}


def parse_stage(text: str | int) -> int:
    """A legal stage's id from its id, its name (BATTLEFIELD, dream land, yoshi's story) or an
    alias (fd)."""
    key = str(text).strip().lower().replace("-", "_").replace(" ", "_").replace("'", "")
    if key in STAGE_ALIASES:
        return STAGE_ALIASES[key]
    for stage_id in legal_stage_ids():
        name = melee_ids.stage_name(stage_id).lower()
        if key in (str(stage_id), name, name.replace("_n64", "")):
            return stage_id
    names = ", ".join(melee_ids.stage_name(s) for s in legal_stage_ids())
    raise ValueError(
        f"unknown stage {text!r}: the legal stages are {names} (or their ids, or fd, bf, ...)"
    )


def legal_stage_ids() -> tuple[int, ...]:
    return tuple(sorted(_stages()))


def get_stage(stage_id: int) -> Stage:
    try:
        return _stages()[stage_id]
    except KeyError:
        raise KeyError(
            f"stage {stage_id} ({melee_ids.stage_name(stage_id)}) is not one of the legal "
            f"stages {legal_stage_ids()}; only those have geometry in assets/stages.json"
        ) from None


def spawn_points_for(
    stage_id: int, ports: tuple[str, ...] = ("P1", "P2")
) -> tuple[tuple[float, float], ...]:
    """Spawn point of each player in `ports` (in the order given), e.g. ("P2", "P4").

    Melee hands out spawn slots in port order among the players present, so the lower port
    always takes slot 1 (measured: P2-vs-P4 games on Dream Land and Yoshi's Story)."""
    unknown = [p for p in ports if p not in PORTS]
    if unknown or len(set(ports)) != len(ports) or not 1 <= len(ports) <= 4:
        raise ValueError(f"ports must be 1-4 distinct names from {PORTS}, got {ports}")
    stage = get_stage(stage_id)
    slot = {port: rank for rank, port in enumerate(sorted(ports, key=PORTS.index))}
    return tuple(stage.spawns[slot[port]] for port in ports)
