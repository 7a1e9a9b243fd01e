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
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import numbers
import re
import sys
import time
from pathlib import Path

from model.policies import Controller, FrameView, Policy

log = logging.getLogger(__name__)

IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
SPEC = re.compile(rf"(?P<module>{IDENTIFIER}(?:\.{IDENTIFIER})*):(?P<attribute>{IDENTIFIER})")
FOLDER_MODULES = "playmodel_policy_folder"  # the private package name of folder modules


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


class GuardedPolicy:
    """A policy from code the server did not write. A call that fails answers a neutral
    controller and keeps the reason in `failure`; the session or match then ends its game
    (`engine.Engine.tick`, `match_service.MatchService`). Once failed, it is not called again."""

    def __init__(self, policy: Policy, spec: str, time_limit_ms: float):
        self.policy, self.spec = policy, spec
        self.time_limit_s = time_limit_ms / 1000
        self.failure: str | None = None

    def __call__(self, frame: FrameView, player: int) -> Controller:
        if self.failure is not None:
            return Controller()
        start = time.perf_counter()
        try:
            controller = self.policy(frame, player)
            problem = _check(controller)
            if problem is None:
                controller.columns(player)  # what the step will ask of it, tried here
        except Exception as e:  # noqa: BLE001 - the policy's own code: any failure is its own
            problem = f"raised {type(e).__name__}: {e}"
        elapsed = time.perf_counter() - start
        if problem is None and elapsed > self.time_limit_s:
            problem = (
                f"took {elapsed * 1000:.0f} ms, over the limit of {self.time_limit_s * 1000:.0f} "
                "ms (PLAYMODEL_POLICY_TIME_LIMIT_MS)"
            )
        if problem is None:
            return controller
        self.failure = f"policy {self.spec!r} {problem}"[:300]
        log.warning("%s; its game ends", self.failure)
        return Controller()


def _check(controller) -> str | None:
    """Why this is not a controller a game may be stepped with, or None."""
    if not isinstance(controller, Controller):
        return f"returned {type(controller).__name__}, not a model.policies.Controller"
    ranges = [
        ("joystick", controller.joystick, -1.0, 1.0),
        ("cstick", controller.cstick, -1.0, 1.0),
        ("l_trigger", (controller.l_trigger,), 0.0, 1.0),
        ("r_trigger", (controller.r_trigger,), 0.0, 1.0),
    ]
    for name, values, low, high in ranges:
        if not isinstance(values, tuple) or len(values) != (1 if "trigger" in name else 2):
            return f"returned {name} {values!r}, not a pair of numbers"
        for value in values:
            if not isinstance(value, numbers.Real) or not (
                math.isfinite(value) and low <= value <= high
            ):
                return f"returned {name} {value!r}, outside {low:g}..{high:g}"
    return None


def policy_failure(policies) -> str | None:
    """The first failure among these policies (a mapping or a sequence), or None."""
    values = policies.values() if isinstance(policies, dict) else policies
    for policy in values:
        failure = getattr(policy, "failure", None)
        if failure is not None:
            return failure
    return None
