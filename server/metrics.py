"""The server's Prometheus metrics, kept with `prometheus_client` (the text a scrape gets is
its `generate_latest`): counters, two gauges counted when scraped, the tick-time histogram, a
summary of the last minute of ticks, and the client library's process metrics (resident and
virtual memory, CPU seconds, open file descriptors, start time).

Each `ServerMetrics` has a registry of its own, so that several engines in one process (the
tests make many) do not collide in the library's global one. Read a value with
`metrics.value("playmodel_ticks_total")`. Measured against the hand-written exposition this
replaced: BENCHMARKS.md, "Kept parts (issue 24, item 5)"."""

from __future__ import annotations

from collections import deque

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import SummaryMetricFamily

TICK_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.010, 0.0125, 0.0150, 0.0167, 0.020, 0.033)
# The format the hand-written exposition served, which every Prometheus reads.
CONTENT_TYPE = prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4

# No `_created` series beside each counter and histogram: a scrape stays the size it was, and
# every value here starts with the process (process_start_time_seconds says when).
prometheus_client.disable_created_metrics()


class RecentQuantiles:
    """A Prometheus summary over the last `window` observations (the last minute of ticks at
    60 Hz): exact quantiles where the histogram's buckets are coarse. A collector of its own,
    as the client library's Summary has no quantiles."""

    QUANTILES = (0.5, 0.9, 0.99, 1.0)

    def __init__(self, name: str, help_text: str, window: int, registry: CollectorRegistry):
        self.name, self.help = name, help_text
        self.values: deque[float] = deque(maxlen=window)
        registry.register(self)

    def observe(self, value: float) -> None:
        self.values.append(value)

    def collect(self):
        ordered = sorted(self.values)  # one sort for every quantile, off the device thread
        family = SummaryMetricFamily(
            self.name, self.help, count_value=len(ordered), sum_value=sum(ordered)
        )
        for q in self.QUANTILES:
            family.add_sample(self.name, {"quantile": str(q)}, _quantile(ordered, q))
        yield family


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ServerMetrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_*: memory, CPU, fds (Linux /proc)

        def counter(name: str, help_text: str) -> Counter:
            # The library adds "_total" to a counter's name; the names below are without it.
            return Counter(name, help_text, registry=registry)

        self.sessions = Gauge("playmodel_sessions", "live sessions", registry=registry)
        self.matches_active = Gauge(
            "playmodel_matches_active", "matches queued or running", registry=registry
        )
        self.ticks = counter("playmodel_ticks", "ticks that stepped at least one session")
        self.tick_seconds = Histogram(
            "playmodel_tick_seconds",
            "duration of one tick (all sessions)",
            buckets=TICK_BUCKETS,
            registry=registry,
        )
        self.recent_ticks = RecentQuantiles(
            "playmodel_recent_tick_seconds",
            "tick duration over the last 3600 ticks",
            3600,
            registry,
        )
        self.late_ticks = counter("playmodel_late_ticks", "ticks that ended past their slot")
        self.frames_stepped = counter("playmodel_session_frames", "session frames stepped")
        self.substituted_inputs = counter(
            "playmodel_substituted_inputs", "inputs missing at their frame (last one reused)"
        )
        self.late_inputs = counter(
            "playmodel_late_inputs",
            "inputs that arrived too late to use (past the rollback window)",
        )
        self.recovered_inputs = counter(
            "playmodel_recovered_inputs",
            "inputs filled in from the redundant copies a later input carries",
        )
        self.lost_inputs = counter(
            "playmodel_lost_inputs",
            "inputs that never arrived in time: their frame left the rollback window substituted",
        )
        self.rollback_inputs = counter(
            "playmodel_rollback_inputs", "late inputs applied by rolling the game back"
        )
        self.rollbacks = counter("playmodel_rollbacks", "rollbacks (rewind and re-step)")
        self.rolled_back_frames = counter(
            "playmodel_rolled_back_frames", "frames re-stepped by rollbacks"
        )
        self.rejected_messages = counter(
            "playmodel_rejected_messages", "client messages answered with an error"
        )
        self.dropped_frames = counter(
            "playmodel_dropped_frames", "frames not sent to spectators that were behind"
        )
        self.match_frames = counter("playmodel_match_frames", "match frames stepped")
        self.failed_sessions = counter(
            "playmodel_failed_sessions",
            "sessions ended because their own step, rules, recording or frame failed",
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's value as a scrape would show it (e.g. "playmodel_ticks_total",
        "playmodel_tick_seconds_count"); None if there is no such sample."""
        return self.registry.get_sample_value(name, labels)

    def render(self, sessions: int, matches_active: int) -> str:
        """The text a scrape gets; the gauges' values are the engine's and the match
        service's counts at this moment."""
        self.sessions.set(sessions)
        self.matches_active.set(matches_active)
        return prometheus_client.generate_latest(self.registry).decode()
