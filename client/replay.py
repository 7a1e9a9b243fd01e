"""Recorded games as a stream of protocol `Frame`s, so the renderer that draws the model's
predictions also plays back real Melee (`.slp`) and recorded trajectories (parquet).

A parquet file is one game in the dataset schema (docs/DATA.md: `frame`, `stage`,
`p1_<field>`, `p2_<field>`, `item_<field>` lists), as `playmodel parse` and `playmodel match`
write it. A `.slp` is read with peppi-py directly (the dataset's reader lives in `training/`,
which the client does not import). KO, respawn and game-end events are derived from the
stocks and actions, as the server's rules would announce them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from client import assets
from server.protocol import Frame, GameEvent, Player, Projectile

# Columns read for each player: dataset name -> peppi path below the player's leader.
PLAYER_COLUMNS = {
    "x": "post.position.x",
    "y": "post.position.y",
    "action": "post.state",
    "state_age": "post.state_age",
    "percent": "post.percent",
    "shield": "post.shield",
    "stocks": "post.stocks",
    "facing": "post.direction",
    "airborne": "post.airborne",
    "jumps": "post.jumps",
    "hurtbox_state": "post.hurtbox_state",
    "hitlag": "post.hitlag",
    "character": "post.character",
    "joystick_x": "pre.joystick.x",
    "joystick_y": "pre.joystick.y",
    "buttons": "pre.buttons",
}
ITEM_COLUMNS = {
    "slot": None,
    "type": "type",
    "x": "position.x",
    "y": "position.y",
    "owner": "owner",
}
ON_HALO_DESCENT = 12  # revival platform (assets/actions.json)
DEFAULT_TIMER_FRAMES = 8 * 60 * 60  # Melee's versus default, 8:00 (the dataset keeps no timer)
HITSTUN_FLAG_BYTE, HITSTUN_FLAG_BIT = 3, 0x02  # post.state_flags, as model/game_state.py


@dataclass
class Recording:
    """One game, column by column: `players[i][name]` is a numpy array over frames."""

    source: str
    stage: int
    frame_ids: np.ndarray
    players: list[dict[str, np.ndarray]]
    items: list[list[tuple[int, int, float, float, int]]]  # per frame: (slot, type, x, y, owner)
    timer_frames: int = DEFAULT_TIMER_FRAMES  # the clock runs out at this frame

    def __len__(self) -> int:
        return len(self.frame_ids)

    @property
    def characters(self) -> list[int]:
        return [int(p["character"][0]) for p in self.players]

    def __post_init__(self) -> None:
        for p in self.players:
            p["state_age"] = count_state_age(p["action"], p["state_age"])

    def frame(self, i: int) -> Frame:
        """Row i as the server would send it, with the events that happen on it."""
        players = []
        for index, p in enumerate(self.players):
            action = int(p["action"][i])
            players.append(
                Player(
                    port=index + 1,
                    character=int(p["character"][i]),
                    x=float(p["x"][i]),
                    y=float(p["y"][i]),
                    percent=float(p["percent"][i]),
                    shield=float(p["shield"][i]),
                    stocks=int(p["stocks"][i]),
                    facing=1 if p["facing"][i] >= 0 else -1,
                    action=action,
                    action_name=assets.action_name(action),
                    category=assets.action_category(action),
                    state_age=float(p["state_age"][i]),
                    airborne=bool(p["airborne"][i]),
                    jumps=int(p["jumps"][i]),
                    hitlag=float(p["hitlag"][i]),
                    hitstun=float(p["hitstun"][i]),
                    invulnerable=int(p["hurtbox_state"][i]) != 0,
                    stick_x=float(p["joystick_x"][i]),
                    stick_y=float(p["joystick_y"][i]),
                    buttons=int(p["buttons"][i]),
                )
            )
        projectiles = [
            Projectile(slot=s, type=t, x=x, y=y, owner=o) for s, t, x, y, o in self.items[i]
        ]
        return Frame(
            frame=int(self.frame_ids[i]),
            players=players,
            projectiles=projectiles,
            events=self.events(i),
        )

    def events(self, i: int) -> list[GameEvent]:
        """ko when a player's stocks drop, respawn when one enters the revival platform, and
        game_end on the last frame; `player` is the player index (0 = p1) as the server sends."""
        frame = int(self.frame_ids[i])
        out = []
        for index, p in enumerate(self.players):
            if i > 0 and p["stocks"][i] < p["stocks"][i - 1]:
                out.append(GameEvent(type="ko", frame=frame, player=index))
            if i > 0 and p["action"][i] == ON_HALO_DESCENT != p["action"][i - 1]:
                out.append(GameEvent(type="respawn", frame=frame, player=index))
        if i == len(self) - 1:
            stocks = [int(p["stocks"][i]) for p in self.players]
            winner = None if stocks[0] == stocks[1] else int(np.argmax(stocks))
            out.append(GameEvent(type="game_end", frame=frame, player=winner))
        return out


def count_state_age(action: np.ndarray, recorded: np.ndarray) -> np.ndarray:
    """Frames since each action began, 0 on its first frame, as the server's rules count it
    (model/frame_spec.py's count_state_age; the client may not import it) and as the wire's
    `state_age` means: Slippi records the animation's frame instead (1 on the first frame of
    most actions, paused in hitlag). The first action counts on from the recorded value."""
    n = len(action)
    if n == 0:
        return np.asarray(recorded, dtype=np.float32)
    position = np.arange(n)
    change = np.ones(n, dtype=bool)
    change[1:] = action[1:] != action[:-1]
    run_start = np.maximum.accumulate(np.where(change, position, 0))
    age = (position - run_start).astype(np.float32)
    age[run_start == 0] += np.float32(recorded[0])
    return age


def load(path: str | Path) -> Recording:
    """A `.slp` replay or a parquet trajectory; ValueError naming the file if it is neither."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".slp":
        return _load_slp(path)
    if path.suffix == ".parquet":
        return _load_parquet(path)
    raise ValueError(f"{path}: expected a Slippi replay (.slp) or a parquet trajectory (.parquet)")


def _load_parquet(path: Path) -> Recording:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable parquet file: {e}") from None
    names = set(table.column_names)
    needed = {"frame", "stage"} | {f"p1_{c}" for c in ("x", "y", "action", "stocks")}
    if not needed <= names:
        raise ValueError(f"{path}: not a trajectory in the dataset schema (lacks {needed - names})")
    n = table.num_rows
    players = []
    for player in ("p1", "p2"):
        columns = {}
        for name in [*PLAYER_COLUMNS, "hitstun"]:
            column = f"{player}_{name}"
            columns[name] = (
                table.column(column).to_numpy() if column in names else np.zeros(n, np.float32)
            )
        players.append(columns)
    items: list[list] = [[] for _ in range(n)]
    if "item_slot" in names:
        lists = {k: table.column(f"item_{k}").to_pylist() for k in ITEM_COLUMNS}
        for i in range(n):
            items[i] = list(zip(*(lists[k][i] for k in ITEM_COLUMNS), strict=True))
    return Recording(
        source=str(path),
        stage=int(table.column("stage")[0].as_py()),
        frame_ids=table.column("frame").to_numpy(),
        players=players,
        items=items,
    )


def _field(struct: pa.Array, path: str) -> pa.Array | None:
    array = struct
    for part in path.split("."):
        if array.type.get_field_index(part) < 0:
            return None
        array = array.field(part)
    return array


def _load_slp(path: Path) -> Recording:
    from peppi_py._peppi import read_slippi  # the low-level reader keeps the items

    try:
        game = read_slippi(str(path), False)
    except Exception as e:  # noqa: BLE001 - peppi raises OSError, ValueError or pyo3 panics
        raise ValueError(f"{path}: not a readable Slippi replay: {e}") from None
    start = game.start
    ports = sorted(p["port"] for p in start["players"])
    if len(ports) != 2:
        raise ValueError(f"{path}: a game of {len(ports)} players; the client shows two")
    frames = game.frames
    ids = frames.field("id").to_numpy()
    # Netplay replays repeat frames the game rolled back; the last copy of each id counted.
    _, last_in_reversed = np.unique(ids[::-1], return_index=True)
    keep = len(ids) - 1 - last_in_reversed
    players = []
    for port in ports:
        leader = frames.field("ports").field(port).field("leader")
        columns = {}
        for name, source in PLAYER_COLUMNS.items():
            array = _field(leader, source)
            values = np.zeros(len(ids)) if array is None else array.to_numpy(zero_copy_only=False)
            columns[name] = values[keep]
        misc, flags = _field(leader, "post.misc_as"), _field(leader, "post.state_flags.3")
        if misc is not None and flags is not None:
            in_hitstun = (flags.to_numpy(zero_copy_only=False) & HITSTUN_FLAG_BIT) != 0
            columns["hitstun"] = np.where(in_hitstun, misc.to_numpy(zero_copy_only=False), 0)[keep]
        else:
            columns["hitstun"] = np.zeros(len(keep))
        players.append(columns)
    items: list[list] = [[] for _ in keep]
    if frames.type.get_field_index("item") >= 0:
        owner_of = {int(port[1:]) - 1: index + 1 for index, port in enumerate(ports)}
        per_frame = frames.field("item").take(pa.array(keep)).to_pylist()
        for i, frame_items in enumerate(per_frame):
            for slot, item in enumerate(frame_items or []):
                items[i].append(
                    (
                        slot,
                        int(item["type"]),
                        float(item["position"]["x"]),
                        float(item["position"]["y"]),
                        owner_of.get(item.get("owner"), 0) - 1,
                    )
                )
    timer = start.get("timer")  # seconds, from the game's rules
    return Recording(
        source=str(path),
        stage=int(start["stage"]),
        frame_ids=ids[keep],
        players=players,
        items=items,
        timer_frames=int(timer) * 60 if timer else DEFAULT_TIMER_FRAMES,
    )
