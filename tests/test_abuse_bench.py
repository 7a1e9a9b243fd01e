"""bench/abuse.py runs: two cheap abuse classes against a real server on loopback, a healthy
session playing meanwhile (the full bench takes minutes: BENCHMARKS.md has its table)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from server.serve import ServerThread
from server.settings import ServerSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import abuse

pytestmark = pytest.mark.timeout(300)


def test_two_abuse_classes_answer_as_documented(tmp_path, monkeypatch):
    for name, value in abuse.server_environment(tmp_path, "a-key").items():
        monkeypatch.setenv(name, value)
    with ServerThread(ServerSettings(port=0)) as server:
        rows = asyncio.run(
            abuse.run_attacks(
                server.url, "a-key", tmp_path, os.getpid(), ["malformed", "unauthorized"], print
            )
        )
    assert [row["class"] for row in rows] == ["malformed", "unauthorized"]
    for row in rows:
        assert row["as_documented"], row["problems"]
        assert row["frames"] > 0  # the healthy session played through (its rate: the bench's)
        assert row["rss_before_mb"] > 0 and row["rss_peak_mb"] >= row["rss_before_mb"]
        assert abuse.format_row(row).startswith(f"| {row['class']} |")
    assert "error stale_input x5" in rows[0]["outcome"]
    assert rows[1]["outcome"] == "401 x80; 403 x40"


def test_unknown_classes_are_named_with_the_known_ones():
    assert abuse.parse_classes("malformed, silence") == ["malformed", "silence"]
    assert abuse.parse_classes(None) == list(abuse.ATTACKS)
    with pytest.raises(ValueError, match="unknown class nope; the classes are: upload_dtype"):
        abuse.parse_classes("malformed,nope")
