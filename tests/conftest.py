"""Shared test fixtures: the real replays in ../shared/replays, and the GPU marker."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The real Slippi replays live beside the repository (../shared/replays), never inside it.
REPLAYS = Path(os.environ.get("PLAYMODEL_REPLAYS", REPO.parent / "shared" / "replays"))


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
