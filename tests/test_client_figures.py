"""Characters drawn as Melee players read them: sizes and hitboxes from libmelee's tables, a
pose per kind of action, the shield bubble, the hitboxes of the action's frame (facing
respected), figures standing on the stage, and the HUD never drawn over. Frames come from the
real replays in ../shared/replays."""

import json
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np
import pygame
import pytest

from client import assets, figures, replay
from client.render import BACKGROUND, PORT_COLOURS, Effect, Renderer
from server.protocol import Frame

SIZE = (960, 540)
FALCO, MARTH, FOX, CAPTAIN_FALCON = 22, 18, 1, 2
NEUTRAL_ATTACK_1, NAIR, SHIELD, CROUCHING = 44, 65, 179, 40


@pytest.fixture(scope="module", autouse=True)
def pygame_ready():
    pygame.init()
    yield


@pytest.fixture(scope="module")
def throw_grab(replays):
    """Falco (P1) against Marth (P2) on Fountain of Dreams."""
    return replay.load(replays / "dev" / "slippi-js__slp__throwGrab.slp")


@pytest.fixture(scope="module")
def tech_tester(replays):
    """Captain Falcon against Captain Falcon on Final Destination."""
    return replay.load(replays / "dev" / "slippi-js__slp__techTester.slp")


def first_row(recording, port, test):
    for i in range(len(recording)):
        player = recording.frame(i).players[port - 1]
        if test(player):
            return i
    raise AssertionError("no such frame in the replay")


def alone(recording, row, port, **changes) -> Frame:
    """Row `row` with only the player of `port` near the stage's middle (the other one far
    off to the side), its fields changed as given."""
    frame = recording.frame(row)
    players = []
    for p in frame.players:
        if p.port == port:
            players.append(p.model_copy(update={"x": 0.0, **changes}))
        else:
            players.append(p.model_copy(update={"x": -200.0, "y": 0.0}))
    return frame.model_copy(update={"players": players, "events": [], "projectiles": []})


def draw(recording, frame: Frame, show_overlay=False) -> tuple[Renderer, np.ndarray]:
    renderer = Renderer(SIZE, recording.stage, recording.characters)
    renderer.update(frame, 1 / 60, snap=True)
    renderer.hud.show_overlay = show_overlay
    surface = pygame.Surface(SIZE)
    renderer.draw(surface)
    return renderer, pygame.surfarray.array3d(surface).astype(int)  # (W, H, 3)


def is_hitbox_red(pixel) -> bool:
    r, g, b = pixel
    return r - g > 60 and r - b > 60


# ---------------------------------------------------------------------- the data
def test_sizes_are_libmelees(replays):
    """assets/characters.json holds characterdata.csv's sizes, under melee_ids.json's names."""
    with open(replays.parent / "reference" / "melee_facts.json", encoding="utf-8") as f:
        facts = json.load(f)["framedata_csv"]["characterdata_csv"]
    assert len(facts) == 27
    for row in facts:
        internal = int(row["CharacterIndex"])
        assert assets.character_size(internal) == float(row["size"]), row["Character"]
    data = json.loads((assets.ASSETS_DIR / "characters.json").read_text(encoding="utf-8"))
    for internal, entry in data["characters"].items():
        assert entry["name"] == assets.character_name(int(internal))


def test_hitboxes_follow_melees_frame_data():
    # Falco's jab is active on frames 2-3, Fox's neutral air on frames 4-31, Marth's jab on
    # 4-7 with four hitboxes along the sword (Melee's frame data; libmelee's table).
    assert assets.hitboxes(FALCO, NEUTRAL_ATTACK_1, 1) == ()
    assert len(assets.hitboxes(FALCO, NEUTRAL_ATTACK_1, 2)) == 2
    assert assets.hitboxes(FALCO, NEUTRAL_ATTACK_1, 4) == ()
    active = [f for f in range(1, 60) if assets.hitboxes(FOX, NAIR, f)]
    assert active == list(range(4, 32))
    assert [len(assets.hitboxes(MARTH, NEUTRAL_ATTACK_1, f)) for f in range(3, 9)] == [
        0,
        4,
        4,
        4,
        4,
        0,
    ]
    radius, x, _ = assets.hitboxes(MARTH, NEUTRAL_ATTACK_1, 5)[3]
    assert radius > 0 and x > 15  # the sword's tip, in front of Marth
    assert assets.hitboxes(FOX, 14, 1) == ()  # standing has none


def test_replay_state_age_counts_from_zero_at_each_action(throw_grab):
    """The client counts `state_age` as the server's rules do (the wire's meaning), so a
    replay's hitboxes come from the same frame of the table as a live game's."""
    action = throw_grab.columns["p2_action"]
    age = throw_grab.columns["p2_state_age"]
    starts = np.nonzero(action[1:] != action[:-1])[0] + 1
    assert (age[starts] == 0).all()
    going_on = starts[:-1][action[starts[:-1] + 1] == action[starts[:-1]]]
    assert len(going_on) > 100 and (age[going_on + 1] == 1).all()


# ---------------------------------------------------------------------- poses
def test_each_kind_of_action_has_its_pose(throw_grab):
    player = throw_grab.frame(0).players[1]

    def pose(action, airborne=False):
        return figures.pose_of(player.model_copy(update={"action": action, "airborne": airborne}))

    assert pose(14) == "stand"
    assert pose(20) == "run"
    assert pose(CROUCHING) == "crouch"
    assert pose(57) == "crouch"  # down tilt
    assert pose(SHIELD) == "shield"
    assert pose(29, airborne=True) == "airborne"  # FALLING
    assert pose(NAIR, airborne=True) == "airborne"
    assert pose(38, airborne=True) == "tumble"
    assert pose(88, airborne=True) == "tumble"  # DAMAGE_FLY_NEUTRAL
    assert pose(253, airborne=True) == "ledge"
    assert pose(183) == "lying"
    assert pose(75) == "reeling"
    assert pose(212) == "grab"


def test_a_crouch_is_lower_and_a_figure_is_its_characters_height(throw_grab):
    row = first_row(throw_grab, 2, lambda p: p.action == 14)
    marth = throw_grab.frame(row).players[1].model_copy(update={"x": 0.0, "y": 0.0})
    standing = figures.layout(marth, 0.0, 0.0)
    crouching = figures.layout(marth.model_copy(update={"action": CROUCHING}), 0.0, 0.0)
    assert standing.top == pytest.approx(assets.character_size(MARTH), abs=0.3)
    assert crouching.top < 0.7 * standing.top
    fox = figures.layout(marth.model_copy(update={"character": FOX}), 0.0, 0.0)
    assert fox.top < standing.top  # Fox (11) is smaller than Marth (14)


def test_builds_broad_and_round(throw_grab):
    marth = throw_grab.frame(0).players[1].model_copy(update={"action": 14, "airborne": False})

    def torso_of(character):
        figure = figures.layout(marth.model_copy(update={"character": character}), 0.0, 0.0)
        return next(p for p in figure.parts if p[0].kind == "torso"), figure

    (_, a, b, radius), jigglypuff = torso_of(15)
    assert a == b and not any(p[0].kind == "head" for p in jigglypuff.parts)  # a ball
    assert radius == pytest.approx(0.4 * assets.character_size(15))
    bowser_torso, _ = torso_of(5)
    fox_torso, _ = torso_of(FOX)
    assert bowser_torso[3] / assets.character_size(5) > fox_torso[3] / assets.character_size(FOX)


def test_a_hanging_figure_holds_the_ledge(throw_grab):
    row = first_row(throw_grab, 2, lambda p: p.action == 253)
    renderer = Renderer(SIZE, throw_grab.stage, throw_grab.characters)
    player = throw_grab.frame(row).players[1]
    figure = renderer.figure(player, row)
    main = renderer.stage.main
    corner = (main.right_x if player.x > 0 else main.left_x, main.y)
    hands = [b for part, a, b, r in figure.parts if part.kind == "limb" and b[1] > player.y]
    assert hands and min(np.hypot(h[0] - corner[0], h[1] - corner[1]) for h in hands) < 1.0
    assert figure.centre[1] < main.y  # the body hangs below the stage's surface


# ---------------------------------------------------------------------- hitboxes drawn
def test_a_jabs_hitboxes_are_drawn_in_front_of_the_character(throw_grab):
    row = first_row(
        throw_grab, 2, lambda p: p.action == NEUTRAL_ATTACK_1 and figures.active_hitboxes(p)
    )
    for facing in (1, -1):
        frame = alone(throw_grab, row, 2, facing=facing)
        renderer, pixels = draw(throw_grab, frame)
        marth = frame.players[1]
        boxes = figures.active_hitboxes(marth)
        assert len(boxes) == 4
        for x, y, _ in boxes:
            assert (x - marth.x) * facing > 0  # in front, whichever way Marth faces
            px, py = renderer.camera.to_screen(x, y)
            assert is_hitbox_red(pixels[px, py]), (facing, pixels[px, py])
            # Behind Marth, where the hitbox would be facing the other way: nothing red.
            bx, by = renderer.camera.to_screen(2 * marth.x - x, y)
            assert not is_hitbox_red(pixels[bx, by])


def test_an_aerials_hitboxes_move_with_its_frame(throw_grab):
    row = first_row(throw_grab, 1, lambda p: 65 <= p.action <= 69 and figures.active_hitboxes(p))
    falco = throw_grab.frame(row).players[0]
    frame = figures.action_frame(falco)
    assert figures.active_hitboxes(falco) == [
        (falco.x + falco.facing * dx, falco.y + dy, r)
        for r, dx, dy in assets.hitboxes(FALCO, falco.action, frame)
    ]
    # Before the move's first active frame there is nothing to draw.
    first = next(f for f in range(1, 60) if assets.hitboxes(FALCO, falco.action, f))
    early = falco.model_copy(update={"state_age": float(first - 2)})
    assert figures.active_hitboxes(early) == []


# ---------------------------------------------------------------------- shield
def test_the_shield_bubble_shrinks_with_shield_health(throw_grab):
    row = first_row(throw_grab, 2, lambda p: p.action == SHIELD and not p.airborne)
    sizes = {}
    for health in (60.0, 15.0):
        frame = alone(throw_grab, row, 2, shield=health, y=0.0)
        renderer, pixels = draw(throw_grab, frame)
        centre = renderer.camera.to_screen(*renderer.figure(frame.players[1], frame.frame).centre)
        radius = renderer.camera.length(figures.shield_radius(frame.players[1]))
        # The bubble's rim is drawn at its radius, left of the body.
        rim = pixels[centre[0] - radius + 1, centre[1]]
        assert (rim != BACKGROUND).any(), health
        sizes[health] = radius
    assert sizes[15.0] < sizes[60.0] * 0.6


# ---------------------------------------------------------------------- on the stage
def test_a_grounded_figure_stands_on_the_stage_when_its_position_dips(tech_tester):
    """Melee moves a thrown or landing character's position up to 12.5 units below the
    stage while it stays on the ground: Captain Falcon was drawn half sunk into it."""
    row = first_row(tech_tester, 1, lambda p: p.y < -5 and not p.airborne)
    frame = alone(tech_tester, row, 1)
    renderer, pixels = draw(tech_tester, frame)
    falcon = frame.players[0]
    surface_y = renderer.stage.main.y
    assert renderer.feet(falcon, frame.frame)[1] == surface_y
    colour = np.array(PORT_COLOURS[1])
    limb = np.array(figures.shade(PORT_COLOURS[1], figures.LIMB_SHADE))
    above_hud = pixels[:, : renderer.hud_top(pygame.Surface(SIZE))]
    drawn = (above_hud == colour).all(axis=2) | (above_hud == limb).all(axis=2)
    _, ys = np.nonzero(drawn)
    assert len(ys) > 100
    surface_row = renderer.camera.to_screen(0.0, surface_y)[1]
    assert ys.max() <= surface_row + 1  # nothing of Falcon below the stage's surface


def test_an_airborne_figure_is_drawn_where_it_is(throw_grab):
    row = first_row(throw_grab, 1, lambda p: p.airborne and p.y > 30)
    renderer = Renderer(SIZE, throw_grab.stage, throw_grab.characters)
    falco = throw_grab.frame(row).players[0].model_copy(update={"hitlag": 0.0})
    assert renderer.feet(falco, row) == (falco.x, falco.y)


# ---------------------------------------------------------------------- the HUD
def test_characters_and_ko_bursts_never_cover_the_hud(throw_grab):
    row = first_row(throw_grab, 1, lambda p: p.action == 14)
    empty = alone(throw_grab, row, 1, x=-200.0)
    renderer, before = draw(throw_grab, empty)
    plate = renderer.hud_plates(pygame.Surface(SIZE))[1]
    # Put P1 where its torso maps into its own HUD panel, and a KO burst at the bottom.
    cam = renderer.camera
    x = cam.cx + (plate.centerx - SIZE[0] / 2) / cam.scale
    y = cam.cy - (plate.centery - SIZE[1] / 2) / cam.scale
    frame = alone(throw_grab, row, 1, x=x, y=y - 6.0, airborne=True)
    renderer.update(frame, 1 / 60, snap=False)
    renderer.camera.cx, renderer.camera.cy, renderer.camera.width = cam.cx, cam.cy, cam.width
    renderer.effects.append(Effect("ko", x, y, PORT_COLOURS[1], age=10))
    surface = pygame.Surface(SIZE)
    renderer.draw(surface)
    after = pygame.surfarray.array3d(surface).astype(int)
    region = (slice(plate.left, plate.right), slice(plate.top, plate.bottom))
    # The panel's pixels are the same with a character and a burst behind it.
    assert (before[region] == after[region]).all()
    # ... and both were drawn: the burst's rays are above the panel.
    above = after[plate.left : plate.right, plate.top - 120 : plate.top]
    assert (above == np.array(PORT_COLOURS[1])).all(axis=2).any()


# ---------------------------------------------------------------------- labels
def test_the_action_name_shows_with_the_overlay_only(throw_grab, monkeypatch):
    texts = []

    class SpyFont(pygame.font.Font):
        def render(self, text, *args, **kwargs):
            texts.append(text)
            return super().render(text, *args, **kwargs)

    monkeypatch.setattr(pygame.font, "Font", SpyFont)
    frame = alone(throw_grab, 3000, 1)
    draw(throw_grab, frame)
    plain = list(texts)
    texts.clear()
    draw(throw_grab, frame, show_overlay=True)
    name = frame.players[0].action_name.lower()
    assert "P1" in plain and not any(name in t for t in plain)
    assert any(name in t for t in texts)


# ---------------------------------------------------------------------- the scripts
def _script(name: str):
    import importlib.util

    path = assets.ASSETS_DIR.parent / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Lines of libmelee 0.47.6's melee/characterdata.csv and melee/framedata.csv (Falco's jab).
CHARACTERDATA = """\
"Character","CharacterIndex","Jumps","Friction","size","Gravity","TerminalVelocity",\
"MaxWalkSpeed","InitDJSpeed","FastFallSpeed","AirSpeed","AirFriction","AirMobility",\
"InitDJSpeed_x"
"Falco",22,1,0.08,11,0.17,3.1,1.4,3.684,3.5,0.83,0.02,0.07,0.92
"""
FRAMEDATA = """\
"character","action","frame","hitbox_1_status","hitbox_1_size","hitbox_1_x","hitbox_1_y",\
"hitbox_2_status","hitbox_2_size","hitbox_2_x","hitbox_2_y","hitbox_3_status","hitbox_3_size",\
"hitbox_3_x","hitbox_3_y","hitbox_4_status","hitbox_4_size","hitbox_4_x","hitbox_4_y",\
"locomotion_x","locomotion_y","iasa","facing_changed","projectile"
22,44,1,"False",0,0,0,"False",0,0,0,"False",0,0,0,"False",0,0,0,0,0,"False","False","False"
22,44,2,"True",3.5153999329,5.7484931946,6.9592691826,"True",3.5153999329,7.4789886475,\
10.4514571594,"False",0,0,0,"False",0,0,0,0,0,"False","False","False"
22,44,3,"True",3.5153999329,17.7990608215,9.3368321823,"True",3.5153999329,10.3106994629,\
8.8969365524,"False",0,0,0,"False",0,0,0,0,0,"False","False","False"
"""


def test_the_asset_is_what_the_script_makes_of_libmelees_tables(tmp_path):
    (tmp_path / "characterdata.csv").write_text(CHARACTERDATA.replace("\\\n", ""))
    (tmp_path / "framedata.csv").write_text(FRAMEDATA.replace("\\\n", ""))
    made = _script("assets/make_characters.py").build(folder=tmp_path)
    assert made["characters"] == {"22": {"name": "FALCO", "size": 11.0}}
    assert made["hitboxes"] == {
        "22": {
            "44": {
                "2": [[3.5, 5.7, 7.0], [3.5, 7.5, 10.5]],
                "3": [[3.5, 17.8, 9.3], [3.5, 10.3, 8.9]],
            }
        }
    }
    for frame, boxes in made["hitboxes"]["22"]["44"].items():
        assert assets.hitboxes(FALCO, NEUTRAL_ATTACK_1, int(frame)) == tuple(map(tuple, boxes))


def test_the_docs_figures_are_made_from_real_frames(replays, tmp_path):
    script = _script("docs/make_screenshots.py")
    for character in (script.MARTH, script.FALCO):
        for situation, test in script.SITUATIONS.items():
            recording, row, port = script.find(replays, character, situation)
            player = recording.frame(row).players[port - 1]
            assert player.character == character and test(player, recording)
    image = pygame.image.load(str(script.make(replays, tmp_path)))
    assert image.get_size() == (2 * script.PANEL[0], 4 * script.PANEL[1])
