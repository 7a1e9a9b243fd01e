"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library:
the server needs a handful of counters, gauges and one histogram."""

from __future__ import annotations

import bisect
from collections import deque

TICK_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.010, 0.0125, 0.0150, 0.0167, 0.020, 0.033)


class Metric:
    name: str
    help: str

    def _header(self, kind: str) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {kind}"]


class Counter(Metric):
    def __init__(self, name: str, help_text: str):
        self.name, self.help, self.value = name, help_text, 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} counter",
            f"{self.name} {self.value}",
        ]


class Gauge(Metric):
    """A value counted when scraped, by whoever holds what it counts (`ServerMetrics.render`)."""

    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text

    def render(self, value: float) -> list[str]:
        return [*self._header("gauge"), f"{self.name} {value}"]


class Histogram(Metric):
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def render(self) -> list[str]:
        lines = self._header("histogram")
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines += [f"{self.name}_sum {self.sum}", f"{self.name}_count {self.count}"]
        return lines


class RecentQuantiles(Metric):
    """A Prometheus summary over the last `window` observations (the last minute of ticks at
    60 Hz): exact quantiles where the histogram's buckets are coarse."""

    QUANTILES = (0.5, 0.9, 0.99, 1.0)

    def __init__(self, name: str, help_text: str, window: int):
        self.name, self.help = name, help_text
        self.values: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        self.values.append(value)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.values)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def render(self) -> list[str]:
        lines = self._header("summary")
        lines += [f'{self.name}{{quantile="{q}"}} {self.quantile(q)}' for q in self.QUANTILES]
        return [
            *lines,
            f"{self.name}_sum {sum(self.values)}",
            f"{self.name}_count {len(self.values)}",
        ]


class ServerMetrics:
    def __init__(self):
        self.sessions = Gauge("playmodel_sessions", "live sessions")
        self.matches_active = Gauge("playmodel_matches_active", "matches queued or running")
        self.tick_seconds = Histogram(
            "playmodel_tick_seconds", "duration of one tick (all sessions)", TICK_BUCKETS
        )
        self.recent_ticks = RecentQuantiles(
            "playmodel_recent_tick_seconds", "tick duration over the last 3600 ticks", 3600
        )
        self.ticks = Counter("playmodel_ticks_total", "ticks that stepped at least one session")
        self.late_ticks = Counter("playmodel_late_ticks_total", "ticks that ended past their slot")
        self.frames_stepped = Counter("playmodel_session_frames_total", "session frames stepped")
        self.substituted_inputs = Counter(
            "playmodel_substituted_inputs_total", "inputs missing at their frame (last one reused)"
        )
        self.late_inputs = Counter(
            "playmodel_late_inputs_total",
            "inputs that arrived too late to use (past the rollback window)",
        )
        self.recovered_inputs = Counter(
            "playmodel_recovered_inputs_total",
            "inputs filled in from the redundant copies a later input carries",
        )
        self.lost_inputs = Counter(
            "playmodel_lost_inputs_total",
            "inputs that never arrived in time: their frame left the rollback window substituted",
        )
        self.rollback_inputs = Counter(
            "playmodel_rollback_inputs_total", "late inputs applied by rolling the game back"
        )
        self.rollbacks = Counter("playmodel_rollbacks_total", "rollbacks (rewind and re-step)")
        self.rolled_back_frames = Counter(
            "playmodel_rolled_back_frames_total", "frames re-stepped by rollbacks"
        )
        self.rejected_messages = Counter(
            "playmodel_rejected_messages_total", "client messages answered with an error"
        )
        self.dropped_frames = Counter(
            "playmodel_dropped_frames_total", "frames not sent to spectators that were behind"
        )
        self.match_frames = Counter("playmodel_match_frames_total", "match frames stepped")
        self.failed_sessions = Counter(
            "playmodel_failed_sessions_total",
            "sessions ended because their own step, rules, recording or frame failed",
        )
        self._all = [
            self.ticks,
            self.tick_seconds,
            self.recent_ticks,
            self.late_ticks,
            self.frames_stepped,
            self.substituted_inputs,
            self.late_inputs,
            self.recovered_inputs,
            self.lost_inputs,
            self.rollback_inputs,
            self.rollbacks,
            self.rolled_back_frames,
            self.rejected_messages,
            self.dropped_frames,
            self.match_frames,
            self.failed_sessions,
        ]

    def render(self, sessions: int, matches_active: int) -> str:
        """The text a scrape gets; the gauges' values are the engine's and the match
        service's counts at this moment."""
        lines = [*self.sessions.render(sessions), *self.matches_active.render(matches_active)]
        lines += [line for metric in self._all for line in metric.render()]
        return "\n".join(lines) + "\n"
