"""Shared test fixtures: the real replays in ../shared/replays, and the GPU marker."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The real Slippi replays live beside the repository (../shared/replays), never inside it.
REPLAYS = Path(os.environ.get("PLAYMODEL_REPLAYS", REPO.parent / "shared" / "replays"))
# No test compiles the live step ahead of time behind its back (a minute of CPU per model, in a
# background process): tests/test_compiled_step.py turns it on where it tests it.
os.environ["PLAYMODEL_COMPILED_STEP"] = "0"


def pytest_collection_modifyitems(config, items):
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def replays() -> Path:
    if not (REPLAYS / "dev" / "MANIFEST.tsv").exists():
        pytest.fail(
            f"the real replays were not found at {REPLAYS}; put shared/ beside the repository "
            "or set PLAYMODEL_REPLAYS to the replays folder"
        )
    return REPLAYS


@pytest.fixture(scope="session")
def dev_dataset_dir(replays, tmp_path_factory) -> Path:
    """shared/replays/dev ingested once for the whole session, or the folder that
    PLAYMODEL_DEV_DATASET names. Tests only read it (a re-run of the ingestion is a no-op)."""
    from training.ingest import ingest

    ready = os.environ.get("PLAYMODEL_DEV_DATASET")
    if ready:  # already ingested elsewhere (a GPU machine without the replay parser's pyarrow)
        return Path(ready)
    out = tmp_path_factory.mktemp("dev_dataset")
    summary = ingest([replays / "dev"], out, workers=2, progress=False)
    assert (summary.ok, summary.failed) == (8, 0)
    return out


def read_tsv_manifest(path: Path) -> dict[str, dict]:
    """shared/replays/*/MANIFEST.tsv rows by file name."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


# The simulation's tests (test_rules.py, test_simulation.py, test_traced_step.py) share these;
# a module that defines a fixture of the same name uses its own.
@pytest.fixture(scope="module")
def model():
    """A tiny untrained world model, the same weights in every module."""
    import torch
    from simulation_setup import TINY

    from model.world_model import WorldModel

    torch.manual_seed(0)
    return WorldModel(TINY).eval()


@pytest.fixture(scope="module", params=["untrained", "demo checkpoint"])
def any_model(request, model):
    """The tiny untrained model, then the trained demo checkpoint."""
    if request.param == "untrained":
        return model
    from simulation_setup import DEMO_CHECKPOINT

    from model.checkpoint import load_checkpoint

    assert DEMO_CHECKPOINT.exists(), "the demo checkpoint is part of the repository"
    return load_checkpoint(DEMO_CHECKPOINT)[0]


@pytest.fixture(scope="module")
def replay_frames(replays):
    """The frames of a real replay (techTester), as tensors."""
    from core.replay_reader import read_replay
    from model.frames import frames_from_table

    return frames_from_table(read_replay(replays / "dev" / "slippi-js__slp__techTester.slp").table)
