"""The browser spectator page (server/static/watch.html) in a real headless Chromium.

Chromium (Debian's `chromium` package; .ci/run installs it) is driven over the DevTools
protocol (tests/chromium.py). The server is the real one on loopback with the
untrained small model; port 1 is played by the `approach` policy and port 2 by a thread
here. The browser tests skip when chromium is not on PATH.

`.venv/bin/python tests/test_watch_page.py` prints the stage geometry the page inlines (from
assets/stages.json), for pasting into its `stage-geometry` block when the file changes.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
from chromium import Browser

from client import figures
from server.protocol import Player
from server.serve import ServerThread
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "server" / "static" / "watch.html"
STAGES_JSON = ROOT / "assets" / "stages.json"
CHARACTERS_JSON = ROOT / "assets" / "characters.json"
COLOURS = {1: (0xE8, 0x45, 0x3C), 2: (0x3C, 0x7B, 0xE8)}  # the page's PLAYER_COLOURS
WINDOW = (960, 600)

pytestmark = pytest.mark.timeout(120)


def page_geometry() -> dict:
    """What the page should inline: the drawn parts of assets/stages.json."""
    stages = json.loads(STAGES_JSON.read_text(encoding="utf-8"))["stages"]
    edges = ("left_x", "right_x", "y")
    return {
        key: {
            "name": raw["name"],
            "display_name": raw["display_name"],
            "blast_zones": {z: raw["blast_zones"][z] for z in ("left", "right", "top", "bottom")},
            "main_platform": {k: raw["main_platform"][k] for k in edges},
            "platforms": [{k: p[k] for k in edges} for p in raw["platforms"]],
        }
        for key, raw in stages.items()
    }


def test_inlined_stage_geometry_equals_assets_stages_json():
    found = re.search(
        r'<script type="application/json" id="stage-geometry">(.*?)</script>',
        PAGE.read_text(encoding="utf-8"),
        re.S,
    )
    assert found, "watch.html has no stage-geometry block"
    assert json.loads(found.group(1)) == page_geometry(), (
        "watch.html's stage geometry differs from assets/stages.json; "
        "regenerate it with `python tests/test_watch_page.py`"
    )


# ------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def server():
    with ServerThread(ServerSettings(port=0, recordings_dir=None)) as running:
        yield running


@pytest.fixture(scope="module")
def session(server):
    """A session of two scripted policies: it runs with no player connected."""
    response = httpx.post(
        f"{server.url}/v1/sessions",
        json={"policies": {"1": "approach", "2": "hold:left"}},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "running"
    return created


def test_page_route_serves_the_page_for_a_session_and_404_otherwise(server, session):
    page = httpx.get(f"{server.url}/watch/{session['session_id']}", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<canvas" in page.text
    assert httpx.get(f"{server.url}/watch/nosuchsession", timeout=30).status_code == 404


# ------------------------------------------------------------------------- Chromium over CDP
@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        pytest.skip(
            "chromium is not on PATH (Debian: apt-get install chromium; .ci/run installs it)"
        )
    running = Browser(WINDOW)
    yield running
    running.close()


def read_png(data: bytes):
    """A PNG as an (H, W, 3) uint8 array, through pygame (no Pillow in the dev extra)."""
    import io
    import os

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame
    import pygame.surfarray

    surface = pygame.image.load(io.BytesIO(data), "page.png")
    return pygame.surfarray.array3d(surface).transpose(1, 0, 2)  # (W, H, 3) -> (H, W, 3)


def colour_near(pixels, x: float, y: float, colour: tuple[int, int, int], box: int = 6) -> bool:
    """Whether `colour` (within 40 per channel) is in a box around (x, y)."""
    height, width, _ = pixels.shape
    x0, x1 = max(0, int(x) - box), min(width, int(x) + box + 1)
    y0, y1 = max(0, int(y) - box), min(height, int(y) + box + 1)
    if x0 >= x1 or y0 >= y1:
        return False
    patch = pixels[y0:y1, x0:x1].astype(int)
    close = (abs(patch - colour) <= 40).all(axis=-1)
    return bool(close.any())


FREEZE = """(() => {
    const s = window.spectator;
    if (!s || !s.welcome || s.framesDrawn < 30) return null;
    const frame = s.freeze();  // draws the newest frame once more, then stops drawing
    if (!frame) { s.paused = false; return null; }
    const centres = frame.players.map((p) => {
        const figure = s.figures.layout(p, ...s.feet(p, frame.frame), null);
        return s.worldToScreen(...figure.centre);
    });
    return {frame, stage: s.welcome.stage, ratio: window.devicePixelRatio, errors: s.errors,
            points: frame.players.map((p) => s.worldToScreen(p.x, p.y)), centres};
})()"""


def shows_both(shown: dict | None) -> bool:
    """Both players inside the blast zones (the page draws them) and on screen."""
    if shown is None:
        return False
    zones = page_geometry()[str(shown["stage"])]["blast_zones"]
    return all(
        zones["left"] <= p["x"] <= zones["right"]
        and zones["bottom"] <= p["y"] <= zones["top"]
        and 0 <= px < WINDOW[0]
        and 0 <= py < WINDOW[1]
        for p, (px, py) in zip(shown["frame"]["players"], shown["points"], strict=True)
    )


def test_the_page_draws_both_characters_where_the_frame_says(server, session, browser):
    browser.call("Page.navigate", url=f"{server.url}/watch/{session['session_id']}")
    # Freeze the page on a frame that shows both players; the screenshot that follows shows
    # exactly that frame, drawn with the camera worldToScreen reports.
    deadline = time.monotonic() + 40
    while not shows_both(shown := browser.evaluate(FREEZE)):
        assert time.monotonic() < deadline, f"no frame with both players on screen: {shown}"
        if shown is not None:  # frozen on a frame that does not show both: draw on
            browser.evaluate("window.spectator.paused = false")
        time.sleep(0.2)
    shot = browser.call("Page.captureScreenshot", format="png")
    pixels = read_png(base64.b64decode(shot["data"]))
    ratio = shown["ratio"]
    assert pixels.shape[:2] == (round(WINDOW[1] * ratio), round(WINDOW[0] * ratio))
    frame = shown["frame"]
    assert [p["port"] for p in frame["players"]] == [1, 2]
    for player, (px, py), (cx, cy) in zip(
        frame["players"], shown["points"], shown["centres"], strict=True
    ):
        # The figure stands on the position (or the stage under it): its torso above.
        assert cy < py + 1 and abs(cx - px) < 40
        x, y = cx * ratio, cy * ratio
        base = COLOURS[player["port"]]
        # An invulnerable player (as in the entry) flashes between its colour and a lighter one.
        flashed = tuple((c + 255) // 2 for c in base)
        drawn = [base, flashed] if player.get("invulnerable") else [base]
        assert any(colour_near(pixels, x, y, c, box=3) for c in drawn), (
            f"no P{player['port']} colour near ({x:.0f}, {y:.0f}), where frame {frame['frame']} "
            f"puts it at ({player['x']:.1f}, {player['y']:.1f})"
        )
        ox, oy = shown["centres"][2 - player["port"]]
        if math.dist((cx, cy), (ox, oy)) > 40:  # apart: the other player's colour is not here
            assert not colour_near(pixels, x, y, COLOURS[3 - player["port"]], box=3)
    assert shown["errors"] == [] and browser.problems == [], (shown["errors"], browser.problems)


# ------------------------------------------------------------------------- characters
def test_character_data_route_serves_sizes_and_hitboxes_without_a_key(server):
    answer = httpx.get(f"{server.url}/assets/characters.json", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    table = json.loads(CHARACTERS_JSON.read_text(encoding="utf-8"))
    served = answer.json()
    assert served["characters"] == table["characters"]
    assert served["hitboxes"] == table["hitboxes"]


def wire_player(**fields) -> Player:
    """A player as the wire carries it: Fox standing at the origin, facing right."""
    base = dict(
        port=1, character=1, x=0.0, y=0.0, percent=0.0, shield=60.0, stocks=4, facing=1,
        action=14, action_name="STANDING", category="idle", state_age=0.0, airborne=False,
        jumps=2, hitlag=0.0, hitstun=0.0, invulnerable=False, stick_x=0.0, stick_y=0.0,
        buttons=0,
    )  # fmt: skip
    return Player(**{**base, **fields})


MARTH, FOX, JIGGLYPUFF, BOWSER, FALCO = 18, 1, 15, 5, 22
# One of each pose, with actions that have hitboxes on the frame: Marth's jab (44) on its
# frames 4-7, Fox's neutral air (65) on 4-31, Falco's jab on 2-3.
FIGURE_CASES = [
    dict(character=MARTH, action=44, state_age=4.0),  # jab: hitboxes, the arm reaches
    dict(character=MARTH, action=44, state_age=4.0, facing=-1),
    dict(character=FALCO, action=44, state_age=1.0),
    dict(character=FOX, action=65, state_age=10.0, airborne=True),  # neutral air
    dict(character=FOX, action=179, shield=30.0),  # shield, half health
    dict(character=MARTH, action=40),  # crouch
    dict(character=FOX, action=252, x=66.0, y=-20.0, facing=-1),  # hanging from the ledge
    dict(character=FOX, action=38, state_age=7.0, airborne=True),  # tumbling
    dict(character=BOWSER, action=184),  # lying
    dict(character=JIGGLYPUFF, action=75),  # reeling
    dict(character=FALCO, action=21, facing=-1),  # running
    dict(character=MARTH, action=212),  # grab
    dict(character=BOWSER, action=14),
    dict(character=JIGGLYPUFF, action=25, airborne=True),
]


def open_page(browser, server, session) -> None:
    if browser.evaluate("typeof window.spectator") != "object":
        browser.call("Page.navigate", url=f"{server.url}/watch/{session['session_id']}")
        browser.wait_for("typeof window.spectator === 'object'")
    browser.wait_for("window.spectator.charactersLoaded === true")


def test_page_loads_the_character_data_and_poses_as_the_client_does(browser, server, session):
    open_page(browser, server, session)
    ids = list(range(400))
    got = browser.evaluate(
        f"""[false, true].map((airborne) => {json.dumps(ids)}.map(
            (action) => window.spectator.figures.poseOf({{action, airborne}})))"""
    )
    for airborne, poses in zip((False, True), got, strict=True):
        expected = [figures.pose_of(wire_player(action=a, airborne=airborne)) for a in ids]
        assert poses == expected, airborne
    sizes = browser.evaluate("[1, 2, 15, 5, 18, 99].map((c) => window.spectator.figures.size(c))")
    from client import assets

    assert sizes == [assets.character_size(c) for c in (1, 2, 15, 5, 18, 99)]


def test_page_lays_figures_and_hitboxes_out_as_the_client_does(browser, server, session):
    open_page(browser, server, session)
    players = [wire_player(**case) for case in FIGURE_CASES]
    ledge = (68.4, 0.0001)
    got = browser.evaluate(
        f"""{json.dumps([p.model_dump() for p in players])}.map((p) => {{
            const f = window.spectator.figures.layout(p, p.x, p.y, {json.dumps(ledge)});
            return {{parts: f.parts.map((q) => [q.part.kind, q.part.layer, q.a, q.b, q.r]),
                     centre: f.centre, eye: f.eye, eyeR: f.eyeR, top: f.top, pose: f.pose,
                     hitboxes: window.spectator.figures.activeHitboxes(p),
                     shield: window.spectator.figures.shieldRadius(p)}};
        }})"""
    )
    boxes_seen = 0
    for player, js in zip(players, got, strict=True):
        py = figures.layout(player, player.x, player.y, ledge)
        assert js["pose"] == figures.pose_of(player)
        expected = [[p.kind, p.layer, list(a), list(b), r] for p, a, b, r in py.parts]
        assert len(js["parts"]) == len(expected), player
        for mine, theirs in zip(js["parts"], expected, strict=True):
            assert mine[:2] == theirs[:2]
            assert [*mine[2], *mine[3]] == pytest.approx([*theirs[2], *theirs[3]], abs=1e-9)
            assert mine[4] == pytest.approx(theirs[4], abs=1e-9)
        assert js["centre"] == pytest.approx(list(py.centre), abs=1e-9)
        assert js["eye"] == pytest.approx(list(py.eye), abs=1e-9)
        assert js["eyeR"] == pytest.approx(py.eye_r) and js["top"] == pytest.approx(py.top)
        assert js["shield"] == pytest.approx(figures.shield_radius(player))
        hitboxes = figures.active_hitboxes(player)
        flat = [v for h in hitboxes for v in h]
        assert [v for h in js["hitboxes"] for v in h] == pytest.approx(flat, abs=1e-9)
        boxes_seen += len(hitboxes)
    assert boxes_seen >= 8  # the jabs and the aerial have theirs


def test_page_draws_figures_a_hitbox_and_a_shield(browser, server, session):
    """A frame made here (Marth jabbing with his hitboxes out, Fox shielding), shown as if the
    server had sent it, is drawn with the figures, the hitbox discs and the bubble."""
    open_page(browser, server, session)
    marth = wire_player(port=1, character=MARTH, x=-25.0, action=44, state_age=4.0,
                        action_name="ATTACK_11", category="ground_attack")  # fmt: skip
    fox = wire_player(port=2, character=FOX, x=25.0, facing=-1, action=179,
                      action_name="SHIELD", category="shield_dodge")  # fmt: skip
    message = {
        "type": "frame", "frame": 500, "players": [marth.model_dump(), fox.model_dump()],
        "projectiles": [], "events": [], "substituted": [], "corrected": False,
    }  # fmt: skip
    shown = browser.evaluate(
        f"""(() => {{
            const s = window.spectator;
            s.paused = false;
            s.receive({json.dumps(message)});
            const frame = s.freeze();
            const at = (p) => {{
                const f = s.figures.layout(p, ...s.feet(p, frame.frame), null);
                return {{centre: s.worldToScreen(...f.centre), head: s.worldToScreen(...f.eye)}};
            }};
            const scale = s.worldToScreen(1, 0)[0] - s.worldToScreen(0, 0)[0];
            return {{frame: frame.frame, scale, figures: frame.players.map(at),
                     hitboxes: s.figures.activeHitboxes(frame.players[0])
                         .map(([x, y, r]) => [...s.worldToScreen(x, y), r * scale]),
                     shield: s.figures.shieldRadius(frame.players[1]) * scale}};
        }})()"""
    )
    try:
        assert shown["frame"] == 500 and len(shown["hitboxes"]) == 4
        pixels = read_png(base64.b64decode(browser.call("Page.captureScreenshot")["data"]))
        for port, figure in zip((1, 2), shown["figures"], strict=True):
            assert colour_near(pixels, *figure["centre"], COLOURS[port], box=2), port
        # Each hitbox's light edge is drawn where the frame data puts it.
        for x, y, r in shown["hitboxes"]:
            radius = max(2.0, r)
            assert colour_near(pixels, x, y - radius, (255, 225, 225), box=2), (x, y, r)
        # The bubble: P2's blue over the background, beside the body.
        cx, cy = shown["figures"][1]["centre"]
        bx = int(cx + 0.8 * shown["shield"])  # behind Fox (he faces left)
        r, g, b = (int(v) for v in pixels[int(cy), bx])
        assert b - r > 50, (r, g, b)
        assert browser.problems == []
    finally:
        browser.evaluate("window.spectator.paused = false")


# Values that exercise every msgpack type and width the page's codec handles.
CODEC_CASES = [
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**53) + 1,
    0.5, -1.25, 1e300, True, False, None, "", "a", "é" * 20, "x" * 31, "x" * 32, "y" * 300,
    "z" * 70000, list(range(15)), list(range(16)), list(range(70000)),
    {"k": 1}, {f"k{i}": i for i in range(16)}, {"nested": [{"a": [1, -2.5, None]}, "s"]},
]  # fmt: skip


def test_the_page_msgpack_codec_agrees_with_python_msgpack(browser, server, session):
    if browser.evaluate("typeof window.spectator") != "object":
        browser.call("Page.navigate", url=f"{server.url}/watch/{session['session_id']}")
        browser.wait_for("typeof window.spectator === 'object'")
    packed = [base64.b64encode(msgpack.packb(v, use_bin_type=True)).decode() for v in CODEC_CASES]
    result = browser.evaluate(
        f"""(() => {{
            const {{encode, decode}} = window.spectator.msgpack;
            const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
            const toB64 = (b) => btoa(Array.from(b, (c) => String.fromCharCode(c)).join(""));
            const decoded = {json.dumps(packed)}.map((s) => decode(fromB64(s)));
            return {{decoded, reencoded: decoded.map((v) => toB64(encode(v)))}};
        }})()"""
    )
    assert result["decoded"] == CODEC_CASES
    # Python packs each value in its smallest form; so must the page.
    assert result["reencoded"] == packed
    # Types Python gives that a JSON round trip cannot show: bin, float32, 64-bit ints.
    special = {
        "bin": msgpack.packb(b"\x00\x01\xff", use_bin_type=True),
        "f32": b"\xca" + bytes.fromhex("3fc00000"),  # 1.5
        "u64": msgpack.packb(2**64 - 1),
        "i64": msgpack.packb(-(2**63)),
        "u64small": b"\xcf" + (5).to_bytes(8, "big"),
        "i8": b"\xd0\x80",
    }
    b64 = {k: base64.b64encode(v).decode() for k, v in special.items()}
    got = browser.evaluate(
        f"""(() => {{
            const {{encode, decode}} = window.spectator.msgpack;
            const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
            const d = Object.fromEntries(Object.entries({json.dumps(b64)})
                .map(([k, s]) => [k, decode(fromB64(s))]));
            const hex = (b) => Array.from(b, (c) => c.toString(16).padStart(2, "0")).join("");
            return {{bin: Array.from(d.bin), binBack: hex(encode(d.bin)), f32: d.f32,
                     u64: String(d.u64), u64Back: hex(encode(d.u64)), i64: String(d.i64),
                     i64Back: hex(encode(d.i64)), u64small: d.u64small, i8: d.i8}};
        }})()"""
    )
    assert got["bin"] == [0, 1, 255] and got["binBack"] == special["bin"].hex()
    assert got["f32"] == 1.5
    assert got["u64"] == str(2**64 - 1) and got["u64Back"] == special["u64"].hex()
    assert got["i64"] == str(-(2**63)) and got["i64Back"] == special["i64"].hex()
    assert got["u64small"] == 5 and got["i8"] == -128
    assert browser.problems == []


if __name__ == "__main__":
    print(json.dumps(page_geometry()))


# ------------------------------------------------------------------------- the docs' figures
def docs_script():
    import importlib.util

    path = ROOT / "docs" / "make_spectator_screenshots.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)  # 8 pages, each played 40 frames and let settle: ~50 s on 2 cores
def test_the_docs_figures_of_the_page_are_made_from_real_frames(replays, tmp_path):
    """docs/make_spectator_screenshots.py shows the page drawing make_screenshots.py's real
    frames: a jab's and an aerial's hitbox discs, a shield's bubble, a crouch, for Marth and
    Falco; each panel shows its own situation and not the others'."""
    script = docs_script()
    found = script.panels(replays)
    assert list(found) == [
        f"{name}-{situation}"
        for name in ("marth", "falco")
        for situation in ("jab", "shield", "crouch", "aerial")
    ]
    for key, (recording, row, port) in found.items():
        player = recording.frame(row).players[port - 1]
        assert script.shots.SITUATIONS[key.split("-")[1]](player, recording), key
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium)")
    path, drawn = script.make(replays, tmp_path)
    grid = read_png(path.read_bytes()).astype(int)  # (H, W, 3)
    width, height = script.PANEL
    assert grid.shape == (4 * height, 2 * width, 3)
    page = read_png((tmp_path / "spectator-page.png").read_bytes())
    assert page.shape[:2] == script.WINDOW[::-1]  # the whole viewport, (H, W)
    for i, (key, (_, _, port)) in enumerate(found.items()):
        situation = key.split("-")[1]
        column, line = divmod(i, 4)
        panel = grid[
            line * height + 25 : (line + 1) * height, column * width : (column + 1) * width
        ]
        r, g, b = panel[..., 0], panel[..., 1], panel[..., 2]
        # The page's hitbox fill, rgba(255, 40, 40, 0.55), over the dark sky: no body is
        # this colour (P1's limbs are darker and have less blue than green).
        discs = int(((r - g > 90) & (b > g) & (r < 200)).sum())
        # The bubble: the port's colour at 110/255 over the sky (watch.html's drawPlayer).
        tint = 110 / 255 * np.array(COLOURS[port]) + (1 - 110 / 255) * np.array((20, 25, 37))
        bubble = int((abs(panel - tint) <= 18).all(axis=-1).sum())
        body = int((abs(panel - COLOURS[port]) <= 10).all(axis=-1).sum())
        assert len(np.unique(panel.reshape(-1, 3), axis=0)) > 300 and body > 30, key  # drawn
        has_hitboxes = situation in ("jab", "aerial")
        assert (discs > 1000) if has_hitboxes else (discs < 100), (key, discs)
        assert (bubble > 1500) if situation == "shield" else (bubble < 200), (key, bubble)
        assert (drawn[key]["hitboxes"] > 0) == has_hitboxes, key
        pose = {"shield": "shield", "crouch": "crouch", "aerial": "airborne"}.get(situation)
        assert pose is None or drawn[key]["pose"] == pose, (key, drawn[key]["pose"])
