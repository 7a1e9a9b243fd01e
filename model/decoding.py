"""From the heads' predictions and the previous frame to the next frame, and the copy prior.

Both work on the heads' two output tensors (`heads.head_outputs`): the players' (*lead, 2,
width), both players and every head of a kind at once, and the items' (*lead, slots, width).
A head of one kind (every delta, every value, ...) is a neighbouring column of those tensors,
so decoding a frame costs a few dozen tensor ops whatever the number of fields. Per field, as
this module did before, it cost about 400, which at 60 Hz on a CPU was a quarter of a live
step of mamba2-large at batch 1 (BENCHMARKS.md, "Live step latency"). The arithmetic is the
per-field one, element for element, so the frames are the same to the bit.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from core import game_state as gs
from model import frame_spec as fs
from model.frame_spec import Head, HeadSpec
from model.frames import player_columns
from model.heads import COPY_PRIOR, head_outputs, head_width, split_outputs

MIN_PERCENT_CHANGE = 0.5
# A character at rest has speeds of exactly 0 in Melee (85% of the corpus's ground-speed frames),
# and a moving one rarely under this (0.7% of frames); the slowest start of a move, a slow
# faller's first frame of gravity, is 0.064 units a frame (Jigglypuff, libmelee's
# characterdata.csv). A decoded speed below it is 0, as is a position residual below
# REST_RESIDUAL (0 on 90% of real frames): otherwise the heads' small errors add up, frame after
# frame, into a standing character that slides and floats away.
REST_SPEED = 0.015
REST_RESIDUAL = 0.05


def _columns(specs: tuple[HeadSpec, ...]) -> dict[str, tuple[int, int]]:
    """Where each head sits in a row of the heads' output: name -> (start, stop)."""
    out, start = {}, 0
    for spec in specs:
        out[spec.name] = (start, start + head_width(spec))
        start += head_width(spec)
    return out


def _block(specs: tuple[HeadSpec, ...], kind: Head) -> tuple[list[HeadSpec], slice]:
    """The one-column heads of `kind` and the columns they fill, which must be neighbours."""
    heads = [s for s in specs if s.kind is kind]
    columns = _columns(specs)
    starts = [columns[s.name][0] for s in heads]
    assert starts == list(range(starts[0], starts[0] + len(heads))), f"{kind} heads are apart"
    return heads, slice(starts[0], starts[0] + len(heads))


PLAYER_COLUMNS = _columns(fs.PLAYER_HEADS)
ITEM_COLUMNS = _columns(fs.ITEM_HEADS)
_DISPLACEMENT, _DISPLACEMENT_COLS = _block(fs.PLAYER_HEADS, Head.DISPLACEMENT)
_DELTA, _DELTA_COLS = _block(fs.PLAYER_HEADS, Head.DELTA)
_VALUE, _VALUE_COLS = _block(fs.PLAYER_HEADS, Head.VALUE)
_BINARY, _BINARY_COLS = _block(fs.PLAYER_HEADS, Head.BINARY)
_CATEGORICAL = [s for s in fs.PLAYER_HEADS if s.kind is Head.CATEGORICAL]
_ITEM_VALUE, _ITEM_VALUE_COLS = _block(fs.ITEM_HEADS, Head.VALUE)
_ITEM_CATEGORICAL = [s for s in fs.ITEM_HEADS if s.kind is Head.CATEGORICAL]
_ITEM_EXISTS = ITEM_COLUMNS["exists"][0]
# The previous frame's fields decoding reads, per player, in one gather.
_PREV_FIELDS = (
    [s.name for s in _DISPLACEMENT]
    + [s.name for s in _DELTA]
    + [fs.BINARY_HEAD_SOURCE[s.name] for s in _BINARY]
    + [s.name for s in _CATEGORICAL]
    + ["state_age"]
)
_PREV: dict[str, int] = {}
for _i, _name in enumerate(_PREV_FIELDS):
    _PREV.setdefault(_name, _i)  # hurtbox_state is there twice: a source and a categorical


@functools.lru_cache(maxsize=16)
def _constants(device: torch.device) -> dict[str, Tensor]:
    """Per-column scales, masks and copy-prior bonuses, made once per device: a CUDA graph
    capture refuses a host-to-device copy, and a trace keeps them as constants. Made outside
    inference mode, so that training's autograd may use tensors a server made first."""
    with torch.inference_mode(False):

        def tensor(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        return {
            "displacement_scale": tensor([s.scale for s in _DISPLACEMENT]),
            "delta_scale": tensor([s.scale for s in _DELTA]),
            # Damage comes in hits of at least 1%; a smaller predicted change of percent is
            # noise that would otherwise accumulate over a long game.
            "delta_is_percent": tensor([s.name == "percent" for s in _DELTA], torch.bool),
            "delta_is_speed": tensor([s.name.startswith("vel_") for s in _DELTA], torch.bool),
            "delta_is_self_y": tensor([s.name == "vel_self_y" for s in _DELTA], torch.bool),
            "value_scale": tensor([s.scale for s in _VALUE]),
            "value_is_integer": tensor(
                [fs.PLAYER_FIELD[s.name].dtype != "float32" for s in _VALUE], torch.bool
            ),
            "class_max": tensor([s.vocab - 1 for s in _CATEGORICAL], torch.long),
            "class_start": tensor([PLAYER_COLUMNS[s.name][0] for s in _CATEGORICAL], torch.long),
            "class_bonus": tensor([math.log(s.vocab) + COPY_PRIOR for s in _CATEGORICAL]),
            "binary_column": tensor([PLAYER_COLUMNS[s.name][0] for s in _BINARY], torch.long),
            "item_scale": tensor([s.scale for s in _ITEM_VALUE]),
            "item_default": tensor([fs.ITEM_FIELD[s.name].default for s in _ITEM_VALUE]),
        }


def _binary_targets(prev: Tensor) -> Tensor:
    """`frame_spec.head_target` of each binary head, from the gathered previous frame."""
    targets = []
    for spec in _BINARY:
        source = prev[..., _PREV[fs.BINARY_HEAD_SOURCE[spec.name]]]
        targets.append(fs.head_target(spec, source))
    return torch.stack(targets, -1)  # (*lead, 2, n binary)


def _add_copy_prior(
    players: Tensor, items: Tensor, prev_players: Tensor, prev_exists: Tensor
) -> tuple[Tensor, Tensor]:
    """The players' output with the copy prior added (see COPY_PRIOR), as one scatter_add
    over its columns (the previous class of every categorical head, every binary head), and
    the `item_exists` logits with theirs."""
    c = _constants(players.device)
    first = _PREV[_CATEGORICAL[0].name]
    last_class = prev_players[..., first : first + len(_CATEGORICAL)].long()
    last_class = torch.minimum(last_class.clamp(min=0), c["class_max"])  # frame_spec.to_class
    binary_columns = c["binary_column"].expand(*last_class.shape[:-1], len(_BINARY))
    columns = torch.cat([c["class_start"] + last_class, binary_columns], -1)
    binary_bonus = COPY_PRIOR * (2 * _binary_targets(prev_players) - 1)
    class_bonus = c["class_bonus"].expand_as(last_class)
    bonus = torch.cat([class_bonus, binary_bonus], -1).to(players.dtype)
    players = players.scatter_add(-1, columns, bonus)
    exists = items[..., _ITEM_EXISTS]
    exists = exists + COPY_PRIOR * (2 * prev_exists.float() - 1).to(items.dtype)
    return players, exists


def with_copy_prior(preds: dict[str, Tensor], prev: dict[str, Tensor]) -> dict[str, Tensor]:
    """The heads' output (a dict, as `FrameHeads` returns it) with the copy prior added to every
    player categorical and binary head and to `item_exists`. Both the losses and `decode`
    read predictions through it, so the raw logits only have to learn when a field changes."""
    players, items = head_outputs(preds)
    prev_players = player_columns(prev, _PREV_FIELDS).float()
    players, exists = _add_copy_prior(players, items, prev_players, prev["item_exists"])
    out = split_outputs(players, items)
    out["item_exists"] = exists
    return out


def pick_class(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Argmax at temperature 0, else a sample from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def _pick_binary(logit: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logit > 0
    p = torch.sigmoid(logit.float() / temperature)
    return torch.rand(p.shape, generator=generator, device=p.device) < p


def decode(
    preds: dict[str, Tensor],
    prev: dict[str, Tensor],
    controls: dict[str, Tensor],
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The next frame (game units, float32 / int64) from predictions at one position.

    Predicted fields come from the heads, `state_age` from its rule, character and stage from
    the previous frame, controllers from `controls` (the inputs of this frame). Categoricals
    are argmax at temperature 0, else sampled with `generator` (seeded: reproducible). The copy
    prior (`with_copy_prior`) is added here, so `preds` is the heads' raw output.
    """
    c = _constants(next(iter(prev.values())).device)
    prev_players = player_columns(prev, _PREV_FIELDS).float()  # (*lead, 2, fields)
    players, items = head_outputs(preds)
    players, exists_logit = _add_copy_prior(players, items, prev_players, prev["item_exists"])

    def prev_block(heads: list[HeadSpec]) -> Tensor:
        first = _PREV[heads[0].name]
        return prev_players[..., first : first + len(heads)]

    delta = players[..., _DELTA_COLS].float() * c["delta_scale"]
    small = (delta.abs() < MIN_PERCENT_CHANGE) & c["delta_is_percent"]
    deltas = prev_block(_DELTA) + torch.where(small, 0.0, delta)  # (*lead, 2, n delta)
    resting = (deltas.abs() < REST_SPEED) & c["delta_is_speed"]
    deltas = torch.where(resting, 0.0, deltas)
    value = players[..., _VALUE_COLS].float() * c["value_scale"]
    values = torch.where(c["value_is_integer"], value.round(), value).clamp(min=0)
    classes = {}
    for spec in _CATEGORICAL:
        start, stop = PLAYER_COLUMNS[spec.name]
        classes[spec.name] = fs.from_class(
            spec.name, pick_class(players[..., start:stop], temperature, generator)
        )  # (*lead, 2)
    binary = _pick_binary(players[..., _BINARY_COLS], temperature, generator)
    facing = torch.where(binary[..., 0], 1, -1)  # (*lead, 2)
    airborne = (~binary[..., 1]).long()
    # On the ground a character's own vertical speed never points up (in the corpus it does on
    # 0.4% of grounded frames, by under 0.4 units). A landing whose predicted speed change
    # overshot 0 would otherwise rise from the stage frame after frame, still LANDING, up to
    # the top blast zone, as a player saw it do after a jump.
    rising = c["delta_is_self_y"] & (deltas > 0) & (airborne == 0).unsqueeze(-1)
    deltas = torch.where(rising, 0.0, deltas)
    # Positions follow this frame's velocities (frame_spec.implied_velocity), plus a residual.
    velocity = {s.name: deltas[..., i] for i, s in enumerate(_DELTA)}
    own_x = torch.where(airborne != 0, velocity["vel_self_x_air"], velocity["vel_self_x_ground"])
    implied = torch.stack(
        [
            own_x + velocity["vel_knockback_x"],
            velocity["vel_self_y"] + velocity["vel_knockback_y"],
        ],
        -1,
    )
    displacement = players[..., _DISPLACEMENT_COLS].float() * c["displacement_scale"]
    displacement = torch.where(displacement.abs() < REST_RESIDUAL, 0.0, displacement)
    positions = prev_block(_DISPLACEMENT) + implied + displacement  # (*lead, 2, 2)
    same_action = classes["action"] == prev_players[..., _PREV["action"]].long()
    age = prev_players[..., _PREV["state_age"]] + 1
    state_age = torch.where(same_action, age, torch.zeros_like(age))

    deltas, values = deltas.unbind(-1), values.unbind(-1)
    predicted = {s.name: deltas[i] for i, s in enumerate(_DELTA)}
    predicted |= {s.name: values[i] for i, s in enumerate(_VALUE)}
    predicted |= classes
    positions = positions.unbind(-1)
    frame: dict[str, Tensor] = {}
    for index, p in enumerate(gs.PLAYERS):
        # Keys in PLAYER_HEADS order, as every frame has them: a frame's key order is its
        # packed layout (model/packed_frame.py `layout_of`), which a traced step fixes.
        for spec in fs.PLAYER_HEADS:
            if spec.name in predicted:
                frame[f"{p}_{spec.name}"] = predicted[spec.name][..., index]
        frame[f"{p}_facing"] = facing[..., index]
        frame[f"{p}_airborne"] = airborne[..., index]
        for i, spec in enumerate(_DISPLACEMENT):
            frame[f"{p}_{spec.name}"] = positions[i][..., index]
        frame[f"{p}_state_age"] = state_age[..., index]
        frame[f"{p}_character"] = prev[f"{p}_character"]
        for name in fs.EXTERNAL_FIELDS:
            frame[f"{p}_{name}"] = controls[f"{p}_{name}"]
    frame["stage"] = prev["stage"]
    if "frame" in prev:
        frame["frame"] = prev["frame"] + 1

    exists = _pick_binary(exists_logit, temperature, generator)  # (*lead, slots)
    frame["item_exists"] = exists
    for spec in _ITEM_CATEGORICAL:
        start, stop = ITEM_COLUMNS[spec.name]
        value = fs.from_class(spec.name, pick_class(items[..., start:stop], temperature, generator))
        default = fs.ITEM_FIELD[spec.name].default
        frame[f"item_{spec.name}"] = torch.where(exists, value, torch.full_like(value, default))
    item_values = items[..., _ITEM_VALUE_COLS].float() * c["item_scale"]
    item_values = torch.where(exists.unsqueeze(-1), item_values, c["item_default"]).unbind(-1)
    for i, spec in enumerate(_ITEM_VALUE):
        frame[f"item_{spec.name}"] = item_values[i]
    return frame
