"""One live step (model.step + decode) captured in a CUDA graph for a fixed batch size.

At 60 Hz a step of a small batch is dominated by kernel launches; replaying a captured graph
launches them all at once. The graph reads and writes fixed tensors, so this object owns its
inputs (`prev`, `controls`), its output frame and the recurrent cache of its batch: callers
copy inputs in, call `replay()`, and read `out` (or copy it away) before the next replay. Use
one per batch-size bucket. CUDA only; on CPU, call the model directly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.decoding import decode
from model.world_model import WorldModel, WorldModelCache


class CudaGraphStep:
    def __init__(self, model: WorldModel, prev: dict[str, Tensor], controls: dict[str, Tensor]):
        assert torch.cuda.is_available(), "CUDA graphs need a CUDA device"
        device = next(model.parameters()).device
        assert device.type == "cuda", "move the model to CUDA first"
        self.model = model
        self.batch_size = len(next(iter(prev.values())))
        self.prev = {k: v.to(device).clone() for k, v in prev.items()}
        self.controls = {k: v.to(device).clone() for k, v in controls.items()}
        self.cache: WorldModelCache = model.allocate_inference_cache(self.batch_size, device)

        # Warm up on a side stream (lazy initialisations must not happen during capture).
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out = self._step()
        self.reset_cache()

    def _step(self) -> dict[str, Tensor]:
        return decode(
            self.model.step(self.prev, self.controls, self.cache), self.prev, self.controls
        )

    def reset_cache(self) -> None:
        for tensor in self.cache.tensors().values():
            tensor.zero_()

    def replay(self, prev: dict[str, Tensor], controls: dict[str, Tensor]) -> dict[str, Tensor]:
        """Copy the inputs into the graph's tensors, run it, return its output tensors."""
        for key, tensor in self.prev.items():
            tensor.copy_(prev[key])
        for key, tensor in self.controls.items():
            tensor.copy_(controls[key])
        self.graph.replay()
        return self.out
