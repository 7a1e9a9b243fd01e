"""The REST API's request bodies, and how they become a game's start: stage, characters,
policies, and (optionally) a real replay to take over from."""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from core import game_state as gs
from core.melee_ids import parse_character
from core.replay_reader import ReplayUnreadable
from core.stages import get_stage, parse_stage
from model.frames import Frames, read_replay_frames
from model.game_start import GameSetup
from model.policies import Policy, make_policy
from server.policy_modules import load_module_policy
from server.settings import ServerSettings

StageSpec = str | int
CharacterSpec = str | int
# What torch.Generator.manual_seed takes: any 64-bit integer, signed or not.
SEED_RANGE = (-(2**63), 2**64 - 1)
ERROR_DETAIL_CHARS = 300  # a parser's message is quoted up to this length


class BadRequest(ValueError):
    """A request that names something unusable; the text says which field and why."""


class StartSpec(BaseModel):
    """Take over a real game at `frame` (a row of the replay, 0 = its first frame): a replay
    from the server's replay folder by file name, or one uploaded as base64 in `data`."""

    model_config = ConfigDict(extra="forbid")
    replay: str | None = Field(None, description="file name in the server's replay folder")
    data: str | None = Field(None, description="a .slp or parquet file, base64-encoded")
    format: Literal["slp", "parquet"] = "slp"
    frame: int = Field(0, ge=0)


class GameRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: StageSpec = "battlefield"
    characters: Annotated[list[CharacterSpec], Field(min_length=2, max_length=2)] = [
        "FOX",
        "FALCO",
    ]
    start: StartSpec | None = None
    seed: int = 0


class SessionRequest(GameRequest):
    input_delay: int | None = Field(None, ge=0, le=30, description="frames; default: server's")
    policies: dict[Literal["1", "2"], str] = Field(
        default_factory=dict,
        description="ports played by a scripted policy, e.g. {'2': 'approach'}",
    )


class MatchRequest(GameRequest):
    p1: str = "approach"
    p2: str = "random"
    max_frames: int | None = Field(None, ge=1, description="default: the server's maximum")


def game_setup(request: GameRequest) -> GameSetup:
    try:
        stage = parse_stage(str(request.stage))
    except ValueError as e:
        raise BadRequest(f"stage: {e}") from None
    characters = []
    for index, spec in enumerate(request.characters):
        try:
            characters.append(parse_character(str(spec)))
        except ValueError as e:
            raise BadRequest(f"characters[{index}]: {e}") from None
    if not SEED_RANGE[0] <= request.seed <= SEED_RANGE[1]:
        raise BadRequest(f"seed: {request.seed} does not fit in 64 bits (-2^63 to 2^64 - 1)")
    return GameSetup(stage=stage, characters=(characters[0], characters[1]), seed=request.seed)


def replay_start(start: StartSpec | None, settings: ServerSettings) -> Frames | None:
    """The frames of the replay a game starts from, or None for a standard start."""
    if start is None:
        return None
    if (start.replay is None) == (start.data is None):
        raise BadRequest("start: give exactly one of 'replay' (a file name) or 'data' (upload)")
    if start.replay is not None:
        name = start.replay
        if "\x00" in name:  # the OS cannot take it; pathlib raises ValueError
            raise BadRequest(f"start.replay: {name!r} has a NUL byte; give a file name")
        folder = settings.replay_dir.resolve()
        try:
            path = (folder / name).resolve()
            is_file = path.is_file()
        except OSError as e:  # a name too long for the file system, ...
            raise BadRequest(
                f"start.replay: {name[:100]!r} is not a usable file name ({e.strerror})"
            ) from None
        if path.parent != folder and folder not in path.parents:
            raise BadRequest(f"start.replay: {name!r} is outside the server's replay folder")
        if not is_file:
            available = sorted(p.name for p in folder.glob("*") if p.suffix in (".slp", ".parquet"))
            raise BadRequest(
                f"start.replay: no file {name!r} in the replay folder; has {available}"
            )
        frames = _read(path, f"start.replay {name!r}")
    else:
        try:
            raw = base64.b64decode(start.data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("start.data: not valid base64") from None
        if len(raw) > settings.max_upload_bytes:
            raise BadRequest(
                f"start.data: {len(raw):,} bytes; the limit is {settings.max_upload_bytes:,}"
            )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"upload.{start.format}"
            path.write_bytes(raw)
            frames = _read(path, "start.data")
    total = len(frames["frame"])
    if start.frame >= total:
        raise BadRequest(f"start.frame: {start.frame} is past the replay's end ({total} frames)")
    _check_ids(frames, start.frame, "start.replay" if start.replay is not None else "start.data")
    return frames


def _read(path: Path, what: str) -> Frames:
    try:
        return read_replay_frames(path)
    except gs.SchemaMismatch as e:
        raise BadRequest(f"{what}: {e}") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - peppi's PanicException derives from BaseException
        # Any other failure of the parser is the file's fault too. replay_reader wraps the
        # parser's panic in a ReplayUnreadable: the panic is what the client is told.
        cause = e.__cause__ if isinstance(e, ReplayUnreadable) and e.__cause__ else e
        kind = type(cause).__name__
        if kind == "PanicException":
            kind = "the replay parser panicked"
        detail = (str(cause).strip() or type(cause).__name__)[:ERROR_DETAIL_CHARS]
        raise BadRequest(f"{what}: cannot be read as a replay ({kind}: {detail})") from None


def _check_ids(frames: Frames, row: int, what: str) -> None:
    """Only real characters and a legal stage: the model clamps ids it has no embedding for,
    and would play such a game as some other character rather than fail."""
    for player in gs.PLAYERS:
        ids = frames[f"{player}_character"]
        bad = ids[(ids < 0) | (ids >= gs.CHARACTER_VOCAB)]
        if len(bad):
            raise BadRequest(
                f"{what}: {player}_character {int(bad[0])} is not a character id (internal ids "
                f"are 0 to {gs.CHARACTER_VOCAB - 1})"
            )
    try:
        get_stage(int(frames["stage"][row]))
    except KeyError as e:
        raise BadRequest(f"{what}: {e.args[0]}") from None


def policy(spec: str, field: str, settings: ServerSettings) -> Policy:
    if spec.startswith("replay:"):
        raise BadRequest(f"{field}: replay-following policies are for `playmodel match` only")
    builtin = spec.split(":", 1)[0] in ("noop", "random", "hold", "approach")
    if not builtin and not settings.allow_policy_modules:
        raise BadRequest(
            f"{field}: policies from Python paths ({spec!r}) are disabled on this server "
            "(set PLAYMODEL_ALLOW_POLICY_MODULES=1 to allow them)"
        )
    try:
        if builtin:
            return make_policy(spec)
        # Checked against the allow-list before anything is imported (server/policy_modules.py).
        return load_module_policy(
            spec,
            settings.allowed_policy_packages(),
            settings.policy_folder,
            settings.policy_time_limit_ms,
        )
    except (ValueError, ImportError, AttributeError, TypeError) as e:
        raise BadRequest(f"{field}: {e}") from None
