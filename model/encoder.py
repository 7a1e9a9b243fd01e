"""FrameEncoder: (previous frame, this frame's controllers) -> one d_model vector per position.

Reads only the fields listed in `model.frame_spec` (a test holds it to that). Floats are
normalised with the field's scale from `core.game_state`; categoricals go through one shared
embedding table (each field owns a block of rows) so that a frame costs one lookup per group
rather than one per field, which matters for the 60 Hz single-frame step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core import game_state as gs
from core.controller import BUTTON_BITS
from model import frame_spec as fs
from model.config import ModelConfig
from model.frames import player_columns, stacked_columns


class FrameEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # Player categoricals (both players share rows: the same action means the same
        # thing for either port) plus the stage.
        self.player_categoricals = fs.PLAYER_CATEGORICAL_INPUTS
        offsets, total = _offsets([fs.vocab_of(n) for n in self.player_categoricals])
        self.register_buffer("player_offsets", offsets, persistent=False)
        self.player_embedding = nn.Embedding(total, config.embed_dim)
        self.stage_embedding = nn.Embedding(gs.STAGE_VOCAB, config.embed_dim)
        offsets, total = _offsets([fs.vocab_of(n) for n in fs.ITEM_CATEGORICAL_INPUTS])
        self.register_buffer("item_offsets", offsets, persistent=False)
        self.item_embedding = nn.Embedding(total, config.item_embed_dim)

        scales = [fs.PLAYER_FIELD[n].scale for n in fs.PLAYER_FLOAT_INPUTS]
        self.register_buffer("player_scales", torch.tensor(scales), persistent=False)
        caps = [fs.STATE_AGE_CAP if n == "state_age" else torch.inf for n in fs.PLAYER_FLOAT_INPUTS]
        self.register_buffer("player_float_caps", torch.tensor(caps), persistent=False)
        # Ids above a vocabulary fold into its last class (see frame_spec.to_class).
        class_max = [fs.vocab_of(n) - 1 for n in self.player_categoricals]
        self.register_buffer("player_class_max", torch.tensor(class_max), persistent=False)
        item_scales = [1.0] + [fs.ITEM_FIELD[n].scale for n in fs.ITEM_FLOAT_INPUTS[1:]]
        self.register_buffer("item_scales", torch.tensor(item_scales), persistent=False)
        bits = torch.tensor(list(BUTTON_BITS.values()), dtype=torch.long)
        self.register_buffer("button_bits", bits, persistent=False)

        per_player = (
            len(fs.PLAYER_FLOAT_INPUTS)
            + len(fs.PLAYER_BINARY_INPUTS)
            + len(self.player_categoricals) * config.embed_dim
            + len(fs.CONTROLLER_FLOAT_INPUTS)
            + len(BUTTON_BITS)
        )
        per_item = (
            len(fs.ITEM_FLOAT_INPUTS) + len(fs.ITEM_CATEGORICAL_INPUTS) * config.item_embed_dim
        )
        self.n_features = 2 * per_player + config.embed_dim + gs.ITEM_SLOTS * per_item
        self.proj = nn.Linear(self.n_features, config.d_model)

    @staticmethod
    def input_fields() -> list[str]:
        """Every frame column the encoder reads (player fields without their prefix)."""
        names = list(fs.PLAYER_FLOAT_INPUTS + fs.PLAYER_BINARY_INPUTS)
        names += fs.PLAYER_CATEGORICAL_INPUTS + fs.CONTROLLER_FLOAT_INPUTS + ("buttons", "stage")
        names += [f"item_{n}" for n in fs.ITEM_FLOAT_INPUTS + fs.ITEM_CATEGORICAL_INPUTS]
        return names

    def forward(self, prev: dict[str, Tensor], controls: dict[str, Tensor]) -> Tensor:
        """prev: the state of frame t-1; controls: both players' controllers at frame t.
        Shapes (*lead) per scalar, (*lead, ITEM_SLOTS) per item field -> (*lead, d_model).

        Both players go through each op together (a players axis of 2), so that one live step
        costs a few dozen tensor ops rather than a few hundred.
        """
        floats = player_columns(prev, fs.PLAYER_FLOAT_INPUTS).float()  # (*lead, 2, n_float)
        floats = torch.minimum(floats, self.player_float_caps) / self.player_scales
        binaries = player_columns(prev, fs.PLAYER_BINARY_INPUTS)  # (*lead, 2, 2): facing, air
        binaries = torch.stack([binaries[..., 0] > 0, binaries[..., 1] != 0], -1).float()
        ids = player_columns(prev, self.player_categoricals).long()  # (*lead, 2, n_cat)
        ids = torch.minimum(ids.clamp(min=0), self.player_class_max) + self.player_offsets
        embedded = self.player_embedding(ids).flatten(-2)  # (*lead, 2, n_cat * embed)
        sticks = player_columns(controls, fs.CONTROLLER_FLOAT_INPUTS).float()  # (*lead, 2, 7)
        buttons = player_columns(controls, ("buttons",)).long()  # (*lead, 2, 1)
        pressed = ((buttons & self.button_bits) != 0).float()  # (*lead, 2, n_buttons)
        per_player = torch.cat([floats, binaries, embedded, sticks, pressed], -1)

        stage = self.stage_embedding(fs.to_class("stage", prev["stage"]))  # (*lead, embed)
        items = stacked_columns(prev, [f"item_{n}" for n in fs.ITEM_FLOAT_INPUTS]).float()
        items = items / self.item_scales  # (*lead, slots, n_float)
        item_ids = torch.stack(
            [fs.to_class(n, prev[f"item_{n}"]) for n in fs.ITEM_CATEGORICAL_INPUTS], -1
        )  # (*lead, slots, n_cat)
        item_embedded = self.item_embedding(item_ids + self.item_offsets).flatten(-2)
        items = torch.cat([items, item_embedded], -1).flatten(-2)  # (*lead, slots * per_item)

        features = torch.cat([per_player.flatten(-2), stage, items], -1)
        # The model's dtype, read from an embedding: proj may be an int8 module without a
        # weight tensor (model.quantize), which takes fp32.
        return self.proj(features.to(self.stage_embedding.weight.dtype))  # (*lead, d_model)


def _offsets(vocabs: list[int]) -> tuple[Tensor, int]:
    starts = torch.tensor([0, *vocabs[:-1]]).cumsum(0)
    return starts, sum(vocabs)
