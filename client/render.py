"""Drawing the predicted frames: stage, characters, projectiles, HUD and effects.

Everything drawn comes from the `Frame` messages (the model's predictions, or a replay's
frames) and the stage geometry in `assets/stages.json`; nothing is simulated here. World units
are Melee's (a Slippi post-frame position, y up); `client.camera.Camera` maps them to pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pygame

from client import assets, figures
from client.camera import Camera
from server.protocol import Frame, GameEvent, Player

# Melee's port colours: P1 red, P2 blue (the HUD and name tags use them too).
PORT_COLOURS = {1: (230, 60, 60), 2: (60, 120, 240)}
NO_OWNER_COLOUR = (200, 200, 200)
BACKGROUND = (14, 16, 28)
STAGE_COLOUR = (52, 56, 78)
STAGE_EDGE = (170, 176, 205)
PLATFORM_COLOUR = (150, 156, 190)
BLAST_COLOUR = (60, 64, 90)
TEXT = (235, 235, 240)
DIM_TEXT = (150, 152, 170)

HITLAG_SHAKE = 1.2  # world units left and right, alternating each frame
# A grounded player this far below a surface, over it, is drawn standing on it: the deepest
# dip below the main stage on the real replays is 12.5 units (model/stage_collision.py's
# FLOOR_TOLERANCE, 13); platforms, as the rules' PLATFORM_SNAP.
SINK_LIMIT, PLATFORM_SINK_LIMIT = 13.0, 3.0
PROJECTILE_RADIUS = 2.0  # world units
HUD_PLATE = (150, 90)  # pixels: each player's panel at the bottom of the window
HUD_GAP = 4  # pixels below the panels
HUD_PANEL = (8, 9, 16, 255)  # opaque: the world passes behind the panels, never over them
INVULNERABLE_FLASH_FRAMES = 4  # the body alternates colour and white every 4 frames
KO_EFFECT_FRAMES = 50
RESPAWN_EFFECT_FRAMES = 30


def event_port(event: GameEvent) -> int | None:
    """The port an event is about. Events carry the rules' player index (0 = p1, 1 = p2, as in
    core/events.py's Event), while players carry their port (1, 2)."""
    return None if event.player is None else event.player + 1


def is_shielding(player: Player) -> bool:
    """Holding shield: the shield actions (libmelee SHIELD*, Melee's Guard*), not rolls or
    dodges, which share the shield_dodge category, nor a broken shield (damage)."""
    return figures.pose_of(player) == "shield"


def is_hidden(player: Player) -> bool:
    """KO'd: out of play and not on the revival platform or entering the stage."""
    name = player.action_name.upper()
    return player.category == "dead" and not name.startswith(("ON_HALO", "ENTRY"))


def timer_text(frame: int, timer_frames: int) -> str:
    """Melee's countdown, mm:ss.cc, from the frame the clock starts (0) to `timer_frames`."""
    left = max(0, timer_frames - max(frame, 0))
    minutes, rest = divmod(left, 3600)
    seconds, frames = divmod(rest, 60)
    return f"{minutes:02d}:{seconds:02d}.{frames * 100 // 60:02d}"


def percent_colour(percent: float) -> tuple[int, int, int]:
    """White at 0%, through yellow and orange to a dark red at 200%+ (like Melee's HUD)."""
    t = max(0.0, min(1.0, percent / 200.0))
    if t < 0.5:
        return (255, 255, int(255 * (1 - 2 * t)))
    return (255, int(255 * (1 - (t - 0.5) * 1.6)), 0) if t < 0.9 else (200, 30, 20)


@dataclass
class Effect:
    kind: str  # "ko" or "respawn"
    x: float
    y: float
    colour: tuple[int, int, int]
    age: int = 0  # frames since it began


@dataclass
class Hud:
    """What the renderer shows beside the frame: set by the app each loop."""

    overlay: list[str] = field(default_factory=list)  # F1 lines (fps, frame, ping, ...)
    show_overlay: bool = False
    banner: str = ""  # big centred text: PAUSED, GAME!, waiting...
    subtitle: str = ""
    notice: str = ""  # a passing message under the timer (server errors, refusals)


class Renderer:
    """Keeps the latest frame and the effects its events started; `draw` paints them."""

    def __init__(
        self,
        size: tuple[int, int],
        stage_id: int,
        characters: list[int],
        timer_frames: int | None = None,
    ):
        self.stage = assets.stage(stage_id)
        self.characters = characters
        self.timer_frames = timer_frames
        self.camera = Camera(self.stage, size)
        self.frame: Frame | None = None
        self._previous_projectiles: dict[int, tuple[float, float]] = {}  # slot -> x, y
        self.effects: list[Effect] = []
        self.hud = Hud()
        self.fonts = {
            "small": pygame.font.Font(None, 18),
            "medium": pygame.font.Font(None, 26),
            "large": pygame.font.Font(None, 44),
            "huge": pygame.font.Font(None, 96),
        }

    # ------------------------------------------------------------------ state
    def update(self, frame: Frame, dt: float, snap: bool = False) -> None:
        """Take a new frame: start the effects of its events, move the camera."""
        previous = self.frame
        if previous is not None and frame.frame < previous.frame:
            self.effects.clear()  # the game was reset
        for effect in self.effects:
            effect.age += 1
        self.effects = [e for e in self.effects if e.age < _effect_frames(e.kind)]
        for event in frame.events:
            self._start_effect(event, frame, previous)
        self._previous_projectiles = (
            {p.slot: (p.x, p.y) for p in previous.projectiles} if previous is not None else {}
        )
        self.frame = frame
        points = [(p.x, p.y) for p in frame.players if not is_hidden(p)]
        # Like Melee's, the camera keeps the stage in the picture whoever is where.
        points.append((0.0, self.stage.main.y))
        self.camera.follow(points, dt, snap=snap)

    def replace(self, frame: Frame) -> None:
        """Show a corrected version of the current frame (a server rollback re-made it):
        positions and HUD change, effects and camera carry on."""
        if self.frame is not None and frame.frame == self.frame.frame:
            self.frame = frame

    def _start_effect(self, event: GameEvent, frame: Frame, previous: Frame | None) -> None:
        port = event_port(event)
        if port is None or event.type not in ("ko", "respawn"):
            return
        source = previous if event.type == "ko" and previous is not None else frame
        player = next((p for p in source.players if p.port == port), None)
        if player is None:
            return
        x, y = player.x, player.y
        if event.type == "ko":  # show the burst where the player left the screen
            s = self.stage
            x = min(max(x, s.blast_left), s.blast_right)
            y = min(max(y, s.blast_bottom), s.blast_top)
        colour = PORT_COLOURS.get(port, NO_OWNER_COLOUR)
        self.effects.append(Effect(event.type, x, y, colour))

    # ------------------------------------------------------------------ drawing
    def draw(self, surface: pygame.Surface) -> None:
        if surface.get_size() != self.camera.size:
            self.camera.size = surface.get_size()
        surface.fill(BACKGROUND)
        self._draw_stage(surface)
        if self.frame is not None:
            self._draw_projectiles(surface)
            for player in self.frame.players:
                self._draw_player(surface, player, self.frame.frame)
            # Hitboxes over both bodies: where a hit lands matters more than who is in front.
            for player in self.frame.players:
                if not is_hidden(player):
                    figures.draw_hitboxes(surface, self.camera, figures.active_hitboxes(player))
        self._draw_effects(surface)
        self._draw_hud(surface)  # after the world: the panels are never drawn over
        if self.hud.notice:
            text = self.fonts["medium"].render(self.hud.notice, True, (255, 210, 120))
            surface.blit(text, (surface.get_width() // 2 - text.get_width() // 2, 58))
        if self.hud.banner:
            self._draw_banner(surface)
        if self.hud.show_overlay:
            self._draw_overlay(surface)

    def _draw_projectiles(self, surface: pygame.Surface) -> None:
        """Each item where the frame has it, with a streak back to where it was a frame ago
        (lasers and thrown items read by their direction)."""
        cam = self.camera
        radius = max(3, cam.length(PROJECTILE_RADIUS))
        for projectile in self.frame.projectiles:
            colour = PORT_COLOURS.get(projectile.owner + 1, NO_OWNER_COLOUR)
            centre = cam.to_screen(projectile.x, projectile.y)
            before = self._previous_projectiles.get(projectile.slot)
            if before is not None and math.dist(before, (projectile.x, projectile.y)) < 30:
                tail = cam.to_screen(*before)
                pygame.draw.line(surface, colour, tail, centre, max(2, radius))
            pygame.draw.circle(surface, colour, centre, radius)
            pygame.draw.circle(surface, TEXT, centre, radius, 1)

    def _draw_stage(self, surface: pygame.Surface) -> None:
        cam, s = self.camera, self.stage
        left, top = cam.to_screen(s.blast_left, s.blast_top)
        right, bottom = cam.to_screen(s.blast_right, s.blast_bottom)
        pygame.draw.rect(surface, BLAST_COLOUR, (left, top, right - left, bottom - top), 2)
        # The main platform: its surface, and a body below it narrowing towards the bottom.
        l_edge, surface_y = cam.to_screen(s.main.left_x, s.main.y)
        r_edge, _ = cam.to_screen(s.main.right_x, s.main.y)
        depth = cam.length(14.0)
        inset = cam.length(8.0)
        body = [
            (l_edge, surface_y),
            (r_edge, surface_y),
            (r_edge - inset, surface_y + depth),
            (l_edge + inset, surface_y + depth),
        ]
        pygame.draw.polygon(surface, STAGE_COLOUR, body)
        pygame.draw.line(surface, STAGE_EDGE, body[0], body[1], max(2, cam.length(1.2)))
        for platform in s.platforms:
            a = cam.to_screen(platform.left_x, platform.y)
            b = cam.to_screen(platform.right_x, platform.y)
            thickness = max(3, cam.length(2.0))
            pygame.draw.rect(surface, PLATFORM_COLOUR, (a[0], a[1], b[0] - a[0], thickness))

    def feet(self, player: Player, frame: int) -> tuple[float, float]:
        """Where the figure's feet are drawn (world units): the player's position, shaken
        while in hitlag; a grounded player over the main stage or a fixed platform stands on
        its surface. Melee moves the recorded position below the surface in landings,
        attacks and throws (by up to 12.5 units on the real replays:
        model/stage_collision.py, FLOOR_TOLERANCE) while the character stays on the ground;
        drawn at the position, a landing Falco or a thrown Captain Falcon sank into the stage."""
        x, y = player.x, player.y
        if player.hitlag > 0:
            x += HITLAG_SHAKE if frame % 2 else -HITLAG_SHAKE
        if not player.airborne:
            s = self.stage
            if (
                s.main.left_x <= player.x <= s.main.right_x
                and s.main.y - SINK_LIMIT <= y < s.main.y
            ):
                y = s.main.y
            for platform in s.platforms:
                over = platform.left_x <= player.x <= platform.right_x
                if over and platform.y - PLATFORM_SINK_LIMIT <= y < platform.y:
                    y = platform.y
        return x, y

    def figure(self, player: Player, frame: int) -> figures.Figure:
        """The player's figure as drawn on `frame` (world units)."""
        x, y = self.feet(player, frame)
        main = self.stage.main
        ledge = (main.right_x if player.x > 0 else main.left_x, main.y)
        return figures.layout(player, x, y, ledge)

    def _draw_player(self, surface: pygame.Surface, player: Player, frame: int) -> None:
        if is_hidden(player):
            return
        cam = self.camera
        colour = PORT_COLOURS.get(player.port, NO_OWNER_COLOUR)
        figure = self.figure(player, frame)
        if player.action_name.upper().startswith("ON_HALO"):
            a = cam.to_screen(player.x - 9, player.y)
            pygame.draw.rect(surface, (240, 240, 250), (a[0], a[1], cam.length(18), 3))
        body_colour = colour
        if player.invulnerable and (frame // INVULNERABLE_FLASH_FRAMES) % 2:
            body_colour = tuple((c + 255) // 2 for c in colour)
        figures.draw_figure(surface, cam, figure, body_colour, TEXT)
        if is_shielding(player):
            figures.draw_shield(surface, cam, player, figure.centre, colour)
        # The port above the head; with the F1 overlay on, the action and its category too.
        centre_x = cam.to_screen(*figure.centre)[0]
        y = cam.to_screen(0.0, figure.top)[1] - 4
        lines = [(f"P{player.port}", colour)]
        if self.hud.show_overlay:
            lines.append((f"{player.action_name.lower()} · {player.category}", TEXT))
        for text, text_colour in reversed(lines):
            label = self.fonts["small"].render(text, True, text_colour)
            y -= label.get_height()
            surface.blit(label, (centre_x - label.get_width() // 2, y))

    def hud_top(self, surface: pygame.Surface) -> int:
        """The first pixel row of the HUD panels."""
        return surface.get_height() - HUD_PLATE[1] - HUD_GAP

    def _draw_effects(self, surface: pygame.Surface) -> None:
        w = surface.get_width()
        bottom = self.hud_top(surface) - 20  # a burst's centre stays above the panels
        for effect in self.effects:
            x, y = self.camera.to_screen(effect.x, effect.y)
            x, y = min(max(x, 20), w - 20), min(max(y, 20), bottom)
            if effect.kind == "ko":
                t = effect.age / KO_EFFECT_FRAMES
                for i in range(12):
                    angle = i * math.pi / 6 + 0.2
                    r0, r1 = 15 + 90 * t, 40 + 150 * t
                    a = (x + r0 * math.cos(angle), y + r0 * math.sin(angle))
                    b = (x + r1 * math.cos(angle), y + r1 * math.sin(angle))
                    pygame.draw.line(surface, effect.colour, a, b, max(1, int(6 * (1 - t))))
            else:
                t = effect.age / RESPAWN_EFFECT_FRAMES
                radius = int(10 + 60 * t)
                pygame.draw.circle(surface, effect.colour, (x, y), radius, max(1, int(5 * (1 - t))))

    def hud_plates(self, surface: pygame.Surface) -> dict[int, pygame.Rect]:
        """Each player's HUD panel (port -> rectangle on the surface)."""
        if self.frame is None:
            return {}
        w = surface.get_width()
        players = sorted(self.frame.players, key=lambda p: p.port)
        slot = w // (len(players) + 1)
        width, height = HUD_PLATE
        top = self.hud_top(surface)
        return {
            p.port: pygame.Rect(slot * (i + 1) - width // 2, top, width, height)
            for i, p in enumerate(players)
        }

    def _draw_hud(self, surface: pygame.Surface) -> None:
        if self.frame is None:
            return
        w = surface.get_width()
        plates = self.hud_plates(surface)
        for player in self.frame.players:
            colour = PORT_COLOURS.get(player.port, NO_OWNER_COLOUR)
            plate = plates[player.port]
            panel = pygame.Surface(plate.size, pygame.SRCALPHA)
            panel.fill(HUD_PANEL)
            surface.blit(panel, plate.topleft)
            cx = plate.centerx
            name = assets.character_name(player.character).replace("_", " ")
            label = self.fonts["small"].render(f"P{player.port}  {name}", True, colour)
            surface.blit(label, (cx - label.get_width() // 2, plate.top + 6))
            percent = self.fonts["large"].render(
                f"{player.percent:.0f}%", True, percent_colour(player.percent)
            )
            surface.blit(percent, (cx - percent.get_width() // 2, plate.top + 26))
            for s in range(player.stocks):
                pygame.draw.circle(surface, colour, (cx - 24 + s * 16, plate.bottom - 14), 6)
                pygame.draw.circle(surface, TEXT, (cx - 24 + s * 16, plate.bottom - 14), 6, 1)
        if self.timer_frames is not None:
            text = self.fonts["large"].render(
                timer_text(self.frame.frame, self.timer_frames), True, TEXT
            )
            surface.blit(text, (w // 2 - text.get_width() // 2, 10))

    def _draw_banner(self, surface: pygame.Surface) -> None:
        w, h = surface.get_size()
        text = self.fonts["huge"].render(self.hud.banner, True, TEXT)
        shade = pygame.Surface((w, text.get_height() + 60), pygame.SRCALPHA)
        shade.fill((0, 0, 0, 140))
        top = h // 2 - shade.get_height() // 2
        surface.blit(shade, (0, top))
        surface.blit(text, (w // 2 - text.get_width() // 2, top + 10))
        if self.hud.subtitle:
            sub = self.fonts["medium"].render(self.hud.subtitle, True, DIM_TEXT)
            surface.blit(sub, (w // 2 - sub.get_width() // 2, top + 20 + text.get_height()))

    def _draw_overlay(self, surface: pygame.Surface) -> None:
        lines = [self.fonts["small"].render(line, True, TEXT) for line in self.hud.overlay]
        if not lines:
            return
        width = max(line.get_width() for line in lines) + 16
        box = pygame.Surface((width, 8 + 18 * len(lines)), pygame.SRCALPHA)
        box.fill((0, 0, 0, 170))
        for i, line in enumerate(lines):
            box.blit(line, (8, 5 + 18 * i))
        surface.blit(box, (8, 8))


def _effect_frames(kind: str) -> int:
    return KO_EFFECT_FRAMES if kind == "ko" else RESPAWN_EFFECT_FRAMES
