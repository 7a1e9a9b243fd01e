"""FrameHeads: d_model features -> predictions for every predicted field (decoding them into
the next frame is `model.decoding`).

Output layout of `FrameHeads.forward`, a dict of tensors:
- `p1_<head>` / `p2_<head>` for every `frame_spec.PLAYER_HEADS` entry: (*lead,) for
  DISPLACEMENT, DELTA, VALUE and BINARY heads (a regression in scaled units, or a logit),
  (*lead, vocab) logits for CATEGORICAL heads;
- `item_<head>` for every `frame_spec.ITEM_HEADS` entry: the same with a slot axis,
  (*lead, ITEM_SLOTS) or (*lead, ITEM_SLOTS, vocab).

The entries are views of two tensors, the players' (*lead, 2, width) and the items' (*lead,
slots, width), which the dict keeps (`Predictions`), so that decoding reads them in a few ops.

`head_targets` computes, from two consecutive frames, the values the heads are trained towards,
so that decoding a perfect prediction reproduces the next frame.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model import frame_spec as fs
from model import game_state as gs
from model.config import ModelConfig
from model.frame_spec import Head


def head_width(spec: fs.HeadSpec) -> int:
    """Columns of a head in the heads' output: its vocabulary if categorical, else one."""
    return spec.vocab if spec.kind is Head.CATEGORICAL else 1


PLAYER_WIDTHS = [head_width(s) for s in fs.PLAYER_HEADS]
ITEM_WIDTHS = [head_width(s) for s in fs.ITEM_HEADS]


class FrameHeads(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.player = nn.Linear(config.d_model, 2 * sum(PLAYER_WIDTHS))
        # Items: a per-slot hidden vector, then one head shared by all slots.
        self.item_hidden = nn.Linear(config.d_model, gs.ITEM_SLOTS * config.item_head_dim)
        self.item_out = nn.Linear(config.item_head_dim, sum(ITEM_WIDTHS))

    def forward(self, h: Tensor) -> Predictions:
        """h: (*lead, d_model) -> dict of predictions (see module docstring)."""
        players = self.player(h).unflatten(-1, (2, -1))  # (*lead, 2, sum widths)
        slots = self.item_hidden(h).unflatten(-1, (gs.ITEM_SLOTS, -1))  # (*lead, slots, hid)
        items = self.item_out(torch.nn.functional.gelu(slots))  # (*lead, slots, sum widths)
        return split_outputs(players, items)


class Predictions(dict):
    """The heads' predictions by name, views of the two tensors they come from, which it keeps
    as `raw` (players, items). Changing an entry drops `raw`, which no longer matches; a copy
    (`dict(preds)`) is a plain dict."""

    raw: tuple[Tensor, Tensor] | None = None


def _drops_raw(method):
    def changed(self, *args, **kwargs):
        self.raw = None
        return method(self, *args, **kwargs)

    return changed


for _name in (
    "__setitem__",
    "__delitem__",
    "__ior__",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "update",
):
    setattr(Predictions, _name, _drops_raw(getattr(dict, _name)))


def split_outputs(players: Tensor, items: Tensor) -> Predictions:
    """The heads' two output tensors as predictions by name: `<player>_<head>` and
    `item_<head>`, (*lead,) or (*lead, vocab) per player head, with a slot axis for items."""
    out = Predictions()
    for index, p in enumerate(gs.PLAYERS):
        chunks = players[..., index, :].split(PLAYER_WIDTHS, dim=-1)
        for spec, chunk in zip(fs.PLAYER_HEADS, chunks, strict=True):
            out[f"{p}_{spec.name}"] = chunk if spec.kind is Head.CATEGORICAL else chunk[..., 0]
    out.update(item_outputs(items))
    out.raw = players, items
    return out


def item_outputs(items: Tensor) -> dict[str, Tensor]:
    """The item heads' tensor (*lead, width) as `item_<head>` views."""
    chunks = items.split(ITEM_WIDTHS, dim=-1)
    return {
        f"item_{spec.name}": chunk if spec.kind is Head.CATEGORICAL else chunk[..., 0]
        for spec, chunk in zip(fs.ITEM_HEADS, chunks, strict=True)
    }


def head_outputs(preds: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The two tensors of `split_outputs` back from predictions by name: kept by `Predictions`,
    else (a dict made some other way) put together again."""
    raw = getattr(preds, "raw", None)
    if raw is not None:
        return raw

    def column(value: Tensor, spec: fs.HeadSpec) -> Tensor:
        return value if spec.kind is Head.CATEGORICAL else value.unsqueeze(-1)

    players = torch.stack(
        [
            torch.cat([column(preds[f"{p}_{s.name}"], s) for s in fs.PLAYER_HEADS], -1)
            for p in gs.PLAYERS
        ],
        -2,
    )
    items = torch.cat([column(preds[f"item_{s.name}"], s) for s in fs.ITEM_HEADS], -1)
    return players, items


def head_targets(prev: dict[str, Tensor], frame: dict[str, Tensor]) -> dict[str, Tensor]:
    """Targets for every head, from frame t-1 (`prev`) and frame t (`frame`): floats for
    DELTA / VALUE / BINARY heads, class indices (long) for CATEGORICAL heads."""
    targets = {}
    for p in gs.PLAYERS:
        for spec in fs.PLAYER_HEADS:
            key = f"{p}_{spec.name}"
            if spec.kind is Head.DISPLACEMENT:
                move = frame[key].float() - prev[key].float()
                implied = fs.implied_velocity(frame, p, spec.name)
                targets[key] = (move - implied) / spec.scale
            elif spec.kind is Head.DELTA:
                targets[key] = (frame[key].float() - prev[key].float()) / spec.scale
            elif spec.kind is Head.VALUE:
                targets[key] = frame[key].float() / spec.scale
            elif spec.kind is Head.BINARY:
                source = frame[f"{p}_{fs.BINARY_HEAD_SOURCE[spec.name]}"]
                targets[key] = fs.head_target(spec, source)
            else:
                targets[key] = fs.to_class(spec.name, frame[key])
    for spec in fs.ITEM_HEADS:
        key = f"item_{spec.name}"
        if spec.kind is Head.VALUE:
            targets[key] = frame[key].float() / spec.scale
        elif spec.kind is Head.BINARY:
            targets[key] = frame[key].float()
        else:
            targets[key] = fs.to_class(spec.name, frame[key])
    return targets
