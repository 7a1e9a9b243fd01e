"""Simulation: the one object that steps a batch of games with the model and Melee's rules.

Live sessions in the server, headless policy-vs-policy matches and evaluation rollouts all go
through it, so what is measured is what is played. It holds, for every game in the batch, the
model's recurrent cache, the last frame, and the rule state (stocks, respawn invulnerability,
timer), as batched tensors whose row order is `game_ids`. One `step` makes one batched model
call for all games.

    sim = Simulation(model)
    a = sim.new_game(GameSetup(stage=31, characters=(1, 22)))      # standard start
    b = sim.new_game(replay=frames, start_frame=3000)                # take over a real game
    results = sim.step({a: controls_a, b: controls_b})             # {game_id: StepResult}
    snap = sim.snapshot(a); ...; sim.restore(a, snap)

Games join and leave at any frame; the other games' rows are untouched. With temperature 0
(the default) decoding is argmax; above 0, each game samples from its own seeded generator,
so a game's frames do not depend on which other games share its batch.

This module is the batch and its step. How a game starts (`GameSetup`, frame -123) is
`model/game_start.py`; snapshots and their copies out of and into the batch are
`model/snapshots.py`; the rules applied after the model are `model/rules.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from core import game_state as gs
from core.events import Event
from core.stages import get_stage
from model.compiled_step import FastestCpuStep, fastest_cpu_step
from model.cuda_graph import GraphedLiveStep
from model.decoding import decode, pick_class
from model.frames import Frames, cast_to, controls_of, index
from model.game_start import GameSetup, standard_start
from model.mamba2 import Mamba2Cache
from model.packed_frame import PackedFrame, pack
from model.rule_state import RuleState
from model.rules import apply_rules, events_from_codes
from model.snapshots import Snapshot, restore_rows, stack_tensor, take_snapshots
from model.traced_step import TracedStep, copy_of_state, live_layouts, traced_step
from model.world_model import WorldModel, WorldModelCache


@dataclass
class StepResult:
    batch: Frames  # the whole batch's new frames, (B,) per field
    row: int  # this game's row in `batch`
    events: list[Event]
    over: bool

    @property
    def frame(self) -> Frames:
        """This game's new frame: 0-dim tensors (item fields: (ITEM_SLOTS,))."""
        return index(self.batch, self.row)


MAX_GRAPH_BATCH = 256  # larger batches step eagerly (launch overhead no longer dominates)


class Simulation:
    def __init__(
        self,
        model: WorldModel,
        temperature: float = 0.0,
        device: torch.device | str = "cpu",
        cuda_graphs: bool = False,
        trace: bool = True,
        compiled: bool = False,
    ):
        """`cuda_graphs`: on CUDA with argmax decoding, replay each step, rules included,
        from a CUDA graph captured per batch-size bucket (1, 2, 4, ... 256 games; the batch is
        padded up to its bucket; `model.cuda_graph.GraphedLiveStep`). Falls back to eager
        steps, with a warning, if a capture fails.

        `trace`: on CPU with argmax decoding, run the model step and decoding from a
        TorchScript trace of them (`model.traced_step`): the same frames, bit for bit, 1.4-1.7x
        faster. Falls back to eager steps, with a warning, if tracing fails.

        `compiled` (with `trace`): once the step compiled ahead of time is cached, run it
        instead of the trace, two to three times as fast and equal to ~1e-4; until then, compile
        it in a background process (`model.compiled_step`). For live play, not for runs that
        are compared (evaluation, probes), which stay bitwise on the trace."""
        self.model = model.eval()
        self.temperature = temperature
        self.device = torch.device(device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda" and temperature <= 0
        self.trace = trace and self.device.type == "cpu" and temperature <= 0
        self.compiled = compiled
        self._traced: TracedStep | FastestCpuStep | None = None
        # "compiled", "trace", "cuda graph" or "eager": what made the last step's frames.
        self.last_step_path = "eager"
        self._graphed: GraphedLiveStep | None = None
        self.game_ids: list[int] = []
        self._setups: dict[int, GameSetup] = {}
        self._generators: dict[int, torch.Generator] = {}
        self._cache: WorldModelCache | None = None
        self._prev: Frames | None = None
        self._rules: RuleState | None = None
        self._next_id = itertools.count()
        self._dtypes: dict[str, torch.dtype] = {}
        self._control_layout: list[list[str]] | None = None  # controller columns by dtype

    # ------------------------------------------------------------------ games
    def new_game(
        self,
        setup: GameSetup | None = None,
        replay: Frames | None = None,
        start_frame: int | None = None,
    ) -> int:
        """Add a game from a standard start, or from row `start_frame` of a real game's
        frames (the model's state is prefilled with every frame before it)."""
        setup = setup or GameSetup()
        cache = self.model.allocate_inference_cache(1, device=self.device)
        if replay is None:
            frame = standard_start(setup)
        else:
            frame, setup = self._prefill(replay, start_frame or 0, setup, cache)
        stage = get_stage(int(frame["stage"]))
        stocks = (int(frame["p1_stocks"]), int(frame["p2_stocks"]))
        on_main = setup.on_main_stage and replay is None
        rules = RuleState.new(stage, stocks, setup.timer_frames, self.device, on_main)
        frame = {k: v.to(self.device).unsqueeze(0) for k, v in frame.items()}
        if not self._dtypes:
            self._dtypes = {k: v.dtype for k, v in frame.items()}
        frame = {k: v.to(self._dtypes[k]) for k, v in frame.items()}

        game_id = next(self._next_id)
        self.game_ids.append(game_id)
        self._setups[game_id] = setup
        self._generators[game_id] = torch.Generator(self.device).manual_seed(setup.seed)
        self._join(cache, frame, rules)
        return game_id

    def _join(self, cache: WorldModelCache, frame: Frames, rules: RuleState) -> None:
        """Append the rows of new games (their ids already in `game_ids`) to the batch. A
        packed batch frame stays packed: the new rows are packed alike and joined a group at
        a time, and the live step takes the result without packing it again."""
        if self._cache is None:
            self._cache, self._prev, self._rules = cache, frame, rules
            return
        self._cache = _cat_caches(self._cache, cache)
        prev = self._prev
        if isinstance(prev, PackedFrame) and not prev.replaced:
            rows = pack(frame, prev.layout)
            groups = [torch.cat([a, b], 1) for a, b in zip(prev.packed, rows, strict=True)]
            self._prev = PackedFrame(groups, prev.layout, list(prev))
        else:
            self._prev = {k: torch.cat([prev[k], frame[k]]) for k in prev}
        self._rules = RuleState.from_tensors(
            {k: torch.cat([v, rules.tensors()[k]]) for k, v in self._rules.tensors().items()}
        )

    def _prefill(
        self, replay: Frames, start: int, setup: GameSetup, cache: WorldModelCache
    ) -> tuple[Frames, GameSetup]:
        total = len(replay["frame"])
        if not 0 <= start < total:
            raise ValueError(f"start_frame {start} is outside the replay (0..{total - 1})")
        if start > 0:
            prev = {k: v[:start].unsqueeze(0).to(self.device) for k, v in replay.items()}
            nxt = {k: v[1 : start + 1].unsqueeze(0).to(self.device) for k, v in replay.items()}
            with torch.inference_mode():
                self.model(prev, controls_of(nxt), cache=cache)
        frame = index(replay, start)
        characters = (int(frame["p1_character"]), int(frame["p2_character"]))
        setup = dataclasses.replace(setup, stage=int(frame["stage"]), characters=characters)
        return frame, setup

    def add_from_snapshot(self, snapshot: Snapshot) -> int:
        """Add a game that continues exactly from `snapshot` (taken from this or another
        simulation of the same model), under a new game id."""
        return self.add_from_snapshots([snapshot])[0]

    @torch.inference_mode()  # the batch tensors are made under inference mode by `step`
    def add_from_snapshots(self, snapshots: list[Snapshot]) -> list[int]:
        """Add games that continue exactly from `snapshots`, under new game ids, in one join
        (a server resuming many sessions in one tick)."""
        if not snapshots:
            return []
        cache = self.model.allocate_inference_cache(len(snapshots), device=self.device)

        def stacked(name: str) -> Tensor:
            return stack_tensor(snapshots, name).to(self.device)

        for key, tensor in cache.tensors().items():
            tensor.copy_(stacked(f"cache.{key}"))
        frame_names = [k for k in snapshots[0].names() if k.startswith("frame.")]
        names = [k.removeprefix("frame.") for k in frame_names]
        frame = {k: stacked(f"frame.{k}") for k in names}
        if not self._dtypes:
            self._dtypes = {k: v.dtype for k, v in frame.items()}
        frame = {k: v.to(self._dtypes[k]) for k, v in frame.items()}
        rule_names = [f.name for f in dataclasses.fields(RuleState)]
        rules = RuleState.from_tensors({k: stacked(f"rules.{k}") for k in rule_names})
        game_ids = []
        for snapshot in snapshots:
            game_id = next(self._next_id)
            game_ids.append(game_id)
            self.game_ids.append(game_id)
            self._setups[game_id] = snapshot.setup
            generator = torch.Generator(self.device)
            generator.set_state(snapshot.generator_state)
            self._generators[game_id] = generator
        self._join(cache, frame, rules)
        return game_ids

    def remove_game(self, game_id: int) -> None:
        self.remove_games([game_id])

    def remove_games(self, game_ids: list[int]) -> None:
        """Take games out of the batch, in one selection of the rows that stay."""
        leaving = {self._row(g) for g in game_ids}
        if not leaving:
            return
        rows = [i for i in range(len(self.game_ids)) if i not in leaving]
        for game_id in game_ids:
            del self._setups[game_id], self._generators[game_id]
        self.game_ids = [self.game_ids[i] for i in rows]
        if not self.game_ids:
            self._cache = self._prev = self._rules = None
            return
        keep = torch.tensor(rows, dtype=torch.long, device=self.device)
        self._cache = _select_cache(self._cache, keep)
        prev = self._prev
        if isinstance(prev, PackedFrame) and not prev.replaced:
            groups = [group.index_select(1, keep) for group in prev.packed]
            self._prev = PackedFrame(groups, prev.layout, list(prev))
        else:
            self._prev = index(prev, keep)
        self._rules = RuleState.from_tensors({k: v[keep] for k, v in self._rules.tensors().items()})

    def setup(self, game_id: int) -> GameSetup:
        return self._setups[game_id]

    def frame(self, game_id: int) -> Frames:
        return index(self._prev, self._row(game_id))

    def is_over(self, game_id: int) -> bool:
        return bool(self._rules.over[self._row(game_id)])

    def stocks(self, game_id: int) -> tuple[int, int]:
        return tuple(self._rules.stocks[self._row(game_id)].tolist())

    def _row(self, game_id: int) -> int:
        try:
            return self.game_ids.index(game_id)
        except ValueError:
            raise KeyError(f"no game {game_id} in this simulation") from None

    # ------------------------------------------------------------------ stepping
    @property
    def batch_frame(self) -> Frames:
        """The last frame of every game, (B,) per field, rows in `game_ids` order."""
        return self._prev

    def step(self, controls: dict[int, dict]) -> dict[int, StepResult]:
        """Advance every game one frame. `controls[game_id]` maps both players' controller
        columns (`p1_joystick_x`, ..., `p2_buttons`) to numbers or 0-dim tensors; a game or
        column without an entry gets a neutral controller."""
        if not self.game_ids:
            return {}
        ctrl = self._controls_batch(controls)
        prev, rules = self._prev, self._rules
        with torch.inference_mode():
            # Finished games stay on their last frame: the rare step with one in the batch
            # runs eagerly, so that the trace need not copy every field back every step.
            any_over = bool(rules.over.any())
            if not any_over and (fast := self._fast_step(prev, ctrl)):
                frame, codes = fast(prev, ctrl, self._cache, rules)
                events = events_from_codes(codes, frame, rules)
                self.last_step_path = fast.path
            else:
                self.last_step_path = "eager"
                pick = self._sample_actions if self.temperature > 0 else None
                preds = self.model.step(prev, ctrl, self._cache, pick_action=pick)
                frame = self._cast(self._decode(preds, prev, ctrl))
                if any_over:
                    frame = {
                        k: torch.where(_rows_mask(rules.over, v), prev[k], v)
                        for k, v in frame.items()
                    }
                events = apply_rules(frame, rules, prev, ctrl)
                frame = self._cast(frame)
        self._prev = frame
        over = rules.over.tolist()
        return {g: StepResult(frame, i, events[i], over[i]) for i, g in enumerate(self.game_ids)}

    def _controls_batch(self, controls: dict[int, dict]) -> Frames:
        """(B,) tensors of every controller column, built as one tensor per dtype and kept
        packed (`PackedFrame`): the live server steps every tick, and a tensor per column
        per game, or per column, is measurable (docs/SIMULATION.md, "Fast paths")."""
        neutral: dict = {}
        per_game = [controls.get(g, neutral) for g in self.game_ids]
        if self._control_layout is None:
            self._control_layout = list(_group_by_dtype(CONTROL_KEYS, self._dtypes).values())
        blocks = []
        for keys in self._control_layout:
            rows = [[_number(c.get(key, 0)) for c in per_game] for key in keys]
            blocks.append(torch.tensor(rows, dtype=self._dtypes[keys[0]], device=self.device))
        return PackedFrame(blocks, self._control_layout)

    def _fast_step(
        self, prev: Frames, ctrl: Frames
    ) -> TracedStep | FastestCpuStep | GraphedLiveStep | None:
        """The step with the rules in one call, where there is one: the trace on CPU, the
        CUDA graph of the batch's bucket on CUDA; None: step eagerly."""
        if self.trace:
            if self._traced is None:
                self._traced = traced_step(self.model, prev, ctrl, self._cache, self._rules)
                self.trace = self._traced is not None
                if self._traced is not None and self.compiled:
                    self._traced = fastest_cpu_step(
                        self.model, self._traced, prev, ctrl, self._rules
                    )
            return self._traced
        if not self.cuda_graphs or len(self.game_ids) > MAX_GRAPH_BATCH:
            return None
        if self._graphed is None:
            layouts, order = live_layouts(self.model, prev, ctrl, self._cache, self._rules)
            self._graphed = GraphedLiveStep(self.model, layouts, order)
        if not self._graphed.captured(len(self.game_ids)):
            try:  # capture now, on copies of the state, so that a failure changes nothing
                conv, ssm, rules = copy_of_state(self._cache, self._rules)
                cache = WorldModelCache([Mamba2Cache(c, s) for c, s in zip(conv, ssm, strict=True)])
                self._graphed(prev, ctrl, cache, RuleState.from_tensors(rules))
            except Exception as e:  # noqa: BLE001 - any capture failure: step eagerly instead
                warnings.warn(f"CUDA graph capture failed ({e}); stepping eagerly", stacklevel=3)
                self.cuda_graphs = False
                return None
        return self._graphed

    def _cast(self, frame: Frames) -> Frames:
        return cast_to(frame, self._dtypes)

    def _sample_actions(self, logits: Tensor) -> Tensor:
        """An action-conditioned model's actions (B, 2) sampled from its logits (B, 2, vocab)
        at the temperature, each game with its own generator, like the other fields."""
        rows = [
            pick_class(logits[i], self.temperature, self._generators[g])
            for i, g in enumerate(self.game_ids)
        ]
        return torch.stack(rows)

    def _decode(self, preds: Frames, prev: Frames, ctrl: Frames) -> Frames:
        if self.temperature <= 0:
            return decode(preds, prev, ctrl)
        parts = []
        for i, g in enumerate(self.game_ids):
            one = slice(i, i + 1)
            parts.append(
                decode(
                    index(preds, one),
                    index(prev, one),
                    index(ctrl, one),
                    self.temperature,
                    self._generators[g],
                )
            )
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def warm_up(self, steps: int = 3, max_batch: int = 1) -> None:
        """Step throw-away games a few times, so that one-off costs (the trace of the step and
        its first optimised runs, lazy initialisations, and with CUDA graphs the capture of
        each batch-size bucket up to `max_batch` games) are paid now rather than by the live
        games, whose frames would stall. Call it before any game is added."""
        sizes = graph_buckets(max_batch) if self.cuda_graphs else [1]
        for size in sizes:
            games = [self.new_game() for _ in range(size)]
            try:
                for _ in range(steps):
                    self.step({})
            finally:
                for game in games:
                    self.remove_game(game)

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, game_id: int) -> Snapshot:
        return self.snapshots([game_id])[0]

    def snapshots(self, game_ids: list[int]) -> list[Snapshot]:
        """Snapshots of several games, their rows copied out together (`model.snapshots`)."""
        if not game_ids:
            return []
        rows = torch.tensor([self._row(g) for g in game_ids], device=self.device)
        generators = [self._generators[g] for g in game_ids]
        setups = [self._setups[g] for g in game_ids]
        return take_snapshots(self._cache, self._rules, self._prev, rows, generators, setups)

    def restore(self, game_id: int, snapshot: Snapshot) -> None:
        self.restore_many([(game_id, snapshot)])

    @torch.inference_mode()  # the batch tensors are made under inference mode by `step`
    def restore_many(self, games: list[tuple[int, Snapshot]]) -> None:
        """Put each game back to its snapshot (taken from this or another simulation of the
        same model), the rows of all of them written together."""
        if not games:
            return
        rows = torch.tensor([self._row(g) for g, _ in games], device=self.device)
        snapshots = [snapshot for _, snapshot in games]
        restore_rows(self._cache, self._rules, self._prev, rows, snapshots)
        for game_id, snapshot in games:
            self._generators[game_id].set_state(snapshot.generator_state)


def graph_buckets(max_batch: int) -> list[int]:
    """The batch-size buckets CUDA graphs are captured for, for up to `max_batch` games: the
    powers of two up to the one a batch of `max_batch` is padded to, at most MAX_GRAPH_BATCH."""
    top = min(GraphedLiveStep.bucket(max_batch), MAX_GRAPH_BATCH)
    return [1 << i for i in range(top.bit_length())]


CONTROL_KEYS = tuple(f"{p}_{f.name}" for p in gs.PLAYERS for f in gs.CONTROLLER_FIELDS)


def _group_by_dtype(keys, dtypes: dict[str, torch.dtype]) -> dict[torch.dtype, list[str]]:
    groups: dict[torch.dtype, list[str]] = {}
    for key in keys:
        groups.setdefault(dtypes[key], []).append(key)
    return groups


def _number(value) -> float | int:
    return value.item() if isinstance(value, Tensor) else value


def _rows_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _cat_caches(a: WorldModelCache, b: WorldModelCache) -> WorldModelCache:
    layers = zip(a.layers, b.layers, strict=True)
    return WorldModelCache([Mamba2Cache.cat([la, lb]) for la, lb in layers])


def _select_cache(cache: WorldModelCache, keep: Tensor) -> WorldModelCache:
    return WorldModelCache([layer.rows(keep) for layer in cache.layers])
