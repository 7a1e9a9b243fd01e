"""The live step compiled ahead of time (`model.compiled_step`): compiled in a background
process while the trace serves, then switched to; the trace's frames to ~1e-4 and its events
exactly; a cached package used from the first step; anything wrong with a package or a
compile leaves the trace serving.

One compile of the tiny model (about a minute on a 2-core machine) serves the module."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from simulation_setup import TINY
from test_traced_step import play_through_kos_respawns_and_a_game_end

import model.compiled_step as compiled_step
from model.game_start import GameSetup
from model.simulation import Simulation
from model.world_model import WorldModel

COMPILE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(compiled_step.DISABLE_ENV, "1")
        patch.setenv(compiled_step.CACHE_ENV, str(tmp_path_factory.mktemp("playmodel-cache")))
        yield compiled_step.cache_dir()


@pytest.fixture(scope="module")
def package(cache, model) -> Path:
    """The package a server's simulation compiled in the background, once it switched to it."""
    sim = Simulation(model, compiled=True)
    sim.new_game(GameSetup(seed=1))
    sim.step({})
    assert sim.last_step_path == "trace"  # the trace serves meanwhile
    (log,) = cache.glob("*.log")  # a compile started, and says where it writes
    deadline = time.monotonic() + COMPILE_TIMEOUT_S
    while sim.last_step_path != "compiled" and time.monotonic() < deadline:
        assert not list(cache.glob("*.failed")), log.read_text()[-3000:]
        time.sleep(0.2)
        sim.step({})
    assert sim.last_step_path == "compiled", log.read_text()[-3000:]
    (package,) = cache.glob("*.pt2")
    assert package.with_suffix(".log") == log and not list(cache.glob("*.job"))
    return package


def test_the_compiled_step_plays_as_the_trace_through_kos_respawns_and_a_game_end(package, model):
    """Events and game ends exactly the trace's, frames to 1e-3 over 200 steps of three games
    (a finished game in the batch steps eagerly, so the paths also take turns)."""
    server, trace = Simulation(model, compiled=True), Simulation(model)
    paths = set()

    def close(a, b):
        paths.add(server.last_step_path)
        if a.is_floating_point():
            return torch.allclose(a, b, rtol=1e-3, atol=1e-3)
        return torch.equal(a, b)

    play_through_kos_respawns_and_a_game_end(server, trace, close)
    assert paths == {"compiled", "eager"} and trace.last_step_path == "trace"


def test_a_cached_package_serves_from_the_first_step(package, model, monkeypatch):
    """A later start (a new model object, the same weights) loads it and starts no compile."""
    monkeypatch.setattr(compiled_step, "_spawn", _no_process)
    same = WorldModel(TINY).eval()
    same.load_state_dict(model.state_dict())
    sim = Simulation(same, compiled=True)
    sim.new_game(GameSetup(seed=2))
    sim.step({})
    assert sim.last_step_path == "compiled"


def test_compile_step_command_finds_a_cached_package_ready(package, model, tmp_path, capsys):
    """`playmodel compile-step --checkpoint CKPT` of a model whose step is cached says so at
    once (a model without one would compile for a minute, as the fixture did)."""
    from model.checkpoint import save_checkpoint
    from server.compile_step import main

    save_checkpoint(tmp_path / "tiny.safetensors", model)
    assert main(["--checkpoint", str(tmp_path / "tiny.safetensors")]) == 0
    assert "the compiled step is ready" in capsys.readouterr().out


def test_compile_step_command_says_when_it_is_turned_off(monkeypatch, capsys):
    from server.compile_step import main

    monkeypatch.setenv(compiled_step.DISABLE_ENV, "off")
    assert main([]) == 2
    assert "nothing to compile" in capsys.readouterr().err


def test_batches_beyond_the_package_run_the_trace(package, model, monkeypatch):
    monkeypatch.setattr(compiled_step, "MAX_BATCH", 2)
    sim = Simulation(model, compiled=True)
    first, _ = sim.new_game(GameSetup(seed=3)), sim.new_game(GameSetup(seed=4))
    sim.step({})
    assert sim.last_step_path == "compiled"
    sim.new_game(GameSetup(seed=5))
    sim.step({})
    assert sim.last_step_path == "trace"
    sim.remove_game(first)
    sim.step({})
    assert sim.last_step_path == "compiled"


def test_a_package_of_other_weights_is_refused_and_the_trace_serves(package, monkeypatch):
    """A package that is not what its key says (a corrupted cache, a key that missed
    something) disagrees with the trace on its first step and is not used."""
    process = _Process(monkeypatch)
    sim = Simulation(_other_model(7), compiled=True)
    sim.new_game(GameSetup(seed=6))
    sim.step({})
    assert process.package is not None and sim.last_step_path == "trace"
    process.package.write_bytes(package.read_bytes())
    process.exit_code = 0
    with pytest.warns(UserWarning, match="differs from the trace"):
        sim.step({})
    sim.step({})
    assert sim.last_step_path == "trace"


def test_a_failed_compile_is_reported_and_not_retried(package, monkeypatch):
    process = _Process(monkeypatch)
    model = _other_model(8)
    sim = Simulation(model, compiled=True)
    sim.new_game(GameSetup(seed=7))
    sim.step({})
    process.package.with_suffix(".failed").touch()  # as the compile's process does
    process.exit_code = 1
    with pytest.warns(UserWarning, match="failed.*Remove .*failed to try again"):
        sim.step({})
    assert sim.last_step_path == "trace"
    monkeypatch.setattr(compiled_step, "_spawn", _no_process)
    again = Simulation(_other_model(8), compiled=True)  # a later start
    again.new_game(GameSetup(seed=7))
    with pytest.warns(UserWarning, match="failed"):
        again.step({})
    assert again.last_step_path == "trace"


def test_a_cache_that_cannot_be_written_leaves_the_trace_serving(tmp_path, monkeypatch):
    """A read-only home, a file where the folder should be: a warning, and the game plays."""
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    monkeypatch.setenv(compiled_step.DISABLE_ENV, "1")
    monkeypatch.setenv(compiled_step.CACHE_ENV, str(not_a_folder))
    sim = Simulation(_other_model(9), compiled=True)
    sim.new_game(GameSetup(seed=8))
    with pytest.warns(UserWarning, match="could not start compiling"):
        sim.step({})
    sim.step({})
    assert sim.last_step_path == "trace"


def test_only_the_last_packages_are_kept(tmp_path):
    for i in range(5):
        for suffix in (".pt2", ".log"):
            path = tmp_path / f"key{i}{suffix}"
            path.write_text("")
            os.utime(path, (1000 + i, 1000 + i))
    removed = compiled_step.forget_old_packages(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == ["key0.pt2", "key1.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"key{i}{suffix}" for i in (2, 3, 4) for suffix in (".log", ".pt2")
    ]


def test_the_compile_process_marks_its_failure_and_removes_its_job(tmp_path):
    job, package = tmp_path / "broken.job", tmp_path / "steps" / "broken.pt2"
    job.write_bytes(b"not a job")
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.load raises
        compiled_step.main([str(job), str(package)])
    assert package.with_suffix(".failed").exists() and not job.exists()
    assert not package.exists()


def test_off_when_disabled_and_for_int8_models(model, monkeypatch):
    from model.quantize import quantize_int8

    monkeypatch.setattr(compiled_step, "_spawn", _no_process)
    monkeypatch.setenv(compiled_step.DISABLE_ENV, "0")
    for served in (model, quantize_int8(model)):
        sim = Simulation(served, compiled=True)
        sim.new_game(GameSetup())
        sim.step({})
        assert sim.last_step_path == "trace"
        monkeypatch.setenv(compiled_step.DISABLE_ENV, "1")


def _other_model(seed: int) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(TINY).eval()


def _no_process(*args, **kwargs):
    raise AssertionError("a compile was started")


class _Process:
    """Stands in for the compile's process: still running until `exit_code` is set."""

    def __init__(self, monkeypatch):
        self.package: Path | None = None
        self.exit_code: int | None = None
        monkeypatch.setattr(compiled_step, "_spawn", self._start)
        monkeypatch.setattr(compiled_step, "LOOK_EVERY_S", 0.0)  # each step looks

    def _start(self, command, **kwargs):
        self.package = Path(command[-1])
        return self

    def poll(self) -> int | None:
        return self.exit_code
