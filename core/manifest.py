"""The dataset manifest: one JSON line per input file, whatever became of it.

`manifest.jsonl` sits beside the per-game parquet files. A run appends a line as each file
finishes, so a killed run keeps what it did; at the end of a run the manifest is rewritten
atomically with one row per input path (the newest wins). A truncated last line (a run killed
mid-write) is ignored on reading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO

from core.atomic_file import atomic_path

MANIFEST_NAME = "manifest.jsonl"
STATUSES = ("ok", "skipped", "failed")

# Every row has these keys; an ok row also has the replay's facts (see docs/DATA.md).
BASE_KEYS = ("path", "hash", "status", "reason", "bytes", "mtime_ns", "output")

log = logging.getLogger(__name__)


def load_manifest(folder: Path) -> dict[str, dict]:
    """Rows by input path. Missing manifest: empty. Unreadable lines are skipped with a log."""
    path = Path(folder) / MANIFEST_NAME
    rows: dict[str, dict] = {}
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is not valid JSON (a killed run?); ignored", path, number)
                continue
            if not isinstance(row, dict) or row.get("status") not in STATUSES or "path" not in row:
                log.warning("%s line %d is not a manifest row; ignored", path, number)
                continue
            rows[row["path"]] = row
    return rows


class ManifestAppender:
    """Appends rows as they arrive; flushed per row so a killed process loses nothing."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / MANIFEST_NAME
        self._file: IO[str] | None = None

    def __enter__(self) -> ManifestAppender:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._terminate_partial_line()
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, row: dict) -> None:
        assert self._file is not None, "use ManifestAppender as a context manager"
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def _terminate_partial_line(self) -> None:
        # A killed writer may have left a line without its newline; start on a fresh line.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    with open(self.path, "ab") as g:
                        g.write(b"\n")


def write_manifest(folder: Path, rows: dict[str, dict]) -> None:
    """Rewrite the manifest atomically, one row per path, in path order."""
    with atomic_path(Path(folder) / MANIFEST_NAME) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for path in sorted(rows):
            f.write(json.dumps(rows[path], sort_keys=True) + "\n")
