"""Counters of one function, shared by its connections: plain data for health and metrics.

Only the event loop thread writes ``Stats``: a worker thread running a handler
counts into its connection's ``Tally``, which the loop adds in after each slice,
so concurrent connections of one function never lose increments.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    last_error: str = ""
    last_error_time: float = 0.0


class Tally:
    """Per-connection counts, written by whichever thread runs the handler."""

    __slots__ = ("batches_in", "dropped", "handler_errors", "points_in")

    def __init__(self) -> None:
        self.points_in = self.batches_in = self.dropped = self.handler_errors = 0

    def merge_into(self, stats: Stats) -> None:
        stats.points_in += self.points_in
        stats.batches_in += self.batches_in
        stats.dropped += self.dropped
        stats.handler_errors += self.handler_errors
        self.points_in = self.batches_in = self.dropped = self.handler_errors = 0
