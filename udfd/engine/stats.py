"""Counters of one function, shared by its connections: plain data for health and metrics.

Only the event loop thread writes ``Stats``: a worker thread running a handler
counts into its connection's ``Tally``, which the loop adds in after each slice,
so concurrent connections of one function never lose increments.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

#: upper bounds (seconds) of the latency histograms; one more bucket holds the rest (+Inf)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """Counts per bucket (not cumulative) and the sum: cheap to keep, to send and to add."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


@dataclass
class Stats:
    """What happened on one function's connections since udfd started."""

    connections_total: int = 0
    connections_active: int = 0
    points_in: int = 0
    points_out: int = 0
    batches_in: int = 0
    dropped: int = 0
    handler_errors: int = 0
    protocol_errors: int = 0
    keepalives: int = 0
    #: unsolicited keepalive answers sent while a handler worked on a backlog
    heartbeats: int = 0
    #: handler calls logged as slower than ``slow_call``
    slow_calls: int = 0
    #: handler calls stuck past ``handler_timeout`` (their connection was ended)
    handler_timeouts: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: connections closed for sending no Init within ``init_timeout``
    idle_closed: int = 0
    #: shared objects (models) this function's connections loaded into a worker ...
    resource_loads: int = 0
    #: ... and found already loaded there (``Context.shared``)
    resource_hits: int = 0
    last_error: str = ""
    last_error_time: float = 0.0
    #: from reading a keepalive to the kernel taking its answer
    keepalive_latency: Histogram = field(default_factory=Histogram)
    #: one chunk of frames through the handler, thread hand-off included
    handler_seconds: Histogram = field(default_factory=Histogram)


class Tally:
    """Per-connection counts, written by whichever thread runs the handler."""

    __slots__ = (
        "batches_in",
        "dropped",
        "handler_errors",
        "points_in",
        "resource_hits",
        "resource_loads",
    )

    def __init__(self) -> None:
        self.points_in = self.batches_in = self.dropped = self.handler_errors = 0
        self.resource_loads = self.resource_hits = 0

    def merge_into(self, stats: Stats) -> None:
        stats.points_in += self.points_in
        stats.batches_in += self.batches_in
        stats.dropped += self.dropped
        stats.handler_errors += self.handler_errors
        stats.resource_loads += self.resource_loads
        stats.resource_hits += self.resource_hits
        self.points_in = self.batches_in = self.dropped = self.handler_errors = 0
        self.resource_loads = self.resource_hits = 0

    def count_load(self) -> None:
        self.resource_loads += 1

    def count_hit(self) -> None:
        self.resource_hits += 1
