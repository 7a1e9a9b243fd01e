"""The camera of the game window: which part of the stage is on screen, in world units
(Melee's, y up), and how they map to pixels.
"""

from __future__ import annotations

import math

from client import assets


class Camera:
    """Follows both players like Melee's: the view fits every live player with margins, never
    shows past the blast zones, and eases towards its target instead of jumping."""

    MARGIN_X = 50.0  # world units beside the outermost players
    MARGIN_TOP = 50.0
    MARGIN_BOTTOM = 45.0  # the HUD covers the bottom of the window
    MIN_WIDTH = 230.0  # the closest zoom, in world units across the window
    EASE = 3.0  # per second: how fast the view closes in on its target
    EASE_OUT = 10.0  # and how fast it backs out
    KEEP_X, KEEP_BOTTOM, KEEP_TOP = (
        12.0,
        30.0,
        40.0,
    )  # never closer to the edge (the HUD covers the bottom)

    def __init__(self, stage: assets.Stage, size: tuple[int, int]):
        self.stage = stage
        self.size = size
        self.cx, self.cy, self.width = 0.0, 30.0, 220.0
        self._snapped = False

    @property
    def aspect(self) -> float:
        return self.size[0] / self.size[1]

    @property
    def scale(self) -> float:
        """Pixels per world unit."""
        return self.size[0] / self.width

    def _fit(self, left: float, right: float, bottom: float, top: float):
        """The view (centre x, centre y, width) that shows the box, within the blast zones."""
        s = self.stage
        width = max(right - left, (top - bottom) * self.aspect, self.MIN_WIDTH)
        width = min(
            width, s.blast_right - s.blast_left, (s.blast_top - s.blast_bottom) * self.aspect
        )
        height = width / self.aspect
        cx = min(max((left + right) / 2, s.blast_left + width / 2), s.blast_right - width / 2)
        cy = min(max((bottom + top) / 2, s.blast_bottom + height / 2), s.blast_top - height / 2)
        return cx, cy, width

    def target(self, points: list[tuple[float, float]]) -> tuple[float, float, float]:
        if not points:
            points = [(0.0, self.stage.main.y)]
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        return self._fit(
            min(xs) - self.MARGIN_X,
            max(xs) + self.MARGIN_X,
            min(ys) - self.MARGIN_BOTTOM,
            max(ys) + self.MARGIN_TOP,
        )

    def follow(self, points: list[tuple[float, float]], dt: float, snap: bool = False) -> None:
        cx, cy, width = self.target(points)
        if snap or not self._snapped:
            self.cx, self.cy, self.width = cx, cy, width
            self._snapped = True
            return
        # Zoom out quickly and in slowly, as Melee's camera does.
        k = 1.0 - math.exp(-(self.EASE_OUT if width > self.width else self.EASE) * dt)
        self.cx += (cx - self.cx) * k
        self.cy += (cy - self.cy) * k
        self.width += (width - self.width) * k
        self._contain(points)

    def _contain(self, points: list[tuple[float, float]]) -> None:
        """Never let easing leave a player out of the picture: widen the view at once."""
        half_w, half_h = self.width / 2, self.width / self.aspect / 2
        view = [self.cx - half_w, self.cx + half_w, self.cy - half_h, self.cy + half_h]
        box = list(view)
        for x, y in points:
            box[0], box[1] = min(box[0], x - self.KEEP_X), max(box[1], x + self.KEEP_X)
            box[2], box[3] = min(box[2], y - self.KEEP_BOTTOM), max(box[3], y + self.KEEP_TOP)
        if box != view:
            self.cx, self.cy, self.width = self._fit(*box)

    def to_screen(self, x: float, y: float) -> tuple[int, int]:
        w, h = self.size
        return (
            round(w / 2 + (x - self.cx) * self.scale),
            round(h / 2 - (y - self.cy) * self.scale),
        )

    def length(self, units: float) -> int:
        return max(1, round(units * self.scale))
