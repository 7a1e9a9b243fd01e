"""Make `assets/characters.json`, the client's character sizes and hitboxes, from libmelee.

    pip download melee==0.47.6 --no-deps -d /tmp/melee
    python assets/make_characters.py --wheel /tmp/melee/melee-0.47.6-py3-none-any.whl

(or `--dir` a folder holding libmelee's CSV files, or no option with the `melee` package
installed). libmelee (PyPI `melee`, LGPL-3.0) ships two tables recorded from the game:

- `melee/characterdata.csv`: per character, `size` (Fox 11, Marth 14, Jigglypuff 9, Bowser 16
  world units), the radius of the one round hurtbox libmelee's `FrameData.in_range` gives a
  character. The client draws it as the standing height, which fits the frame data: Fox's
  jab hitboxes sit 6-9 units up his 11, Jigglypuff's 4.8 up her 9, and a character hanging
  from a ledge has its feet 1-2 sizes below it (Fox 14-18, Marth 24-27 on the dev replays);
- `melee/framedata.csv`: per (internal character id, action id, action frame) up to four
  hitboxes, each active or not, with its radius and its offset from the character's position
  (x forward when facing right, y up from the feet). libmelee counts an action's frames from
  1 (`console.py` shifts the actions that the game counts from 0, `actiondata.csv`).

Only what the client draws is kept: each character's size, and the active hitboxes (radius,
x, y; rounded to 0.1 unit) of each action frame that has one. The project does not depend on
libmelee; this script is how the numbers got here, and how to refresh them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import zipfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
OUT = ASSETS / "characters.json"
SOURCE = "libmelee 0.47.6 (PyPI melee, LGPL-3.0): melee/characterdata.csv, melee/framedata.csv"

# characterdata.csv's names -> the internal character names of assets/melee_ids.json
NAMES = {
    "Cptfalcon": "CAPTAIN_FALCON",
    "Jigs": "JIGGLYPUFF",
    "Doc": "DR_MARIO",
    "Ylink": "YOUNG_LINK",
    "DK": "DONKEY_KONG",
    "GNW": "GAME_AND_WATCH",
    "Mewto": "MEWTWO",
}
HITBOXES = 4
DECIMALS = 1


def read_tables(wheel: Path | None, folder: Path | None) -> tuple[str, str]:
    """The text of characterdata.csv and framedata.csv."""
    names = ("characterdata.csv", "framedata.csv")
    if wheel is not None:
        with zipfile.ZipFile(wheel) as archive:
            return tuple(archive.read(f"melee/{n}").decode("utf-8") for n in names)
    if folder is None:
        try:
            import melee  # the installed package, if any
        except ImportError:
            sys.exit("no --wheel or --dir given and the `melee` package is not installed")
        folder = Path(melee.__file__).parent
    return tuple((folder / n).read_text(encoding="utf-8") for n in names)


def characters(text: str) -> dict[str, dict]:
    """Internal id -> name and size, from characterdata.csv."""
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = NAMES.get(row["Character"], row["Character"].upper())
        out[str(int(row["CharacterIndex"]))] = {"name": name, "size": float(row["size"])}
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def hitboxes(text: str) -> dict[str, dict[str, dict[str, list]]]:
    """character -> action -> frame -> [[radius, x, y], ...] for the active hitboxes."""
    out: dict[str, dict[str, dict[str, list]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        active = []
        for i in range(1, HITBOXES + 1):
            if row[f"hitbox_{i}_status"] == "True":
                values = (row[f"hitbox_{i}_{k}"] for k in ("size", "x", "y"))
                active.append([round(float(v), DECIMALS) for v in values])
        if active:
            actions = out.setdefault(str(int(row["character"])), {})
            actions.setdefault(str(int(row["action"])), {})[str(int(row["frame"]))] = active
    return out


def build(wheel: Path | None = None, folder: Path | None = None) -> dict:
    character_text, frame_text = read_tables(wheel, folder)
    return {
        "_about": (
            "Character sizes and active hitboxes for drawing, made by assets/make_characters.py. "
            "characters: internal id -> name and size (libmelee's character size, world "
            "units; drawn as the standing height). hitboxes: internal character id -> Melee "
            "action-state id -> action frame (1 = the action's first frame) -> [radius, x, y] "
            "per active hitbox, offsets from the character's position with x forward when "
            "facing right and y up."
        ),
        "source": SOURCE,
        "characters": characters(character_text),
        "hitboxes": hitboxes(frame_text),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--wheel", type=Path, help="a downloaded melee-*.whl")
    group.add_argument("--dir", type=Path, help="a folder holding libmelee's CSV files")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = build(args.wheel, args.dir)
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    frames = sum(len(a) for c in data["hitboxes"].values() for a in c.values())
    print(f"{len(data['characters'])} characters, {frames} frames with hitboxes -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
