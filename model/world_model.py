"""The world model: FrameEncoder -> pre-norm Mamba-2 residual blocks -> FrameHeads.

Position t reads the state of frame t-1 and both players' controllers at frame t, and predicts
frame t (timing convention in `model.frame_spec`). Three ways to run it, all over one explicit
cache (`WorldModelCache`, one `Mamba2Cache` per layer):

- `forward(prev, controls)`: a whole sequence (training); with `cache=`, it starts from and
  updates that cache (prefill of a live game from a real replay);
- `step(prev, controls, cache)`: one frame for a batch of games, updating the cache in place;
- `decoding.decode(preds, prev, controls)`: predictions -> the next frame.

An action-conditioned model (`ModelConfig.action_conditioned`) also takes `teacher`, the real
action id and facing of each player in the predicted frames, (B, T, 2, 2) or (B, 2, 2), in
training; without it, it conditions on its own choice (`model.heads`).

The residual stream is kept in fp32 even when the weights are bf16 (`model.to(torch.bfloat16)`,
which halves the bytes a CPU step streams from memory) or the mixers run under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.encoder import FrameEncoder
from model.heads import ActionPicker, FrameHeads
from model.mamba2 import Mamba2, Mamba2Cache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


class Block(nn.Module):
    """x + mixer(norm(x)), with the residual x in fp32."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = Mamba2(
            config.d_model,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            headdim=config.headdim,
            chunk_size=config.chunk_size,
            layer_idx=layer_idx,
        )

    def forward(self, x: Tensor, cache: Mamba2Cache | None = None) -> Tensor:
        # The mixer's dtype (bf16 ok), read from conv1d: in_proj and out_proj may be int8
        # modules without a weight tensor (model.quantize).
        h = self.norm(x).to(self.mixer.conv1d.weight.dtype)
        return x + self.mixer(h, cache).float()

    def step(self, x: Tensor, cache: Mamba2Cache) -> Tensor:
        fused = self.mixer._fused_ops(cache) if x.dim() == 2 else None
        if fused is not None:  # the fused CPU kernels' RMSNorm, one op (model.cpu_kernels)
            h = fused.rms_norm(x, None, self.norm.weight, x.shape[-1], self.norm.eps)
        else:
            h = self.norm(x).to(self.mixer.conv1d.weight.dtype)
        return x + self.mixer.step(h, cache).float()


@dataclass
class WorldModelCache:
    layers: list[Mamba2Cache]

    @property
    def batch_size(self) -> int:
        return self.layers[0].ssm_state.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor view of the whole recurrent state (for snapshots)."""
        out = {}
        for i, layer in enumerate(self.layers):
            out[f"{i}.conv_state"] = layer.conv_state
            out[f"{i}.ssm_state"] = layer.ssm_state
        return out


class WorldModel(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        self.encoder = FrameEncoder(self.config)
        self.blocks = nn.ModuleList(Block(self.config, i) for i in range(self.config.n_layers))
        self.norm_f = RMSNorm(self.config.d_model, self.config.norm_eps)
        self.heads = FrameHeads(self.config)

    def allocate_inference_cache(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> WorldModelCache:
        return WorldModelCache(
            [b.mixer.allocate_inference_cache(batch_size, device=device) for b in self.blocks]
        )

    def forward(
        self,
        prev: dict[str, Tensor],
        controls: dict[str, Tensor],
        cache: WorldModelCache | None = None,
        teacher: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Sequences (B, T) -> predictions at every position (B, T, ...). With `cache`, the
        sequence continues from it and the cache ends holding the state after position T-1."""
        x = self.encoder(prev, controls).float()  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])  # (B, T, d_model)
        return self._heads(x, prev, teacher)

    def step(
        self,
        prev: dict[str, Tensor],
        controls: dict[str, Tensor],
        cache: WorldModelCache,
        teacher: Tensor | None = None,
        pick_action: ActionPicker | None = None,
    ) -> dict[str, Tensor]:
        """One frame for a batch of games: (B,) -> predictions (B, ...); updates `cache`.
        `pick_action` chooses the action a conditioned model predicts for (argmax if None)."""
        x = self.encoder(prev, controls).float()  # (B, d_model)
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x = block.step(x, layer_cache)  # (B, d_model)
        return self._heads(x, prev, teacher, pick_action)

    def _heads(
        self,
        x: Tensor,
        prev: dict[str, Tensor],
        teacher: Tensor | None = None,
        pick_action: ActionPicker | None = None,
    ) -> dict[str, Tensor]:
        # The heads' dtype, read from item_out, which model.quantize leaves as it is.
        h = self.norm_f(x).to(self.heads.item_out.weight.dtype)
        return self.heads(h, prev, teacher, pick_action)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
