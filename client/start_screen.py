"""The start screen of `playmodel play`: the stage, both characters and who plays port 2,
picked with the keyboard or a gamepad before the session is created.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pygame

from client import assets
from client.local_server import LocalServer
from client.render import PORT_COLOURS, TEXT
from client.window import Window, WindowClosed
from core.controller import Controller

MENU_POLICIES = ("human", "cpu: approach", "cpu: random", "cpu: noop")
# Key hints in words: pygame's default font (freesansbold) has no arrow glyphs, which it
# draws as empty boxes on every machine.
MENU_KEYS = "Up/Down choose   Left/Right change   Enter start   Esc quit"


@dataclass
class GameChoice:
    """The game to create: stage, characters, and the ports scripted policies play (port ->
    policy name); `request` is its POST /v1/sessions body."""

    stage: int
    characters: list[int]
    policies: dict[str, str] = field(default_factory=dict)

    def request(self, args: argparse.Namespace) -> dict:
        body: dict = {"stage": self.stage, "characters": self.characters}
        if self.policies:
            body["policies"] = self.policies
        if args.delay is not None:
            body["input_delay"] = args.delay
        if args.start_replay:
            name, _, row = args.start_replay.partition(":")
            body["start"] = {"replay": name, "frame": int(row or 0)}
        return body


class StartScreen:
    """Pick the stage, both characters and who plays port 2, with the arrow keys (or a
    gamepad's stick / d-pad) and Enter (or A / Start)."""

    def __init__(self, app: Window, choice: GameChoice, server: LocalServer | None):
        self.app = app
        self.server = server
        self.stages = assets.legal_stages()
        self.characters = assets.playable_characters()
        ids = [c for c, _ in self.characters]
        self.values = [
            self.stages.index(choice.stage) if choice.stage in self.stages else 0,
            ids.index(choice.characters[0]) if choice.characters[0] in ids else 0,
            ids.index(choice.characters[1]) if choice.characters[1] in ids else 0,
            _menu_policy_index(choice.policies.get("2")),
        ]
        self.row = 0
        self._previous: Controller = Controller()

    def choice(self) -> GameChoice:
        stage = self.stages[self.values[0]]
        characters = [self.characters[self.values[1]][0], self.characters[self.values[2]][0]]
        policy = MENU_POLICIES[self.values[3]]
        policies = {} if policy == "human" else {"2": policy.split(": ")[1]}
        return GameChoice(stage, characters, policies)

    def _sizes(self) -> list[int]:
        return [len(self.stages), len(self.characters), len(self.characters), len(MENU_POLICIES)]

    def move(self, d_row: int, d_value: int) -> None:
        self.row = (self.row + d_row) % 4
        self.values[self.row] = (self.values[self.row] + d_value) % self._sizes()[self.row]

    def run(self) -> GameChoice | None:
        try:
            while True:
                for event in self.app._events():
                    if event.type != pygame.KEYDOWN:
                        continue
                    if event.key in (pygame.K_RETURN, pygame.K_KP_ENTER):
                        return self.choice()
                    self.move(
                        {pygame.K_UP: -1, pygame.K_DOWN: 1}.get(event.key, 0),
                        {pygame.K_LEFT: -1, pygame.K_RIGHT: 1}.get(event.key, 0),
                    )
                if self._gamepad_confirms():
                    return self.choice()
                self.draw()
                if not self.app._present():
                    return self.choice()
                self.app.clock.tick(30)
        except WindowClosed:
            return None

    def _gamepad_confirms(self) -> bool:
        """Gamepads navigate on the edges of the stick and d-pad; A or Start confirms."""
        pad = self.app.controls.pad_for(0)
        if pad is None:
            return False
        now, before = pad.state(), self._previous
        self._previous = now

        def edge(value: float, old: float) -> int:
            return (value > 0.5 and old <= 0.5) - (value < -0.5 and old >= -0.5)

        self.move(-edge(now.stick_y, before.stick_y), edge(now.stick_x, before.stick_x))
        pressed = now.buttons - before.buttons
        return bool(pressed & {"A", "START"})

    def draw(self) -> None:
        screen = self.app.screen
        screen.fill((14, 16, 28))
        w, _ = screen.get_size()
        font, big = self.app.font, self.app.big_font
        title = big.render("PLAY THE MODEL", True, TEXT)
        screen.blit(title, (w // 2 - title.get_width() // 2, 50))
        choice = self.choice()
        rows = [
            ("Stage", assets.stage(choice.stage).display_name, TEXT),
            ("P1", assets.character_name(choice.characters[0]), PORT_COLOURS[1]),
            ("P2", assets.character_name(choice.characters[1]), PORT_COLOURS[2]),
            ("P2 played by", MENU_POLICIES[self.values[3]], PORT_COLOURS[2]),
        ]
        for i, (label, value, colour) in enumerate(rows):
            y = 170 + 60 * i
            text = font.render(f"{label}:", True, (150, 152, 170))
            screen.blit(text, (w // 2 - 220, y))
            value_text = big.render(value.replace("_", " ").title(), True, colour)
            screen.blit(value_text, (w // 2 - 40, y - 14))
            if i == self.row:  # a drawn marker: the default font has no arrow glyphs
                tip, mid = (w // 2 - 232, y + 10), (w // 2 - 246, y + 10)
                pygame.draw.polygon(screen, TEXT, [tip, (mid[0], mid[1] - 8), (mid[0], mid[1] + 8)])
        cpu = {int(port): policy for port, policy in choice.policies.items()}
        lines = [*self.app.controls.describe(cpu), ""]
        if self.server is not None:
            ready = self.server.ready()  # raises ServerError if the server died
            lines.append("server ready" if ready else "starting the local server…")
        lines.append(MENU_KEYS)
        for i, line in enumerate(lines):
            t = font.render(line, True, (150, 152, 170))
            screen.blit(t, (w // 2 - t.get_width() // 2, 440 + 30 * i))


def _menu_policy_index(policy: str | None) -> int:
    for i, name in enumerate(MENU_POLICIES):
        if policy and name.endswith(policy):
            return i
    return 0
