"""Prometheus metrics, computed at scrape time from the supervisor's status.

The counters live in the worker processes; each reports its totals to the
supervisor every second, and the supervisor keeps what workers that are gone
had counted. A custom collector turns that one view into the exposition format
with ``prometheus-client``, so totals are correct across workers and restarts
(a counter never goes backwards when a worker dies) without the library's
multi-process file mode, which would put the handler path in charge of mmap
files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from udfd.engine.stats import BUCKETS
from udfd.kapacitor.reenable import RESULTS

#: metric name (without ``_total``) -> (the status counter it reads, help)
COUNTERS = {
    "udfd_points_in": ("points_in", "Points received from Kapacitor."),
    "udfd_points_out": ("points_out", "Points sent to Kapacitor."),
    "udfd_batches_in": ("batches_in", "Batches received from Kapacitor."),
    "udfd_connections": ("connections_total", "Connections accepted."),
    "udfd_connections_idle_closed": (
        "idle_closed",
        "Connections closed for sending no Init within init_timeout.",
    ),
    "udfd_connections_refused": (
        "connections_refused",
        "Connections refused because the function had max_connections open.",
    ),
    "udfd_handler_errors": ("handler_errors", "Handler failures (exceptions, bad output)."),
    "udfd_points_dropped": ("dropped", "Points dropped: point errors and the drop policy."),
    "udfd_protocol_errors": ("protocol_errors", "Protocol violations by the peer."),
    "udfd_keepalives": ("keepalives", "Keepalives answered."),
    "udfd_heartbeats": ("heartbeats", "Unsolicited keepalive answers while a handler worked."),
    "udfd_slow_calls": ("slow_calls", "Handler calls slower than slow_call."),
    "udfd_handler_timeouts": ("handler_timeouts", "Handler calls stuck past handler_timeout."),
    "udfd_bytes_in": ("bytes_in", "Bytes received from Kapacitor."),
    "udfd_bytes_out": ("bytes_out", "Bytes sent to Kapacitor."),
    "udfd_resource_loads": (
        "resource_loads",
        "Shared objects (models) loaded into a worker by this function's connections.",
    ),
    "udfd_resource_hits": (
        "resource_hits",
        "Connections that found their shared object (model) already loaded.",
    ),
}


#: metric name -> (the status histogram it reads, help)
HISTOGRAMS = {
    "udfd_keepalive_latency_seconds": (
        "keepalive_latency",
        "From reading a keepalive to the kernel taking its answer.",
    ),
    "udfd_handler_seconds": (
        "handler_seconds",
        "One chunk of frames through the handler, thread hand-off included.",
    ),
}
_BOUNDS = [repr(b) for b in BUCKETS] + ["+Inf"]


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as the cumulative ``le`` buckets Prometheus wants."""
    total = 0
    out = []
    for bound, count in zip(_BOUNDS, counts, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


class StatusCollector(Collector):
    """Reads ``status()`` once per scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        status = self._status()
        functions = status.get("functions", [])
        stopping = bool(status.get("stopping"))
        for name, (key, text) in COUNTERS.items():
            family = CounterMetricFamily(name, text, labels=["function"])
            for fn in functions:
                family.add_metric([fn["name"]], fn.get(key, 0))
            yield family
        for name, (key, text) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, text, labels=["function"])
            for fn in functions:
                data = fn.get(key) or {"counts": [0] * len(_BOUNDS), "sum": 0.0}
                histogram.add_metric([fn["name"]], _buckets(data["counts"]), data["sum"])
            yield histogram
        active = GaugeMetricFamily("udfd_connections", "Open connections.", labels=["function"])
        up = GaugeMetricFamily(
            "udfd_function_up", "1 while the function serves, else 0.", labels=["function"]
        )
        for fn in functions:
            active.add_metric([fn["name"]], fn.get("connections_active", 0))
            up.add_metric([fn["name"]], 1 if fn["state"] == "ready" and not stopping else 0)
        yield active
        yield up
        workers = GaugeMetricFamily("udfd_workers", "Worker processes serving.", labels=["pool"])
        restarts = CounterMetricFamily(
            "udfd_worker_restarts", "Worker processes restarted.", labels=["pool"]
        )
        for pool in status.get("pools", []):
            workers.add_metric([pool["name"]], pool.get("serving", 0))
            restarts.add_metric([pool["name"]], pool.get("restarts", 0))
        yield workers
        yield restarts
        yield from _kapacitor(status.get("kapacitor"))


def _kapacitor(status: dict[str, Any] | None) -> Iterator[Any]:
    """The task records and the re-enabler's outcomes (see udfd.kapacitor)."""
    if status is None:
        return
    tasks = GaugeMetricFamily(
        "udfd_kapacitor_tasks",
        "Kapacitor tasks known to udfd: live (connected) or pending (to re-enable).",
        labels=["state"],
    )
    for state in ("live", "pending"):
        tasks.add_metric([state], status.get("tasks", {}).get(state, 0))
    yield tasks
    outcomes = CounterMetricFamily(
        "udfd_kapacitor_reenables",
        "Tasks whose re-enabling ended, by result.",
        labels=["result"],
    )
    for result in RESULTS:
        outcomes.add_metric([result], status.get(result, 0))
    yield outcomes
    requests = CounterMetricFamily(
        "udfd_kapacitor_requests", "Requests to Kapacitor's HTTP API.", labels=["result"]
    )
    errors = status.get("request_errors", 0)
    requests.add_metric(["ok"], status.get("requests", 0) - errors)
    requests.add_metric(["error"], errors)
    yield requests
    yield CounterMetricFamily(
        "udfd_kapacitor_retries",
        "Re-enabling attempts retried after an error that may pass.",
        value=status.get("retries", 0),
    )


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def registry_for(status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry of its own (not the library's global one, which tests share)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return registry
