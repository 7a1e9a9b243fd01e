"""FrameHeads: d_model features -> predictions for every predicted field; and the decoder
that turns predictions plus the previous frame into the next frame.

Output layout of `FrameHeads.forward`, a dict of tensors:
- `p1_<head>` / `p2_<head>` for every `frame_spec.PLAYER_HEADS` entry: (*lead,) for
  DISPLACEMENT, DELTA, VALUE and BINARY heads (a regression in scaled units, or a logit),
  (*lead, vocab) logits for CATEGORICAL heads;
- `item_<head>` for every `frame_spec.ITEM_HEADS` entry: the same with a slot axis,
  (*lead, ITEM_SLOTS) or (*lead, ITEM_SLOTS, vocab).

`head_targets` computes, from two consecutive frames, the values the heads are trained towards,
so that decoding a perfect prediction reproduces the next frame.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model import frame_spec as fs
from model import game_state as gs
from model.config import ModelConfig
from model.frame_spec import Head

MIN_PERCENT_CHANGE = 0.5
# Copy prior, in logits: categorical and binary fields mostly keep last frame's value (on the
# replays the action is unchanged on 95% of frames, the jumps, ground, hurtbox and last attack
# on more), so their heads predict the change relative to "same as before". A categorical head
# gets log(vocab) + COPY_PRIOR on the previous class, which makes "unchanged" about 88% likely
# while the head's own logits are still near zero; a binary head gets +-COPY_PRIOR.
COPY_PRIOR = 2.0


def _width(spec: fs.HeadSpec) -> int:
    return spec.vocab if spec.kind is Head.CATEGORICAL else 1


class FrameHeads(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.player_widths = [_width(s) for s in fs.PLAYER_HEADS]
        self.player = nn.Linear(config.d_model, 2 * sum(self.player_widths))
        # Items: a per-slot hidden vector, then one head shared by all slots.
        self.item_widths = [_width(s) for s in fs.ITEM_HEADS]
        self.item_hidden = nn.Linear(config.d_model, gs.ITEM_SLOTS * config.item_head_dim)
        self.item_out = nn.Linear(config.item_head_dim, sum(self.item_widths))

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        """h: (*lead, d_model) -> dict of predictions (see module docstring)."""
        out = {}
        per_player = self.player(h).unflatten(-1, (2, -1))  # (*lead, 2, sum widths)
        for index, p in enumerate(gs.PLAYERS):
            chunks = per_player[..., index, :].split(self.player_widths, dim=-1)
            for spec, chunk in zip(fs.PLAYER_HEADS, chunks, strict=True):
                out[f"{p}_{spec.name}"] = chunk if spec.kind is Head.CATEGORICAL else chunk[..., 0]
        slots = self.item_hidden(h).unflatten(-1, (gs.ITEM_SLOTS, -1))  # (*lead, slots, hid)
        chunks = self.item_out(torch.nn.functional.gelu(slots)).split(self.item_widths, dim=-1)
        for spec, chunk in zip(fs.ITEM_HEADS, chunks, strict=True):
            out[f"item_{spec.name}"] = chunk if spec.kind is Head.CATEGORICAL else chunk[..., 0]
        return out


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


def with_copy_prior(preds: dict[str, Tensor], prev: dict[str, Tensor]) -> dict[str, Tensor]:
    """The heads' raw output with the copy prior added to every player categorical and binary
    head and to `item_exists` (see COPY_PRIOR). Both the losses and `decode` read predictions
    through it, so the raw logits only have to learn when a field changes."""
    out = dict(preds)
    for p in gs.PLAYERS:
        for spec in fs.PLAYER_HEADS:
            key = f"{p}_{spec.name}"
            if spec.kind is Head.CATEGORICAL:
                logits = preds[key]
                last = fs.to_class(spec.name, prev[key]).unsqueeze(-1)  # (*lead, 1)
                # Made on the logits' device: a CUDA graph capture refuses host-to-device copies.
                bonus = torch.full(
                    last.shape,
                    math.log(spec.vocab) + COPY_PRIOR,
                    dtype=logits.dtype,
                    device=logits.device,
                )
                out[key] = logits.scatter_add(-1, last, bonus)
            elif spec.kind is Head.BINARY:
                last = fs.head_target(spec, prev[f"{p}_{fs.BINARY_HEAD_SOURCE[spec.name]}"])
                out[key] = preds[key] + COPY_PRIOR * (2 * last - 1).to(preds[key].dtype)
    was = prev["item_exists"].float()  # (*lead, slots)
    out["item_exists"] = preds["item_exists"] + COPY_PRIOR * (2 * was - 1).to(
        preds["item_exists"].dtype
    )
    return out


def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
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
    preds = with_copy_prior(preds, prev)
    frame: dict[str, Tensor] = {}
    for p in gs.PLAYERS:
        for spec in fs.PLAYER_HEADS:
            key, pred = f"{p}_{spec.name}", preds[f"{p}_{spec.name}"]
            if spec.kind is Head.DELTA:
                delta = pred.float() * spec.scale
                if spec.name == "percent":
                    # Damage comes in hits of at least 1%; a smaller predicted change is noise
                    # that would otherwise accumulate over a long game.
                    delta = torch.where(delta.abs() < MIN_PERCENT_CHANGE, 0.0, delta)
                frame[key] = prev[key].float() + delta
            elif spec.kind is Head.VALUE:
                value = pred.float() * spec.scale
                if fs.PLAYER_FIELD[spec.name].dtype != "float32":
                    value = value.round()
                frame[key] = value.clamp(min=0)
            elif spec.kind is Head.CATEGORICAL:
                frame[key] = fs.from_class(spec.name, _pick(pred, temperature, generator))
        facing = _pick_binary(preds[f"{p}_facing"], temperature, generator)
        frame[f"{p}_facing"] = torch.where(facing, 1, -1)
        on_ground = _pick_binary(preds[f"{p}_on_ground"], temperature, generator)
        frame[f"{p}_airborne"] = (~on_ground).long()
        for spec in fs.PLAYER_HEADS:  # after the velocities and `airborne` they depend on
            if spec.kind is Head.DISPLACEMENT:
                key = f"{p}_{spec.name}"
                implied = fs.implied_velocity(frame, p, spec.name)
                frame[key] = prev[key].float() + implied + preds[key].float() * spec.scale
        same_action = frame[f"{p}_action"] == prev[f"{p}_action"].long()
        age = prev[f"{p}_state_age"].float() + 1
        frame[f"{p}_state_age"] = torch.where(same_action, age, torch.zeros_like(age))
        frame[f"{p}_character"] = prev[f"{p}_character"]
        for name in fs.EXTERNAL_FIELDS:
            frame[f"{p}_{name}"] = controls[f"{p}_{name}"]
    frame["stage"] = prev["stage"]
    if "frame" in prev:
        frame["frame"] = prev["frame"] + 1

    exists = _pick_binary(preds["item_exists"], temperature, generator)
    frame["item_exists"] = exists
    for spec in fs.ITEM_HEADS:
        if spec.name == "exists":
            continue
        key, pred = f"item_{spec.name}", preds[f"item_{spec.name}"]
        default = fs.ITEM_FIELD[spec.name].default
        if spec.kind is Head.CATEGORICAL:
            value = fs.from_class(spec.name, _pick(pred, temperature, generator))
        else:
            value = pred.float() * spec.scale
        frame[key] = torch.where(exists, value, torch.full_like(value, default))
    return frame
