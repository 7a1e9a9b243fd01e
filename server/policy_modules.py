"""Policies from Python code (`module:callable`), for a server that opts in with
`PLAYMODEL_ALLOW_POLICY_MODULES=1`.

A request names code for the server to run, so nothing is imported before the name has passed
every check: the spec's form, then where the module comes from. A module may come only from a
package the operator allows (`PLAYMODEL_POLICY_PACKAGES=mybots,team.bots`: those packages and
their submodules) or from a `.py` file in the policy folder (`PLAYMODEL_POLICY_FOLDER`),
loaded from that file under a private name, never found on `sys.path`.

The policy is then run by `GuardedPolicy`: whatever it does (raises, returns something that is
not a controller or a value out of range, takes longer than `policy_time_limit_ms`) ends only
its own game: the call answers a neutral controller for this frame and the failure is kept,
for the session or match to be ended with it. One bad policy stalled every live game before.

Its calls run on a thread of its own, off the tick: the tick asks every module policy first
(`ask_policies`), then takes their answers by one shared deadline, `POLICY_WAIT_S` later
(`policy_columns`). A policy that has not answered by then plays its previous answer (a
neutral controller before its first) and is asked again once it has answered; one whose call
runs past the time limit fails. A call that sleeps 200 ms stalled every live session for
200 ms when the tick made it itself. (A policy that computes in Python without pause still
takes its share of the interpreter from the tick's thread; only a process of its own would
stop that.)
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from core.controller import Controller
from model.frames import Frames
from model.packed_frame import PackedFrame
from model.policies import FrameView, Policy

log = logging.getLogger(__name__)

IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
SPEC = re.compile(rf"(?P<module>{IDENTIFIER}(?:\.{IDENTIFIER})*):(?P<attribute>{IDENTIFIER})")
FOLDER_MODULES = "playmodel_policy_folder"  # the private package name of folder modules
# How long a tick waits, in all, for its module policies' answers: a plain Python policy
# answers in well under a millisecond; a tick's period is 16.7 ms, the step takes 4-6 ms of
# it on a 2-core CPU with the demo model.
POLICY_WAIT_S = 0.003
WORKER_IDLE_S = 5.0  # a policy's thread ends after this long without a call (the next starts one)


class PolicyRefused(ValueError):
    """A policy spec the server will not load; the text says why."""


def load_module_policy(
    spec: str, packages: list[str], folder: Path | None, time_limit_ms: float
) -> GuardedPolicy:
    """The policy `module:callable` names, checked before anything is imported."""
    match = SPEC.fullmatch(spec)
    if match is None:
        raise PolicyRefused(
            f"{spec!r} is not a policy: expected a builtin (noop, random[:SEED], hold:DIR, "
            "approach[:SEED]) or module:callable"
        )
    module_name, attribute = match["module"], match["attribute"]
    if attribute.startswith("_"):
        raise PolicyRefused(f"{spec!r}: {attribute!r} is private")
    if any(module_name == p or module_name.startswith(p + ".") for p in packages):
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise PolicyRefused(f"{spec!r}: cannot import {module_name!r} ({e})") from None
    elif folder is not None and (path := _folder_file(folder, module_name)) is not None:
        module = _load_file(path, module_name)
    else:
        allowed = ", ".join(packages) or "none"
        raise PolicyRefused(
            f"{spec!r}: module {module_name!r} is not in an allowed package ({allowed}; "
            f"PLAYMODEL_POLICY_PACKAGES) nor a file of the policy folder "
            f"({folder or 'none'}; PLAYMODEL_POLICY_FOLDER)"
        )
    target = getattr(module, attribute, None)
    if target is None:
        raise PolicyRefused(f"{spec!r}: module {module_name!r} has no {attribute!r}")
    # Only code of the allowed places themselves: not a function they imported from elsewhere
    # (`from os import system` in an allowed module does not make `os.system` a policy).
    owner = getattr(target, "__module__", None) or ""
    places = [module.__name__, *packages]
    if not any(owner == place or owner.startswith(place + ".") for place in places):
        raise PolicyRefused(
            f"{spec!r}: {attribute!r} comes from {owner or 'an unknown module'!r}, not from "
            "an allowed package or the policy folder"
        )
    if isinstance(target, type):
        try:
            target = target()
        except Exception as e:  # noqa: BLE001 - the policy's own code: any failure is its own
            raise PolicyRefused(
                f"{spec!r}: {attribute}() failed ({type(e).__name__}: {e})"
            ) from None
    if not callable(target):
        raise PolicyRefused(f"{spec!r} is not callable")
    return GuardedPolicy(target, spec, time_limit_ms)


def _folder_file(folder: Path, module_name: str) -> Path | None:
    """`folder/a/b.py` for module `a.b`, if it exists and is really inside the folder (a
    symbolic link out of it is refused)."""
    root = folder.resolve()
    path = (root / Path(*module_name.split("."))).with_suffix(".py").resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path


def _load_file(path: Path, module_name: str):
    name = f"{FOLDER_MODULES}.{module_name}"
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__file__", None) == str(path):
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"no loader for {path}"
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the file's own code: any failure is its own
        raise PolicyRefused(
            f"{module_name}: {path.name} failed to load ({type(e).__name__}: {e})"
        ) from None
    sys.modules[name] = module
    return module


class _Call:
    """One call of a policy, made on its thread: what it answered or why it failed."""

    def __init__(self, frame: FrameView, player: int):
        self.frame, self.player = frame, player
        self.asked = time.perf_counter()
        self.elapsed = 0.0
        self.controller: Controller | None = None
        self.problem: str | None = None
        self.done = threading.Event()


class GuardedPolicy:
    """A policy from code the server did not write, called on a thread of its own. A call
    that fails (raises, answers something that is not a controller, or runs past the time
    limit) keeps the reason in `failure` and answers a neutral controller; the session or
    match then ends its game (`live_batch.LiveBatch`, `match_service.MatchService`).
    Once failed, it is not called again.

    `ask` starts a call for a frame (none while one is in flight); `answer(deadline)` waits
    for it until `deadline` at most, else gives the previous answer. Called as a policy, it
    does both, waiting `wait_s`."""

    def __init__(
        self, policy: Policy, spec: str, time_limit_ms: float, wait_s: float = POLICY_WAIT_S
    ):
        self.policy, self.spec = policy, spec
        self.time_limit_s = time_limit_ms / 1000
        self.wait_s = wait_s
        self.failure: str | None = None
        self._previous = Controller()
        self._call: _Call | None = None  # the call in flight, or answered and not yet taken
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._lock = threading.Lock()  # `_thread` starts and ends under it
        self._thread: threading.Thread | None = None

    def __call__(self, frame: FrameView, player: int) -> Controller:
        self.ask(frame, player)
        return self.answer(time.perf_counter() + self.wait_s)

    def ask(self, frame: FrameView, player: int) -> None:
        """Start a call for `frame` (which must not change meanwhile: a copy of the batch)
        unless one is still in flight; an answered one is taken first."""
        if self._call is not None and self._call.done.is_set():
            self._take(self._call)
        if self.failure is not None or self._call is not None:
            return
        self._call = call = _Call(frame, player)
        with self._lock:
            self._calls.put(call)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name=f"policy {self.spec}", daemon=True
                )
                self._thread.start()

    def answer(self, deadline: float) -> Controller:
        """The controller for the frame last asked: its call's answer if it comes by
        `deadline`, else the previous answer (neutral before the first)."""
        call = self._call
        if self.failure is not None or call is None:
            return Controller() if self.failure is not None else self._previous
        if not call.done.wait(max(0.0, deadline - time.perf_counter())):
            running = time.perf_counter() - call.asked
            if running > self.time_limit_s:
                self._fail(
                    f"has not answered after {running * 1000:.0f} ms, over the limit of "
                    f"{self.time_limit_s * 1000:.0f} ms (PLAYMODEL_POLICY_TIME_LIMIT_MS)"
                )
                return Controller()
            return self._previous
        return self._take(call)

    def _take(self, call: _Call) -> Controller:
        self._call = None
        problem = call.problem
        if problem is None and call.elapsed > self.time_limit_s:
            problem = (
                f"took {call.elapsed * 1000:.0f} ms, over the limit of "
                f"{self.time_limit_s * 1000:.0f} ms (PLAYMODEL_POLICY_TIME_LIMIT_MS)"
            )
        if problem is not None:
            self._fail(problem)
            return Controller()
        self._previous = call.controller
        return call.controller

    def _fail(self, problem: str) -> None:
        if self.failure is None:
            self.failure = f"policy {self.spec!r} {problem}"[:300]
            log.warning("%s; its game ends", self.failure)

    def _work(self) -> None:
        """The policy's thread: its calls, one at a time; it ends when none comes for
        `WORKER_IDLE_S` (a call stuck in the policy keeps it, and only it, forever)."""
        while True:
            try:
                call = self._calls.get(timeout=WORKER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():
                        self._thread = None
                        return
                continue
            start = time.perf_counter()
            try:
                controller = self.policy(call.frame, call.player)
                problem = _check(controller)
                if problem is None:
                    controller.columns(call.player)  # what the step will ask of it, tried here
                    call.controller = controller
            except Exception as e:  # noqa: BLE001 - the policy's own code: any failure is its own
                problem = f"raised {type(e).__name__}: {e}"
            call.problem, call.elapsed = problem, time.perf_counter() - start
            call.frame = None  # the batch copy is not kept
            call.done.set()


def frozen(batch: Frames) -> Frames:
    """A copy of a batch of frames for the policies' threads to read while the simulation
    steps on (a CUDA graph's step writes its outputs in place): a packed frame a group at a
    time."""
    if isinstance(batch, PackedFrame) and not batch.replaced:
        groups = [group.to("cpu", copy=True) for group in batch.packed]
        return PackedFrame(groups, batch.layout, list(batch))
    return {name: value.to("cpu", copy=True) for name, value in batch.items()}


def has_module_policy(policies: Iterable[Policy]) -> bool:
    return any(isinstance(policy, GuardedPolicy) for policy in policies)


def ask_policies(policies: Iterable[tuple[Policy, int]], frame: FrameView) -> None:
    """Start the calls of the module policies among (policy, player) for this frame."""
    for policy, player in policies:
        if isinstance(policy, GuardedPolicy):
            policy.ask(frame, player)


def policy_columns(
    policies: Iterable[tuple[Policy, int]], frame: FrameView, deadline: float
) -> dict[str, float | int]:
    """The controller columns of (policy, player) pairs: a module policy's answer to its
    `ask_policies` call, waited for until `deadline` at most; a builtin policy called here."""
    columns: dict[str, float | int] = {}
    for policy, player in policies:
        if isinstance(policy, GuardedPolicy):
            controller = policy.answer(deadline)
        else:
            controller = policy(frame, player)
        if not isinstance(controller, Controller):
            raise TypeError(f"policy for p{player + 1} returned {type(controller).__name__}")
        columns |= controller.columns(player)
    return columns


def _check(controller) -> str | None:
    """Why this is not a controller a game may be stepped with, or None. (A `Controller`
    checks its own values when built: a policy that builds one out of range raises there.)"""
    if not isinstance(controller, Controller):
        return f"returned {type(controller).__name__}, not a core.controller.Controller"
    return None


def policy_failure(policies) -> str | None:
    """The first failure among these policies (a mapping or a sequence), or None."""
    values = policies.values() if isinstance(policies, dict) else policies
    for policy in values:
        failure = getattr(policy, "failure", None)
        if failure is not None:
            return failure
    return None
