"""The one-way import rule (README, "Layout"): `core` imports none of our packages and no
torch; `model` imports `core`; `training` imports `core` and `model`; `server` imports `core`
and `model`, never `training`; the client imports `core` and the wire protocol
(`server.protocol`), never torch.

Checked twice: statically, every import statement in every module (those inside functions
too); and by importing the torch-free packages in a fresh interpreter and listing what it
loaded, which also catches an import made through another module.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = ("core", "model", "training", "server", "client")

# What each package may import of ours (by top-level package, or a module where only one
# module of that package is allowed), and third-party packages it must never import.
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "training": {"core", "model"},
    "server": {"core", "model"},
    "client": {"core", "server.protocol"},
}
FORBIDDEN_THIRD_PARTY = {
    "core": {"torch", "fastapi", "pygame"},
    "client": {"torch", "fastapi"},
}


def imported_names(path: Path) -> set[str]:
    """Dotted names of every module `path` imports (`from a.b import c` gives a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # `from core import game_state` imports the module core.game_state
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def breaches(package: str) -> list[str]:
    allowed = ALLOWED[package]
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in FORBIDDEN_THIRD_PARTY.get(package, ()):
                found.append(f"{path.relative_to(REPO)} imports {name}")
            if top not in OURS or top == package:
                continue
            if not any(name == a or name.startswith(f"{a}.") for a in allowed) and not any(
                a.startswith(f"{name}.")
                for a in allowed  # `from server import protocol`
            ):
                found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


@pytest.mark.parametrize("package", ALLOWED)
def test_package_imports_only_what_the_rule_allows(package):
    assert breaches(package) == []


def test_the_check_sees_a_breach(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from training.dataset import GameDataset\n")
    assert "training.dataset" in imported_names(bad)


def loaded_by_importing(modules: list[str]) -> list[str]:
    """Our and torch's modules a fresh interpreter holds after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'model', 'training', 'fastapi', 'server', 'client'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"SDL_VIDEODRIVER": "dummy", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def modules_of(package: str) -> list[str]:
    return [
        f"{package}.{p.stem}" if p.stem != "__init__" else package
        for p in sorted((REPO / package).glob("*.py"))
        if p.stem != "__main__"
    ]


def test_core_loads_no_torch_and_none_of_our_other_packages():
    assert loaded_by_importing(modules_of("core")) == []


def test_client_loads_no_torch_and_only_the_wire_protocol_of_the_server():
    loaded = loaded_by_importing(modules_of("client"))
    assert set(loaded) <= {"server", "server.protocol", *modules_of("client")}, loaded
