"""`playmodel parse SRC... --out DIR`: turn Slippi replays into the parquet dataset.

Each input file becomes one manifest row (ok / skipped / failed, with the reason) and, when
ok, one parquet file named by the sha256 of the replay's bytes. Files are parsed in a process
pool. Nothing stops the run: a file that fails is recorded and the others go on; a parser that
crashes its worker process is isolated and recorded too. Every write is atomic, and a re-run
skips files already in the manifest (same path, size and modification time) unless --force.
The workers end with the run, even when it is killed with SIGKILL (`exit_with_parent`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from core.atomic_file import atomic_path, remove_stale_temporaries
from core.manifest import ManifestAppender, load_manifest, write_manifest
from core.replay_reader import ReplaySkipped, ReplayUnreadable, read_replay

log = logging.getLogger(__name__)

# Slippi replays are UBJSON objects that open with the "raw" key (Slippi spec, file format).
SLIPPI_MAGIC = b"{U\x03raw"

# zstd level 1 without dictionaries or statistics: within 1% of the size of the default
# settings on the dev replays and about 25% faster to write (bench/parse.py).
PARQUET_OPTIONS = dict(
    compression="zstd", compression_level=1, use_dictionary=False, write_statistics=False
)

# prctl(2) option that asks the kernel to signal this process when its parent dies
# (<linux/prctl.h>), and how often the watchdog used where prctl is missing looks.
PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.5

# Known peppi-py messages, and what they mean for a user.
FAILURE_HINTS = {
    "invalid game end method": "a special game mode that the parser does not support",
    "Invalid player placement": "a game mode with placements the parser does not support",
    "zero-size event payload": "the file is corrupt (an event with no payload)",
}


# What the parser itself prints (Rust panic messages on bad files) goes here, not to the
# terminal: the manifest and the summary already say which files failed and why.
PARSER_LOG = "parse.log"


@dataclasses.dataclass
class Summary:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    already_done: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # path, reason
    parser_log: Path | None = None  # the parser's own messages of this run, if it printed any

    @property
    def processed(self) -> int:
        return self.ok + self.skipped + self.failed

    def count(self, row: dict) -> None:
        setattr(self, row["status"], getattr(self, row["status"]) + 1)
        if row["status"] == "ok":
            self.frames += row["frames"]
        elif row["status"] == "failed":
            self.failures.append((row["path"], row["reason"]))

    def lines(self, out_dir: Path) -> list[str]:
        """The end of a run for a terminal: the counts, then one line per failed file."""
        lines = [self.line(out_dir)]
        lines += [f"  failed: {path}: {reason}" for path, reason in sorted(self.failures)]
        if self.failures and self.parser_log is not None:
            lines.append(f"  (the parser's own messages: {self.parser_log})")
        return lines

    def line(self, out_dir: Path) -> str:
        return (
            f"parsed {self.processed} files: {self.ok} ok, {self.skipped} skipped, "
            f"{self.failed} failed, {self.frames:,} frames"
            f" ({self.already_done} already in the manifest) -> {out_dir}"
        )


def find_replays(sources: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """`.slp` files named directly or found under folders (recursively), each once.

    Returns the files and a list of problems with the sources (missing paths)."""
    files: dict[Path, None] = {}
    problems = []
    for source in map(Path, sources):
        if source.is_dir():
            for path in sorted(source.rglob("*.slp")):
                if path.is_file():
                    files.setdefault(path.resolve())
        elif source.is_file():
            files.setdefault(source.resolve())
        else:
            problems.append(f"{source}: no such file or folder")
    return list(files), problems


def ingest_file(path: str, out_dir: str) -> dict:
    """Parse one replay and write its parquet file. Never raises for a bad file: the returned
    manifest row says what happened. Runs in a worker process."""
    row = {"path": path, "hash": None, "status": "failed", "reason": None, "output": None}
    try:
        stat = os.stat(path)
        row["bytes"], row["mtime_ns"] = stat.st_size, stat.st_mtime_ns
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        row["reason"] = f"cannot read the file: {e.strerror or e}"
        return row
    row["hash"] = hashlib.sha256(data).hexdigest()
    if not data.startswith(SLIPPI_MAGIC):
        row["reason"] = "not a Slippi replay (the file does not start with the .slp header)"
        return row
    try:
        parsed = read_replay(path)
    except ReplaySkipped as e:
        row.update(status="skipped", reason=str(e))
        return row
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - peppi's PanicException derives from BaseException
        row["reason"] = describe_failure(e, data)
        return row

    output = f"{row['hash']}.parquet"
    with atomic_path(Path(out_dir) / output) as tmp:
        pq.write_table(parsed.table, tmp, **PARQUET_OPTIONS)
    row.update(parsed.info, status="ok", output=output)
    return row


def describe_failure(error: BaseException, data: bytes) -> str:
    """A reason a user can act on, from the parser's exception and the file's bytes."""
    if isinstance(error, ReplayUnreadable):  # already says why
        return str(error)
    message = str(error).strip() or type(error).__name__
    if type(error).__name__ == "PanicException":  # a panic outside read_replay's guard
        return f"the parser (peppi-py) panicked: {message}"
    if "failed to fill whole buffer" in message:
        return f"{_why_short_read(data)} (peppi-py: {message})"
    for needle, hint in FAILURE_HINTS.items():
        if needle in message:
            return f"{hint} (peppi-py: {message})"
    return f"{type(error).__name__}: {message}"


def _why_short_read(data: bytes) -> str:
    # The header's "raw" array declares its length (big-endian u32 after `[$U#l`). A replay
    # whose writer never finished leaves it 0; a complete file holds the whole declared array.
    declared = int.from_bytes(data[11:15], "big") if len(data) >= 15 else 0
    if declared == 0 or len(data) < 15 + declared:
        return "the file is truncated (the recording was not finished or was cut short)"
    return "the file is complete but holds events this parser version cannot read"


def is_done(row: dict | None, path: Path, out_dir: Path) -> bool:
    """Whether a manifest row already covers this file as it is now."""
    if row is None:
        return False
    try:
        stat = path.stat()
    except OSError:
        return False
    if (row.get("bytes"), row.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
        return False
    return row["status"] != "ok" or (out_dir / row["output"]).exists()


def ingest(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    workers: int | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> Summary:
    """Parse every replay under `sources` into `out_dir`. See the module docstring."""
    out_dir = Path(out_dir)
    files, problems = find_replays(sources)
    for problem in problems:
        log.error(problem)
    out_dir.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_temporaries(out_dir):
        log.info("removed %d partial files left by an interrupted run", stale)

    rows = load_manifest(out_dir)
    summary = Summary()
    todo = []
    for path in files:
        if not force and is_done(rows.get(str(path)), path, out_dir):
            summary.already_done += 1
        else:
            todo.append(path)

    ok_by_hash = {r["hash"]: p for p, r in rows.items() if r["status"] == "ok"}
    parser_log = out_dir / PARSER_LOG
    parser_log.write_bytes(b"")  # this run's messages only
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    # progress=None shows the bar only on a terminal.
    bar = tqdm(
        total=len(todo),
        unit="file",
        desc="parse",
        disable=None if progress is None else not progress,
    )
    with ManifestAppender(out_dir) as manifest:

        def record(row: dict) -> None:
            if row["status"] == "ok":
                first = ok_by_hash.setdefault(row["hash"], row["path"])
                if first != row["path"]:
                    row.update(status="skipped", reason=f"same content as {first}")
            rows[row["path"]] = row
            manifest.append(row)
            summary.count(row)
            if row["status"] == "failed":  # listed in the summary, after the bar
                log.debug("failed: %s: %s", row["path"], row["reason"])
            bar.set_postfix(ok=summary.ok, skipped=summary.skipped, failed=summary.failed)
            bar.update()

        _run_pool(todo, out_dir, workers, record, parser_log)
    bar.close()
    write_manifest(out_dir, rows)
    if parser_log.stat().st_size == 0:
        parser_log.unlink()
    else:
        summary.parser_log = parser_log
    return summary


def _run_pool(
    files: list[Path], out_dir: Path, workers: int, record, parser_log: Path | None = None
) -> None:
    """Parse `files` in a process pool, calling `record` with each row as it completes.

    If a worker dies (a crash inside the native parser), the files that were in flight are
    re-run one at a time in their own process; the one that crashes again is recorded as
    failed, the others as usual.
    """
    suspects: list[Path] = []
    # With fork and spawn a worker's parent is this process; with forkserver it is the fork
    # server, which exits when this process does.
    context = multiprocessing.get_context()
    parent = None if context.get_start_method() == "forkserver" else os.getpid()
    log_path = None if parser_log is None else str(parser_log)
    options = dict(mp_context=context, initializer=_init_worker, initargs=(parent, log_path))
    with cf.ProcessPoolExecutor(workers, **options) as pool:
        futures = {pool.submit(ingest_file, str(p), str(out_dir)): p for p in files}
        for future in cf.as_completed(futures):
            try:
                record(future.result())
            except BrokenProcessPool:
                suspects.append(futures[future])
    for path in suspects:
        with cf.ProcessPoolExecutor(1, **options) as pool:
            try:
                record(pool.submit(ingest_file, str(path), str(out_dir)).result())
            except BrokenProcessPool:
                record(
                    {
                        "path": str(path),
                        "hash": None,
                        "status": "failed",
                        "reason": "the parser crashed its process while reading this file",
                        "output": None,
                    }
                )


def _init_worker(parent: int | None, parser_log: str | None = None) -> None:
    # peppi-py's panics are reported in the manifest and the summary; Rust prints each one
    # to the process's stderr (and a backtrace unless told not to), which would bury the
    # progress bar under traces of files that are then handled: the worker's stderr goes
    # to the run's parser log instead.
    os.environ["RUST_BACKTRACE"] = "0"
    if parser_log is not None:
        fd = os.open(parser_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    exit_with_parent(parent)


def exit_with_parent(
    expected_parent: int | None, poll_s: float = PARENT_POLL_S, death_signal: bool = True
) -> None:
    """End this process when its parent dies.

    A pool worker waits for work on a pipe whose writing end every sibling forked with it
    also holds, so it never sees the end of file when the parent is killed (SIGKILL runs no
    clean-up): without this, each worker of a killed `playmodel parse` lived on as an orphan
    of PID 1, holding its ~94 MB (issue 21). On Linux the kernel sends SIGKILL when the
    parent dies (prctl PR_SET_PDEATHSIG; strictly, when the thread that forked the worker
    ends, and the pool forks from the thread that submits, which outlives the pool);
    elsewhere a daemon thread polls getppid(), which changes when an orphan is re-parented.
    A file being written when the worker dies is left as a temporary file, which the next
    run removes (`remove_stale_temporaries`).

    `expected_parent`, when known, catches a parent that died before this ran.
    """
    armed = death_signal and _set_parent_death_signal(signal.SIGKILL)
    parent = os.getppid()
    if expected_parent is not None and parent != expected_parent:
        os._exit(1)
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(parent, poll_s), name="parent-watchdog", daemon=True
        ).start()


def _set_parent_death_signal(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, signum) through libc; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc by that name, or a libc without prctl
        return False


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)  # no clean-up: nobody is left to receive this worker's results


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="playmodel parse")
    parser.description = "Parse Slippi replays (.slp) into a parquet dataset with a manifest."
    parser.add_argument("sources", nargs="+", metavar="SRC", help=".slp files or folders")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder")
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel processes (default: all cores)"
    )
    parser.add_argument(
        "--force", action="store_true", help="re-parse files already in the manifest"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.workers is not None and args.workers < 1:
        log.error("--workers must be at least 1 (got %d)", args.workers)
        return 2
    summary = ingest(args.sources, args.out, workers=args.workers, force=args.force)
    print("\n".join(summary.lines(args.out)))
    if summary.processed + summary.already_done == 0:
        log.error("no .slp files found in %s", " ".join(args.sources))
        return 2
    if summary.failed == summary.processed and summary.already_done == 0:
        return 1  # nothing could be read
    return 0


if __name__ == "__main__":
    sys.exit(main())
