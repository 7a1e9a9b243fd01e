"""The pygame window every screen of `playmodel play` draws in: its events (Escape and closing
end any screen the same way), flipping and the --frames/--screenshot options, a message
screen, and the loop a game screen runs in.
"""

from __future__ import annotations

import argparse
import gc
import logging
from collections.abc import Callable, Sequence

import pygame

from client.controls import Controls, ControlsConfig
from client.render import TEXT

log = logging.getLogger(__name__)


class WindowClosed(Exception):
    """The user closed the window or pressed Escape."""


class Window:
    """The window, the controls and the fonts, made once for the whole run."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        # Only what the client uses: no mixer (it would complain on machines without sound).
        pygame.display.init()
        pygame.font.init()
        pygame.joystick.init()
        pygame.display.set_caption("Play the Model")
        self.screen = pygame.display.set_mode(args.size, pygame.RESIZABLE)
        self.clock = pygame.time.Clock()
        self.controls = Controls(ControlsConfig.load(args.controls))
        self.font = pygame.font.Font(None, 30)
        self.big_font = pygame.font.Font(None, 72)
        self.show_overlay = args.overlay
        self.frames_drawn = 0
        # What is made so far (pygame, fonts, assets) lives as long as the window: frozen out
        # of the collector's sight, a full collection does not walk it again. One that did
        # would hold this process for tens of milliseconds, and a local player's inputs,
        # due 33 ms after each frame, would miss their frames (the server's does the same).
        gc.collect()
        gc.freeze()

    def _events(self) -> list[pygame.event.Event]:
        """Every pending event, after the controls have seen it. Closing the window or Escape
        raises `WindowClosed`, so that every loop ends the same way."""
        events = pygame.event.get()
        for event in events:
            self.controls.handle_event(event)
            if event.type == pygame.QUIT:
                raise WindowClosed
            if event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
                raise WindowClosed
            if event.type == pygame.KEYDOWN and event.key == pygame.K_F1:
                self.show_overlay = not self.show_overlay
            if event.type == pygame.VIDEORESIZE:
                self.screen = pygame.display.set_mode(event.size, pygame.RESIZABLE)
        return events

    def _present(self) -> bool:
        """Flip; False once --frames is reached (after saving --screenshot)."""
        pygame.display.flip()
        self.frames_drawn += 1
        if self.args.frames is not None and self.frames_drawn >= self.args.frames:
            self._screenshot()
            return False
        return True

    def _screenshot(self) -> None:
        if self.args.screenshot:
            self.args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            pygame.image.save(self.screen, str(self.args.screenshot))
            log.info("screenshot saved to %s", self.args.screenshot)

    def _message(self, title: str, lines: Sequence[str] = ()) -> None:
        self.screen.fill((14, 16, 28))
        w, h = self.screen.get_size()
        text = self.big_font.render(title, True, TEXT)
        self.screen.blit(text, (w // 2 - text.get_width() // 2, h // 3))
        for i, line in enumerate(lines):
            t = self.font.render(line, True, (150, 152, 170))
            self.screen.blit(t, (w // 2 - t.get_width() // 2, h // 3 + 90 + 34 * i))

    def run_frames(self, on_key: Callable[[int], None], step: Callable[[], None]) -> int:
        """A game screen's loop at the drawing rate (--fps): events (each key pressed goes to
        `on_key`), `step` (which draws), flip. 0 when the window closes or --frames is
        reached."""
        try:
            while True:
                for event in self._events():
                    if event.type == pygame.KEYDOWN:
                        on_key(event.key)
                step()
                if not self._present():
                    return 0
                self.clock.tick(self.args.fps)
        except WindowClosed:
            return 0
