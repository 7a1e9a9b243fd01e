"""The CPU live step compiled ahead of time (torch.export + AOTInductor), cached on disk.

The same step as the trace (`model/traced_step.py`: model step, argmax decode, Melee's rules)
runs two to three times as fast compiled: 0.74 instead of 2.43 ms at batch 1 on the demo
model, 1.42 instead of 3.56 at batch 8 (BENCHMARKS.md, "Kept parts"). Inductor fuses the
thousand small ops whose per-op cost bounds a small model's step on a CPU.

The compile takes a minute or more of CPU (70-90 s of one core on a 2-core AMD EPYC), so it
never runs on the tick path. A server asks for it (`Simulation(..., compiled=True)`): it
plays on the trace at once, and if no package of this model is cached, a background process
(`python -m model.compiled_step JOB`, at idle CPU priority and on one thread, so that the
live games keep the CPU) exports and compiles the step. Once the
package is on disk, the next step loads it, checks it against the trace on copies of the
state, and every later step runs it; the next start loads it at once. A package is keyed by
everything it was compiled from: the weights, the frames' fields and dtypes, the source of
`model/` and `core/`, the torch version and the CPU's instruction sets (the cache may be
shared by machines). It lives under
$PLAYMODEL_CACHE (default ~/.cache/playmodel)/compiled_steps.

Its frames agree with the trace's to about 1e-4 over 100 steps, not bit for bit (Inductor
fuses and reorders float arithmetic), which is why evaluation and the probes, which compare
runs, stay on the trace. A package serves batches of 1 to 256 games; larger ones, and int8
models (torch.ao's quantized linears do not export), run the trace. A failed compile leaves
its log and a `.failed` marker beside the package, and is not retried until the marker is
removed. PLAYMODEL_COMPILED_STEP=0 turns all of this off (the test suite does).

Unlike the trace, a package's call keeps the GIL while it runs (`boxed_run`): a server's event
loop waits out each step instead of running beside it, which at 2-3 ms a tick still costs less
than the trace's longer step (bench/gil_compiled.py, BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from model.config import ModelConfig
from model.cpu_kernels import cpu_flags, fused_step_ops
from model.frames import Frames
from model.mamba2 import Mamba2Cache
from model.packed_frame import Layout, pack
from model.rule_state import RuleState
from model.traced_step import LiveStep, TracedStep, copy_of_state, live_layouts
from model.world_model import WorldModel, WorldModelCache

DISABLE_ENV = "PLAYMODEL_COMPILED_STEP"  # "0": the trace only
CACHE_ENV = "PLAYMODEL_CACHE"
MAX_BATCH = 256
# The batch of the example inputs the step is exported with. Export tells the batch dimension
# of each tensor by its size, so this is a size no field count or width of a model has.
EXAMPLE_BATCH = 13
LOOK_EVERY_S = 1.0  # how often a step looks whether the background compile has finished
# A compiled frame's floats agree with the trace's to ~1e-4 after 100 steps; one step's are
# checked before the package is used.
CHECK_TOLERANCE = 1e-3


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "playmodel"
    return Path(root) / "compiled_steps"


def fastest_cpu_step(
    model: WorldModel,
    traced: TracedStep,
    prev: Frames,
    controls: Frames,
    rules: RuleState,
) -> TracedStep | FastestCpuStep:
    """`traced`, or the step that runs the compiled package of it when it is cached, and
    until then the trace while a background process compiles it. Made once per trace: every
    simulation of the model given the same trace shares it (the server's rollback scratch)."""
    if not enabled() or _quantized(model):
        return traced
    kept = getattr(traced, "fastest", None)
    if kept is None:
        try:
            kept = FastestCpuStep(traced, _Job.of(model, prev, controls, rules))
        except Exception as e:  # noqa: BLE001 - a speed-up that cannot be had: the trace serves
            warnings.warn(f"no compiled CPU step ({e!r:.300}); the trace serves", stacklevel=3)
            kept = traced
        traced.fastest = kept
    return kept


class FastestCpuStep:
    """Called like `TracedStep` with the rules; runs the compiled package once it is loaded
    and checked (batches up to MAX_BATCH), the trace before and beyond. `path` says which
    ran the last call."""

    def __init__(self, traced: TracedStep, job: _Job):
        """Loads the package of `job` at the first call if it is cached, else compiles it."""
        self.traced = traced
        self.compiled: TracedStep | None = None
        self.path = traced.path
        self.package = cache_dir() / f"{job.key}.pt2"
        self.waiting = True  # for the package: until it is used, or known unusable
        self._process: subprocess.Popen | None = None
        self._next_look = 0.0
        if not self.package.exists() and not _marker(self.package, "failed").exists():
            self._process = job.start(self.package)
            self.waiting = self._process is not None  # else it said why it could not start

    def __call__(self, prev: Frames, controls: Frames, cache: WorldModelCache, rules: RuleState):
        if self.waiting and time.monotonic() >= self._next_look:
            self._look(prev, controls, cache, rules)
        batch = cache.layers[0].conv_state.shape[0]
        step = self.compiled if self.compiled is not None and batch <= MAX_BATCH else self.traced
        self.path = step.path
        return step(prev, controls, cache, rules)

    def _look(self, prev, controls, cache, rules) -> None:
        self._next_look = time.monotonic() + LOOK_EVERY_S
        if self._process is not None and self._process.poll() is None:
            return  # still compiling
        self.waiting = False
        if not self.package.exists():
            log = _marker(self.package, "log")
            warnings.warn(
                f"compiling the CPU step ahead of time failed (log: {log}); the trace serves. "
                f"Remove {_marker(self.package, 'failed')} to try again.",
                stacklevel=3,
            )
            return
        try:
            compiled = load_compiled(self.package, self.traced.layouts, self.traced.order)
            _check_against(compiled, self.traced, prev, controls, cache, rules)
        except Exception as e:  # noqa: BLE001 - a broken or foreign package: keep the trace
            warnings.warn(f"{self.package} not used ({e!s:.300}); the trace serves", stacklevel=3)
            return
        self.compiled = compiled
        if self._process is not None:  # a start that found it cached says nothing
            print("playmodel: the compiled CPU step serves from now on", file=sys.stderr)


def load_compiled(
    package: Path, layouts: tuple[Layout, Layout, Layout], order: list[str]
) -> TracedStep:
    """The step in `package`, called like the trace it was compiled from."""
    fused_step_ops()  # the package calls the fused kernels through the dispatcher
    # The loader itself, not `torch._inductor.aoti_load_package`: importing torch._inductor
    # imports dynamo, 1.5-3 s holding the GIL, on the device thread of a live server.
    loader = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)
    return TracedStep(_PackageCall(loader), layouts, order, path="compiled")


class _PackageCall:
    """Calls a loaded package with LiveStep's arguments. `AOTICompiledModel.__call__` parses
    the package's input and output specs from JSON on every call; they are read once here."""

    def __init__(self, loader):
        self.loader = loader
        in_spec, out_spec = self.loader.get_call_spec()
        self.in_spec = pytree.treespec_loads(in_spec)
        self.out_spec = pytree.treespec_loads(out_spec)
        self._keys: list[list[str] | None] | None = None  # per argument: a dict's keys

    def __call__(self, *args: list[Tensor] | dict[str, Tensor]):
        if self._keys is None:
            # The first call's structure is checked against the package's (pytree's flatten
            # and compare cost 44 us, a twentieth of a step); later calls flatten the same way
            # by hand: lists as they come, a dict in the order checked here.
            flat, spec = pytree.tree_flatten((args, {}))
            if spec != self.in_spec:
                raise ValueError(f"inputs {spec} differ from the compiled step's {self.in_spec}")
            self._keys = [list(a) if isinstance(a, dict) else None for a in args]
        else:
            flat = [
                t
                for arg, keys in zip(args, self._keys, strict=True)
                for t in (arg if keys is None else [arg[k] for k in keys])
            ]
        return pytree.tree_unflatten(self.loader.boxed_run(flat), self.out_spec)


def _check_against(compiled, traced, prev, controls, cache, rules) -> None:
    """Raises unless one step of each, on copies of the state, gives the same frame (floats
    to CHECK_TOLERANCE) and the same event codes."""
    outs = []
    for step in (traced, compiled):
        conv, ssm, rule_tensors = copy_of_state(cache, rules)
        state = WorldModelCache([Mamba2Cache(c, s) for c, s in zip(conv, ssm, strict=True)])
        frame, codes = step(prev, controls, state, RuleState.from_tensors(rule_tensors))
        outs.append(({k: frame[k].clone() for k in frame}, codes.clone()))
    (want, want_codes), (got, got_codes) = outs
    for key, expected in want.items():
        if expected.is_floating_point():
            same = torch.allclose(got[key], expected, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE)
        else:
            same = torch.equal(got[key], expected)
        if not same:
            raise ValueError(f"its {key} differs from the trace's")
    if not torch.equal(got_codes, want_codes):
        raise ValueError("its event codes differ from the trace's")


def _quantized(model: WorldModel) -> bool:
    return any(".quantized" in type(m).__module__ for m in model.modules())


def _marker(package: Path, suffix: str) -> Path:
    return package.with_suffix(f".{suffix}")


class _Job:
    """What a background compile needs: the model's config and weights, example inputs at
    EXAMPLE_BATCH games, the packing layouts; and the key that names its package."""

    def __init__(self, payload: dict):
        self.payload = payload
        self.key = _key(payload)

    @staticmethod
    def of(model: WorldModel, prev: Frames, controls: Frames, rules: RuleState) -> _Job:
        examples = [_rows(frame, EXAMPLE_BATCH) for frame in (prev, controls, rules.tensors())]
        prev_n, controls_n, rules_n = examples
        cache_n = model.allocate_inference_cache(EXAMPLE_BATCH)
        rule_state = RuleState.from_tensors(rules_n)
        layouts, _ = live_layouts(model, prev_n, controls_n, cache_n, rule_state)
        conv, ssm, rule_copy = copy_of_state(cache_n, rule_state)
        return _Job(
            {
                "config": json.dumps(model.config.to_dict(), sort_keys=True),
                "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "inputs": [pack(prev_n, layouts[0]), pack(controls_n, layouts[1]), conv, ssm],
                "rules": rule_copy,
                "layouts": [list(map(list, layout)) for layout in layouts],
            }
        )

    def start(self, package: Path) -> subprocess.Popen | None:
        """Starts the compile in the background; None (with a warning) if it cannot start
        (a cache folder that cannot be written, no process to be had)."""
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        log = _marker(package, "log")
        try:
            package.parent.mkdir(parents=True, exist_ok=True)
            job_file = package.with_name(f"{package.stem}.{os.getpid()}.job")
            temporary = job_file.with_name(f"{job_file.name}.tmp")
            torch.save(self.payload, temporary)
            os.replace(temporary, job_file)
            with open(log, "w") as output:
                process = _spawn(
                    [sys.executable, "-m", "model.compiled_step", str(job_file), str(package)],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_idle_priority,
                    start_new_session=True,  # a Ctrl-C of the server does not cut it short
                )
        except OSError as e:
            warnings.warn(
                f"could not start compiling the CPU step ahead of time ({e}); the trace serves",
                stacklevel=4,
            )
            return None
        print(
            "playmodel: compiling the CPU step ahead of time in the background (once per model "
            f"and machine, a minute or two); the trace serves meanwhile. Log: {log}",
            file=sys.stderr,
            flush=True,
        )
        return process


def _spawn(command: list[str], **options) -> subprocess.Popen:
    """The compile's process (its own name, so that a test can stand in for it without
    replacing `subprocess.Popen` for the torch code that runs compilers too)."""
    return subprocess.Popen(command, **options)


def _idle_priority() -> None:
    """The compile's CPU priority (in the child, before it runs): Linux's idle class, which
    runs only on a core nothing else wants, and the compiler processes it starts inherit it;
    at nice 19 alone it still took enough from a 2-core machine's live game for a few late
    ticks in its first minute."""
    os.nice(19)
    if hasattr(os, "SCHED_IDLE"):
        # Where a container's policy does not allow it, nice 19 it is.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _rows(frame, n: int) -> dict[str, Tensor]:
    """`frame`'s first row repeated `n` times (batch-first fields)."""
    return {k: frame[k][:1].expand(n, *frame[k].shape[1:]).clone() for k in frame}


def _key(payload: dict) -> str:
    """A name for everything the package depends on."""
    digest = hashlib.sha256()
    digest.update(payload["config"].encode())
    for name, tensor in payload["weights"].items():
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    shapes = [[(str(t.dtype), tuple(t.shape)) for t in group] for group in payload["inputs"]] + [
        (k, str(t.dtype), tuple(t.shape)) for k, t in payload["rules"].items()
    ]
    digest.update(repr((shapes, payload["layouts"])).encode())
    digest.update(
        f"{torch.__version__} {sorted(cpu_flags())} {fused_step_ops() is not None}".encode()
    )
    digest.update(_code_digest())
    return digest.hexdigest()[:24]


@functools.cache
def _code_digest() -> bytes:
    """The code the step is compiled from (the model, its decoding and rules, and the core's
    game facts they read): a package made before a change to any of it is not this step."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("model", "core"):
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".cpp", ".h", ".csv", ".json"):
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.digest()


def compile_package(job_file: Path, package: Path) -> None:
    """Exports the job's step with a dynamic batch (1 to MAX_BATCH) and compiles it into
    `package` (written atomically)."""
    job = torch.load(job_file, weights_only=True)
    torch.set_num_threads(1)
    model = WorldModel(ModelConfig.from_dict(json.loads(job["config"])))
    model.load_state_dict(job["weights"])
    model.eval()
    fused_step_ops()  # loaded, with shapes for export's fake tensors
    layouts = tuple(job["layouts"])
    live = LiveStep(model, *layouts).eval()
    inputs = (*job["inputs"], job["rules"])
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = tuple([{_batch_dim(t): batch} for t in group] for group in job["inputs"])
    dynamic += ({k: {_batch_dim(t): batch} for k, t in job["rules"].items()},)
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(live, inputs, dynamic_shapes=dynamic, strict=False)
    exported = time.perf_counter()
    temporary = package.with_name(f"{package.stem}.{os.getpid()}.tmp.pt2")
    torch._inductor.aoti_compile_and_package(program, package_path=str(temporary))
    os.replace(temporary, package)
    print(
        f"exported in {exported - start:.1f} s, "
        f"compiled in {time.perf_counter() - exported:.1f} s: {package}",
        flush=True,
    )
    forget_old_packages(package.parent)


KEEP_PACKAGES = 8  # a package is 4-16 MB, and each change of weights or code makes a new one


def forget_old_packages(folder: Path, keep: int = KEEP_PACKAGES) -> list[Path]:
    """Removes all but the `keep` packages last written in `folder`, with their logs and
    markers; returns the packages removed."""
    packages = sorted(folder.glob("*.pt2"), key=lambda p: p.stat().st_mtime, reverse=True)
    old = [p for p in packages if not p.name.endswith(".tmp.pt2")][keep:]
    for package in old:
        for path in (package, _marker(package, "log"), _marker(package, "failed")):
            path.unlink(missing_ok=True)
    return old


def _batch_dim(tensor: Tensor) -> int:
    dims = [i for i, size in enumerate(tensor.shape) if size == EXAMPLE_BATCH]
    if len(dims) != 1:
        raise ValueError(f"cannot tell the batch dimension of a {tuple(tensor.shape)} input")
    return dims[0]


def main(argv: list[str]) -> int:
    job_file, package = Path(argv[0]), Path(argv[1])
    # torch.export's own deprecation notices, of no use in this log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        compile_package(job_file, package)
    except BaseException:
        package.parent.mkdir(parents=True, exist_ok=True)
        _marker(package, "failed").touch()
        raise
    finally:
        job_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
