"""Scripted policies: given the current frame and a player, return that player's controller.

The shape is the one Melee bots use (libmelee): a callable `policy(frame, player) -> Controller`
(`core.controller.Controller`) called once per frame. `frame` is a `FrameView` (read fields as
floats, `frame["p1_x"]`, or `frame.player(player, "x")`), `player` is 0 for p1 and 1 for p2.

Built in (`make_policy(spec)`):
- `noop`: nothing pressed;
- `random[:SEED]`: random sticks and buttons, a new choice every few frames, seeded;
- `hold:DIRECTION`: the main stick held left, right, up or down;
- `approach[:SEED]`: walks towards the opponent and attacks when close;
- `replay:PATH[:FRAME]` (built by the caller with `ReplayFollower`): a real game's inputs;
- `module:callable`: a user's policy from a Python path (a class is instantiated first).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable

from core import game_state as gs
from core.controller import BUTTON_BITS, Controller
from model.frames import Frames


class FrameView:
    """Read access to one game's frame as Python numbers, converting only what is read.

    `frame` is one game's frame, or a batch of frames with `row` naming the game."""

    def __init__(self, frame: Frames, row: int | None = None):
        self._frame = frame
        self._row = row

    def __getitem__(self, key: str) -> float:
        value = self._frame[key]
        return (value if self._row is None else value[self._row]).item()

    def player(self, player: int, name: str) -> float:
        return self[f"{gs.PLAYERS[player]}_{name}"]

    @property
    def frame(self) -> int:
        return int(self["frame"])


Policy = Callable[[FrameView, int], Controller]


def noop(frame: FrameView, player: int) -> Controller:
    return Controller()


DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, 1.0), "down": (0.0, -1.0)}


def hold(direction: str) -> Policy:
    if direction not in DIRECTIONS:
        raise ValueError(f"hold: unknown direction {direction!r} (one of {', '.join(DIRECTIONS)})")
    x, y = DIRECTIONS[direction]
    held = Controller(stick_x=x, stick_y=y)
    return lambda frame, player: held


class RandomPolicy:
    """Random sticks and buttons, held for a few frames at a time like a (bad) human."""

    HOLD_FRAMES = 6

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.current = Controller()
        self.left = 0

    def __call__(self, frame: FrameView, player: int) -> Controller:
        if self.left <= 0:
            rng = self.rng
            buttons = frozenset(b for b in ("A", "B", "X", "Z", "L") if rng.random() < 0.12)
            self.current = Controller(
                stick_x=rng.uniform(-1, 1),
                stick_y=rng.uniform(-1, 1),
                cstick_x=rng.choice((-1.0, 0.0, 0.0, 0.0, 1.0)),
                trigger_l=1.0 if "L" in buttons else 0.0,
                buttons=buttons,
            )
            self.left = rng.randint(1, self.HOLD_FRAMES)
        self.left -= 1
        return self.current


class ApproachAndAttack:
    """Walk towards the opponent; jab when close; jump when the opponent is well above."""

    REACH = 18.0  # world units: about a jab's range for a mid-sized character

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, frame: FrameView, player: int) -> Controller:
        dx = frame.player(1 - player, "x") - frame.player(player, "x")
        dy = frame.player(1 - player, "y") - frame.player(player, "y")
        if abs(dx) < self.REACH and abs(dy) < self.REACH:
            attack = self.rng.random() < 0.5
            return Controller(buttons=frozenset({"A"}) if attack else frozenset())
        buttons = frozenset({"X"}) if dy > 30 and self.rng.random() < 0.1 else frozenset()
        return Controller(stick_x=1.0 if dx > 0 else -1.0, buttons=buttons)


class ReplayFollower:
    """Plays back one player's recorded inputs from a real game, from row `start` on."""

    def __init__(self, frames: Frames, start: int = 0, player: int | None = None):
        self.frames = frames
        self.row = start
        self.player = player

    def __call__(self, frame: FrameView, player: int) -> Controller:
        source = gs.PLAYERS[self.player if self.player is not None else player]
        self.row = min(self.row + 1, len(self.frames["frame"]) - 1)

        def value(name):
            return self.frames[f"{source}_{name}"][self.row].item()

        bits = int(value("buttons"))
        return Controller(
            stick_x=value("joystick_x"),
            stick_y=value("joystick_y"),
            cstick_x=value("cstick_x"),
            cstick_y=value("cstick_y"),
            trigger_l=value("trigger_l"),
            trigger_r=value("trigger_r"),
            buttons=frozenset(n for n, bit in BUTTON_BITS.items() if bits & bit),
        )


def make_policy(spec: str) -> Policy:
    """A policy from its command-line spec (see the module docstring). `replay:` specs are
    built by the caller, which knows how to read replays."""
    name, _, argument = spec.partition(":")
    if name == "noop":
        return noop
    if name == "random":
        return RandomPolicy(int(argument or 0))
    if name == "approach":
        return ApproachAndAttack(int(argument or 0))
    if name == "hold":
        return hold(argument)
    if not argument:
        raise ValueError(
            f"unknown policy {spec!r}: use noop, random[:SEED], hold:DIRECTION, approach[:SEED], "
            "replay:PATH[:FRAME] or a Python path module:callable"
        )
    return load_policy(spec)


def load_policy(path: str) -> Policy:
    """`module:callable` -> the callable (a class is instantiated with no arguments)."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"policy {path!r}: cannot import module {module_name!r} ({e})") from e
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"policy {path!r}: module {module_name!r} has no {attribute!r}") from None
    if isinstance(target, type):
        target = target()
    if not callable(target):
        raise ValueError(f"policy {path!r} is not callable")
    return target


def controls_for(
    policies: tuple[Policy, Policy], frame: Frames, row: int | None = None
) -> dict[str, float | int]:
    """Both players' controller columns for one game from its two policies (`row`: the
    game's row when `frame` is a batch)."""
    view = FrameView(frame, row)
    columns: dict[str, float | int] = {}
    for player, policy in enumerate(policies):
        controller = policy(view, player)
        if not isinstance(controller, Controller):
            raise TypeError(f"policy for p{player + 1} returned {type(controller).__name__}")
        columns |= controller.columns(player)
    return columns
