"""What the scripts that mine a rule's table from the corpus share: reading every parsed game
of a dataset folder, and writing the table (`training/mine_action_ends.py`,
`training/mine_dash_runs.py`; the tables live beside the rules that read them, in `model/`)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic_file import atomic_path
from core.manifest import load_manifest


def parsed_games(folder: Path, columns: Sequence[str]) -> Iterator[pa.Table]:
    """`columns` of every game the dataset folder's manifest lists as parsed ("ok")."""
    for row in load_manifest(folder).values():
        if row.get("status") == "ok":
            yield pq.read_table(folder / row["output"], columns=list(columns))


def write_table(rows: list[dict], path: Path) -> None:
    """`rows` as a CSV with their keys as its header, written atomically."""
    if not rows:
        raise ValueError(f"nothing to write to {path}: no row passed the table's conditions")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
