"""Make docs/images/spectator-figures.png: how the browser spectator page draws characters.

    python docs/make_spectator_screenshots.py [--replays ../shared/replays] [--out docs/images]

The same real frames as docs/make_screenshots.py (Marth and Falco jabbing with a hitbox out,
shielding, crouching, in an aerial with a hitbox out: its `find`), drawn by the real page,
server/static/watch.html, in headless Chromium (Debian's `chromium` on PATH). A loopback
server answers the page as the game server does: the page at /watch/ID, the character table
at /assets/characters.json, and the watch websocket, which answers the page's hello with a
welcome and then sends the LEAD_IN frames before the shown one and the shown one, at 60 a
second, each as `protocol.encode` makes it of `Recording.frame(i)`. Once the page has drawn
the shown frame and its camera has settled, it is frozen and its 1280x720 viewport captured;
each panel is the part around the character. The grid is 2 columns (the characters) by 4
rows (the situations), as client-figures.png. The whole viewport of the first panel (Marth's
jab) is written as spectator-page.png.
"""

from __future__ import annotations

import base64
import io
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # chromium.py: the page's tests' DevTools driver

import pygame  # noqa: E402
from chromium import Browser  # noqa: E402
from websockets.datastructures import Headers  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.http11 import Response  # noqa: E402
from websockets.sync.server import serve  # noqa: E402

from client import assets, figures, replay  # noqa: E402
from core import melee_ids  # noqa: E402
from docs import make_screenshots as shots  # noqa: E402
from server import protocol  # noqa: E402

PAGE = REPO / "server" / "static" / "watch.html"
# The file GET /assets/characters.json serves a subset of (server/api/routes/live.py; the
# page reads its `characters` and `hitboxes`). That module is not imported: it brings torch.
CHARACTERS_JSON = REPO / "assets" / "characters.json"
WINDOW = shots.WINDOW  # the page's viewport, CSS pixels (device scale 1)
PANEL = shots.PANEL
# The page's camera closes most of the gap to its target in about 180 ms (watch.html's
# updateCamera); after this long it is within 0.1% of it.
SETTLE_S = 1.3

# Freeze the page on the frame it shows and say where the character's figure is, in CSS
# pixels, through window.spectator (watch.html's hooks for tests).
FREEZE = """((port) => {
    const s = window.spectator;
    const frame = s.freeze();  // draws the newest frame once more, then stops drawing
    const p = frame.players.find((q) => q.port === port);
    const figure = s.figures.layout(p, ...s.feet(p, frame.frame), null);
    return {frame: frame.frame, centre: s.worldToScreen(...figure.centre), pose: figure.pose,
            hitboxes: s.figures.activeHitboxes(p).length, errors: s.errors};
})"""


class Playback:
    """A loopback server that plays each panel's frames to the page at /watch/<panel id>."""

    def __init__(self, panels: dict[str, tuple[replay.Recording, int]]):
        self.panels = panels  # panel id -> (recording, row shown)
        self.server = serve(self._play, "127.0.0.1", 0, process_request=self._http)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)

    def _http(self, connection, request) -> Response | None:
        """Plain GETs: the page and the character table. A websocket handshake goes on."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if request.path.startswith("/watch/"):
            body, kind = PAGE.read_bytes(), "text/html; charset=utf-8"
        elif request.path == "/assets/characters.json":
            body, kind = CHARACTERS_JSON.read_bytes(), "application/json"
        else:
            return connection.respond(404, "not found\n")
        headers = Headers([("Content-Type", kind), ("Content-Length", str(len(body)))])
        return Response(200, "OK", headers, body)

    def _play(self, websocket) -> None:
        """/v1/sessions/<panel id>/watch: the welcome, then the frames up to the shown one."""
        panel_id = websocket.request.path.split("/")[3]
        recording, row = self.panels[panel_id]
        hello = protocol.decode_client(websocket.recv(timeout=10))
        assert isinstance(hello, protocol.Hello) and hello.role == "spectator", hello
        first = row - shots.LEAD_IN
        welcome = protocol.Welcome(
            session_id=panel_id,
            role="spectator",
            ports=[],
            stage=recording.stage,
            stage_name=melee_ids.stage_name(recording.stage),
            characters=recording.characters,
            character_names=[melee_ids.character_name_internal(c) for c in recording.characters],
            input_delay=0,
            tick_rate=60.0,
            frame=int(recording.frame_ids[first]) - 1,
            timer_frames=recording.timer_frames,
            status="running",
        )
        try:
            websocket.send(protocol.encode(welcome))
            start = time.monotonic()
            for k, i in enumerate(range(first, row + 1)):
                websocket.send(protocol.encode(recording.frame(i)))
                # On a fixed clock, as the server's loop: a late wake-up does not delay the rest.
                time.sleep(max(0.0, start + (k + 1) / 60 - time.monotonic()))
            # Held open until the page goes, as a running session's is: the page writes a
            # closed connection over the picture.
            for _ in websocket:
                pass
        except ConnectionClosed:
            pass


def shoot(browser: Browser, url: str, port: int, frame_id: int) -> tuple[pygame.Surface, dict]:
    """The page at `url` once it has drawn frame `frame_id` and its camera has settled."""
    browser.call("Page.navigate", url=url)
    browser.wait_for(
        "window.spectator && window.spectator.charactersLoaded && window.spectator.lastFrame"
        f" && window.spectator.lastFrame.frame === {frame_id}"
    )
    time.sleep(SETTLE_S)
    shown = browser.evaluate(f"{FREEZE}({port})")
    assert shown["frame"] == frame_id and not shown["errors"] and not browser.problems, (
        shown,
        browser.problems,
    )
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    image = pygame.image.load(io.BytesIO(png), "page.png")
    assert image.get_size() == WINDOW, image.get_size()
    return image, shown


def caption(surface: pygame.Surface, text: str, font: pygame.font.Font) -> None:
    label = font.render(text, True, (235, 235, 240))
    shade = pygame.Surface((label.get_width() + 16, label.get_height() + 8), pygame.SRCALPHA)
    shade.fill((0, 0, 0, 170))
    surface.blit(shade, (0, 0))
    surface.blit(label, (8, 4))


CHARACTERS = (shots.MARTH, shots.FALCO)


def panels(replays: Path) -> dict[str, tuple[replay.Recording, int, int]]:
    """'<character>-<situation>' -> (recording, row, port): make_screenshots' frames, in the
    grid's order (a column per character)."""
    found = {}
    for character in CHARACTERS:
        name = assets.character_name(character).lower()
        for situation in shots.SITUATIONS:
            hit = shots.find(replays, character, situation)
            if hit is None:
                raise SystemExit(f"no {situation} of {name} in the dev replays")
            found[f"{name}-{situation}"] = hit
    return found


def make(replays: Path, out: Path) -> tuple[Path, dict[str, dict]]:
    """The grid's path, and for each panel what the page said it drew (FREEZE's answer)."""
    if shutil.which("chromium") is None:
        raise SystemExit("chromium is not on PATH (Debian: apt-get install chromium)")
    pygame.font.init()
    font = pygame.font.Font(None, 18)  # the game window's small font (client/render.py)
    found = panels(replays)
    drawn = {}
    playback = Playback({key: (recording, row) for key, (recording, row, _) in found.items()})
    browser = Browser(WINDOW)
    grid = pygame.Surface((PANEL[0] * len(CHARACTERS), PANEL[1] * len(shots.SITUATIONS)))
    try:
        for i, (key, (recording, row, port)) in enumerate(found.items()):
            frame_id = int(recording.frame_ids[row])
            page, drawn[key] = shoot(browser, f"{playback.url}/watch/{key}", port, frame_id)
            if i == 0:
                pygame.image.save(page, str(out / "spectator-page.png"))
            x, y = drawn[key]["centre"]
            left = min(max(round(x) - PANEL[0] // 2, 0), WINDOW[0] - PANEL[0])
            top = min(max(round(y) - PANEL[1] // 2, 0), WINDOW[1] - PANEL[1])
            panel = page.subsurface(pygame.Rect((left, top), PANEL)).copy()
            player = recording.frame(row).players[port - 1]
            source = Path(recording.source).name.split("__")[-1]
            name = assets.character_name(player.character).title()
            caption(
                panel,
                f"{name} (P{port}), {key.split('-')[1]}: {player.action_name.lower()} frame "
                f"{figures.action_frame(player)}  ({source}, row {row})",
                font,
            )
            column, line = divmod(i, len(shots.SITUATIONS))
            grid.blit(panel, (column * PANEL[0], line * PANEL[1]))
    finally:
        browser.close()
        playback.close()
    path = out / "spectator-figures.png"
    pygame.image.save(grid, str(path))
    return path, drawn


def main(argv: list[str] | None = None) -> int:
    args = shots.parse_arguments(argv, __doc__.splitlines()[0])
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    path, _ = make(args.replays, args.out)
    print(f"{path} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
