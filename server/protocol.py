"""The wire protocol between the game server and its clients (docs/PROTOCOL.md).

Every message is one msgpack map in one binary websocket message, with a `type` key. The
pydantic models below are the definition; `encode` and `decode` turn them into bytes and back.
This module imports neither torch nor FastAPI, so the pygame client and scripts can use it.

Client to server: `hello` (first message), `input`, `control` (pause / resume / reset), `ping`.
Server to client: `welcome` (answer to hello), `frame` (every tick), `status` (pause, resume,
reset, game over), `pong`, `error`, `bye` (the server is closing the connection).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from core import controller as core_controller
from core.controller import BUTTON_NAMES

PROTOCOL_VERSION = 1
MAX_CLIENT_MESSAGE_BYTES = 4096  # the largest client message is an input with 8 copies, ~1 KB
# An input carries the controllers of up to this many frames before its own, as netplay clients
# send theirs (Slippi resends its unacknowledged inputs with each packet): a frame whose own
# input was late, lost or never sent (the client's input clock skipped it) is filled in from
# the next message. 8 frames cover the server's rollback window (7 by default) and one more.
REDUNDANT_INPUTS = 8
# An error answering a bad message names at most this many of its problems, and quotes at most
# QUOTE_CHARS of any key or type it names: the answer to a 4 KB message stays a few hundred
# bytes instead of echoing it (echoing made an 11 KB answer to a 4 KB message, issue 21).
MAX_ERROR_PROBLEMS = 3
QUOTE_CHARS = 40
PORTS = (1, 2)

# The buttons by name, as `core.controller` defines them: a name outside them is refused here,
# with the list of names in the error.
Button = Literal[BUTTON_NAMES]

# RFC 6455 close codes the server uses.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutting down, or the session was deleted
CLOSE_PROTOCOL_ERROR = 1002  # no hello, wrong protocol version
CLOSE_UNSUPPORTED_DATA = 1003  # a text message where binary msgpack was expected
CLOSE_POLICY_VIOLATION = 1008  # bad or missing token, unknown session, message flood, too slow
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # IANA-registered: the server is at a limit (spectators)


def _in_range(field: str):
    """A float field checked against the core controller's range for `field`."""
    low, high = core_controller.RANGES[field]
    return Annotated[float, Field(ge=low, le=high)]


Unit, Trigger = _in_range("stick_x"), _in_range("trigger_l")  # -1..1 and 0..1, as core says
# An int field, not Literal[1, 2]: a Literal compares by value, so it would take true and 1.0.
Port = Annotated[int, Field(ge=1, le=2)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictMessage(Message):
    """Client messages are validated strictly: each field takes only its own type (an int
    where a float is expected, nothing else), never a string or a bool that would convert."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---------------------------------------------------------------------- client -> server
class Hello(StrictMessage):
    type: Literal["hello"] = "hello"
    version: int = PROTOCOL_VERSION
    role: Literal["player", "spectator"] = "player"
    client: str = Field(default="", max_length=64)  # a name for the logs


class Controller(StrictMessage):
    """One controller's state on the wire: sticks in -1..1, analog triggers in 0..1, buttons by
    name. The fields are `core.controller.Controller`'s; this message checks them as the wire
    must (strictly, each problem named in the error) and converts to and from it."""

    stick_x: Unit = 0.0
    stick_y: Unit = 0.0
    cstick_x: Unit = 0.0
    cstick_y: Unit = 0.0
    trigger_l: Trigger = 0.0
    trigger_r: Trigger = 0.0
    buttons: list[Button] = Field(default_factory=list, max_length=len(BUTTON_NAMES))

    @classmethod
    def of(cls, controller: core_controller.Controller) -> Controller:
        return cls(**_fields(controller))

    def to_controller(self) -> core_controller.Controller:
        return core_controller.Controller(
            self.stick_x,
            self.stick_y,
            self.cstick_x,
            self.cstick_y,
            self.trigger_l,
            self.trigger_r,
            frozenset(self.buttons),
        )


def _fields(controller: core_controller.Controller) -> dict[str, Any]:
    """A controller's fields as the wire message takes them (the buttons sorted, so the same
    controller always makes the same bytes)."""
    return {
        "stick_x": controller.stick_x,
        "stick_y": controller.stick_y,
        "cstick_x": controller.cstick_x,
        "cstick_y": controller.cstick_y,
        "trigger_l": controller.trigger_l,
        "trigger_r": controller.trigger_r,
        "buttons": sorted(controller.buttons),
    }


class Input(Controller):
    """One port's controller for frame `frame` (the client stamps current frame + delay), and
    the controllers it sent for the frames before: `previous[i]` is frame `frame - 1 - i`'s,
    newest first (none: a protocol-1 client that sends each input once)."""

    type: Literal["input"] = "input"
    frame: int
    port: Port
    previous: list[Controller] = Field(default_factory=list, max_length=REDUNDANT_INPUTS)

    @classmethod
    def stamped(
        cls,
        controller: core_controller.Controller,
        frame: int,
        port: int,
        previous: list[Controller] = (),
    ) -> Input:
        """`controller` as the input for `frame`; `previous`: the controllers sent for the
        frames before it, newest first."""
        return cls(frame=frame, port=port, previous=list(previous), **_fields(controller))

    def controllers(self) -> list[tuple[int, Controller]]:
        """(frame, controller) of the redundant copies, oldest first."""
        return [(self.frame - 1 - i, c) for i, c in reversed(list(enumerate(self.previous)))]


class Control(StrictMessage):
    type: Literal["control"] = "control"
    action: Literal["pause", "resume", "reset"]


class Ping(StrictMessage):
    type: Literal["ping"] = "ping"
    t: float  # the client's clock; echoed back in the pong


ClientMessage = Annotated[Hello | Input | Control | Ping, Field(discriminator="type")]


# ---------------------------------------------------------------------- server -> client
class Welcome(Message):
    type: Literal["welcome"] = "welcome"
    version: int = PROTOCOL_VERSION
    session_id: str
    role: Literal["player", "spectator"]
    ports: list[int]  # the ports this connection drives (empty for spectators)
    stage: int
    stage_name: str
    characters: list[int]  # internal ids, p1 then p2
    character_names: list[str]
    input_delay: int  # frames
    tick_rate: float
    frame: int  # the last frame stepped; the next frame is frame + 1
    timer_frames: int  # the game ends by time at this frame id
    status: str


class Player(Message):
    port: int
    character: int
    x: float
    y: float
    percent: float
    shield: float
    stocks: int
    facing: int  # 1 right, -1 left
    action: int
    action_name: str
    category: str  # idle, movement, aerial, ..., dead (assets/actions.json)
    state_age: float
    airborne: bool
    jumps: int
    hitlag: float
    hitstun: float
    invulnerable: bool
    # the controller that produced this frame
    stick_x: float
    stick_y: float
    buttons: int


class Projectile(Message):
    slot: int
    type: int
    x: float
    y: float
    owner: int


class GameEvent(BaseModel):
    """ko (player, zone), respawn (player), game_end (player = winner or None, method)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["ko", "respawn", "game_end"]
    frame: int
    player: int | None = None


class Frame(Message):
    type: Literal["frame"] = "frame"
    frame: int
    players: list[Player]
    projectiles: list[Projectile] = Field(default_factory=list)
    events: list[GameEvent] = Field(default_factory=list)
    substituted: list[int] = Field(default_factory=list)  # ports whose input did not arrive
    corrected: bool = False  # a rollback re-made this frame: it replaces the one shown before


class Status(Message):
    type: Literal["status"] = "status"
    status: Literal["waiting", "running", "paused", "over"]
    frame: int
    reason: str = ""


class Pong(Message):
    type: Literal["pong"] = "pong"
    t: float
    server_frame: int


class Error(Message):
    type: Literal["error"] = "error"
    code: str
    message: str


class Bye(Message):
    type: Literal["bye"] = "bye"
    reason: str


ServerMessage = Annotated[
    Welcome | Frame | Status | Pong | Error | Bye, Field(discriminator="type")
]

_client_adapter: TypeAdapter = TypeAdapter(ClientMessage)
_server_adapter: TypeAdapter = TypeAdapter(ServerMessage)


class ProtocolError(ValueError):
    """A message that cannot be accepted: `code` is machine-readable, the text says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def encode(message: Message | dict[str, Any]) -> bytes:
    """A message (a model, or a dict already in wire form) as msgpack bytes. An input leaves
    out the fields at their defaults, which the receiver fills in: a neutral controller's copy
    is `{}`, so an input with 8 copies is ~300 bytes instead of ~1,100 and decodes twice as
    fast (the server decodes 60 a second per port)."""
    if isinstance(message, Input):
        message = {"type": message.type, **message.model_dump(mode="python", exclude_defaults=True)}
    elif isinstance(message, BaseModel):
        message = message.model_dump(mode="python")
    return msgpack.packb(message, use_bin_type=True)


def _unpack(data: bytes, limit: int | None) -> dict:
    if limit is not None and len(data) > limit:
        raise ProtocolError("too_big", f"message of {len(data)} bytes; the limit is {limit}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        detail = (str(e) or type(e).__name__)[:QUOTE_CHARS]
        raise ProtocolError("bad_message", f"not valid msgpack: {detail}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ProtocolError("bad_message", "a message must be a msgpack map with a 'type' key")
    return raw


def _quote(text: str) -> str:
    """A client's key or type as an error quotes it: repr, cut to QUOTE_CHARS."""
    quoted = repr(text)
    return quoted if len(quoted) <= QUOTE_CHARS else quoted[: QUOTE_CHARS - 3] + "..."


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(p) for p in error["loc"][1:]) or "message"
    if len(where) > QUOTE_CHARS:  # an unknown key is part of the location
        where = where[: QUOTE_CHARS - 3] + "..."
    return f"{where}: {error['msg']}"


def _validate(adapter: TypeAdapter, raw: dict, known: tuple[str, ...]):
    if raw["type"] not in known:
        raise ProtocolError(
            "unknown_type", f"unknown message type {_quote(raw['type'])}; expected one of {known}"
        )
    try:
        return adapter.validate_python(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        problems = "; ".join(_problem(err) for err in errors[:MAX_ERROR_PROBLEMS])
        if len(errors) > MAX_ERROR_PROBLEMS:
            problems += f"; and {len(errors) - MAX_ERROR_PROBLEMS} more"
        raise ProtocolError("invalid", f"invalid {raw['type']} message: {problems}") from None


CLIENT_TYPES = ("hello", "input", "control", "ping")
SERVER_TYPES = ("welcome", "frame", "status", "pong", "error", "bye")


def decode_client(data: bytes) -> Hello | Input | Control | Ping:
    """A client's message, validated; raises ProtocolError saying what is wrong."""
    return _validate(_client_adapter, _unpack(data, MAX_CLIENT_MESSAGE_BYTES), CLIENT_TYPES)


def decode_server(data: bytes) -> Welcome | Frame | Status | Pong | Error | Bye:
    """A server's message, validated (for clients and tests)."""
    return _validate(_server_adapter, _unpack(data, None), SERVER_TYPES)
