"""The live step captured in CUDA graphs: `CudaGraphStep` (model.step + decode, one batch
size) and `GraphedLiveStep` (the simulation's tick: with the rules, every batch size).

At 60 Hz a step of a small batch is dominated by kernel launches; replaying a captured graph
launches them all at once. A graph reads and writes fixed tensors, so each object owns its
inputs, its output and the recurrent state of its batch: inputs are copied in before a
replay, and the output read (or copied away) before the next. CUDA only; on CPU, the trace
(`model.traced_step`) is the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.decoding import decode
from model.frames import Frames
from model.packed_frame import Layout, PackedFrame, pack
from model.rule_state import RuleState
from model.traced_step import LiveStep
from model.world_model import WorldModel, WorldModelCache


class CudaGraphStep:
    """model.step + decode for one batch size: callers copy inputs in with `replay(prev,
    controls)`, which returns the graph's output tensors, and keep the cache in `cache`."""

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


class GraphedLiveStep:
    """The live tick on CUDA as one graph replay: `LiveStep` with the rules (model.step,
    decode, the cast and Melee's rules), frames in and out packed, one graph per batch-size
    bucket (1, 2, 4, ...). Called like a `TracedStep` with rules:
    `(prev, controls, cache, rules) -> (PackedFrame, event codes)`, updating `cache` and
    `rules` in place.

    Why not `CudaGraphStep` and eager rules: that left the rules (a few hundred small ops) and
    a copy per frame field in and out (about two hundred) to run one by one, each paying
    Python, dispatcher and launch costs; a server tick of 16 demo games took 13 ms on an H200
    host for well under a millisecond of GPU work (BENCHMARKS.md). Here a tick is a few dozen
    copies and one replay.

    The graph owns tensors of `bucket` rows: the batch's rows are copied into the first ones
    before each replay and the cache's and rules' rows copied back after it. The rows past the
    batch hold what was last there (copies of the first game at capture, games that left
    since): they are stepped too and never read, as every op treats games independently."""

    path = "cuda graph"  # what runs the step, as `Simulation.last_step_path` says

    def __init__(
        self,
        model: WorldModel,
        layouts: tuple[Layout, Layout, Layout],
        order: list[str],
        capture: bool = True,
    ):
        """`layouts`, `order`: as `traced_step.live_layouts` gives them. `capture=False`
        runs `LiveStep` on the graph's tensors without a graph: the same copies and padding,
        on any device (tests on machines without CUDA)."""
        assert not capture or torch.cuda.is_available(), "CUDA graphs need a CUDA device"
        self.model, self.capture = model, capture
        self.live = LiveStep(model, *layouts).eval()
        self.layouts, self.order = layouts, order
        self.graphs: dict[int, _BucketGraph] = {}

    @staticmethod
    def bucket(size: int) -> int:
        """The batch size a batch of `size` games is padded to: the next power of two."""
        return 1 << (size - 1).bit_length()

    def captured(self, size: int) -> bool:
        """Whether a batch of `size` games has its graph already."""
        return self.bucket(size) in self.graphs

    def __call__(
        self, prev: Frames, controls: Frames, cache: WorldModelCache, rules: RuleState
    ) -> tuple[PackedFrame, Tensor]:
        size = len(rules.over)
        bucket = self.bucket(size)
        prev_layout, controls_layout, out_layout = self.layouts
        inputs = _LiveInputs(
            pack(prev, prev_layout),
            pack(controls, controls_layout),
            [layer.conv_state for layer in cache.layers],
            [layer.ssm_state for layer in cache.layers],
            rules.tensors(),
        )
        graph = self.graphs.get(bucket)
        if graph is None:
            graph = self.graphs[bucket] = _BucketGraph(self.live, bucket, inputs, self.capture)
        packed, codes = graph.run(inputs, size)
        return PackedFrame(packed, out_layout, self.order), codes


@dataclass
class _LiveInputs:
    """`LiveStep`'s arguments: packed frames (batch in dim 1), then the state (batch in dim
    0) that the step updates in place."""

    prev: list[Tensor]
    controls: list[Tensor]
    conv: list[Tensor]
    ssm: list[Tensor]
    rules: dict[str, Tensor]

    def frames(self) -> list[Tensor]:
        return [*self.prev, *self.controls]

    def state(self) -> list[Tensor]:
        return [*self.conv, *self.ssm, *self.rules.values()]


class _BucketGraph:
    def __init__(self, live: LiveStep, bucket: int, example: _LiveInputs, capture: bool):
        size = len(example.conv[0])
        cache = live.model.allocate_inference_cache(bucket, example.conv[0].device)
        self.inputs = _LiveInputs(  # the graph's own tensors, laid out as the example's
            [_with_rows(t, bucket, dim=1) for t in example.prev],
            [_with_rows(t, bucket, dim=1) for t in example.controls],
            [layer.conv_state for layer in cache.layers],
            [layer.ssm_state for layer in cache.layers],
            {k: _with_rows(t, bucket, dim=0) for k, t in example.rules.items()},
        )
        for dim, ours, theirs in self._pairs(example):
            ours.narrow(dim, 0, size).copy_(theirs)
            if bucket > size:  # padding: copies of the first game
                rest = ours.narrow(dim, size, bucket - size)
                rest.copy_(theirs.narrow(dim, 0, 1).expand_as(rest))
        args = (self.inputs.prev, self.inputs.controls, self.inputs.conv, self.inputs.ssm)
        args += (self.inputs.rules,)
        self.live, self.args = live, args
        self.graph: torch.cuda.CUDAGraph | None = None
        if not capture:
            return
        # Warm up on a side stream (lazy initialisations must not happen during capture). The
        # warm-up steps the graph's own tensors, whose rows are copied over before each replay.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                live(*args)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out, self.codes = live(*args)

    def _pairs(self, given: _LiveInputs) -> list[tuple[int, Tensor, Tensor]]:
        """(batch dim, the graph's tensor, the given one) for every input."""
        frames = [(1, a, b) for a, b in zip(self.inputs.frames(), given.frames(), strict=True)]
        state = [(0, a, b) for a, b in zip(self.inputs.state(), given.state(), strict=True)]
        return frames + state

    def run(self, given: _LiveInputs, size: int) -> tuple[list[Tensor], Tensor]:
        for dim, ours, theirs in self._pairs(given):
            ours.narrow(dim, 0, size).copy_(theirs)
        if self.graph is None:
            self.out, self.codes = self.live(*self.args)
        else:
            self.graph.replay()
        # The state is updated in place, as an eager step updates it.
        for ours, theirs in zip(self.inputs.state(), given.state(), strict=True):
            theirs.copy_(ours[:size])
        # Copies: the next replay overwrites the graph's output.
        return [t.narrow(1, 0, size).clone() for t in self.out], self.codes[:size].clone()


def _with_rows(t: Tensor, rows: int, dim: int) -> Tensor:
    """An empty tensor like `t` with `rows` rows along `dim`."""
    shape = list(t.shape)
    shape[dim] = rows
    return t.new_empty(shape)
