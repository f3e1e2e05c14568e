"""Pools of worker processes, as the supervisor sees them.

A pool is a name, a size and the functions it serves. Its current generation of
workers gets new connections, the least busy worker first, so busy
connections land on separate cores. A reload starts a new generation and
retires the old one: retired workers keep their open connections (Kapacitor
never reconnects) and exit when the last one ends.

A worker that dies unexpectedly costs only its own connections. The pool
restarts it after a backoff that doubles with each crash in the last minute
(from 0.5 s up to 30 s), and says so in the log and the status, so a handler
that crashes at once cannot cause a restart storm.
"""

from __future__ import annotations

import collections
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from udfd.serve.channel import Channel

__all__ = ["CRASH_WINDOW", "Pool", "WorkerHandle"]

log = logging.getLogger("udfd.supervisor")

#: crashes within this many seconds count towards the backoff
CRASH_WINDOW = 60.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


@dataclass(eq=False)
class WorkerHandle:
    """One worker process: its channel, what it serves, what it last reported."""

    pool: str
    generation: int
    slot: int
    pid: int
    channel: Channel
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    #: set once the worker said hello: it can take connections
    ready: bool = False
    retired: bool = False
    stopping: bool = False
    connections: int = 0
    connections_total: int = 0
    #: functions whose handler import has started and not finished
    loading: set[str] = field(default_factory=set)
    #: function -> the worker's last reported counters
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what ``Context.shared`` holds in this worker (models loaded), as last reported
    resources: list[dict[str, Any]] = field(default_factory=list)
    exit: str = ""
    #: connections handed to it and not reported closed: id -> function
    open: dict[int, str] = field(default_factory=dict)
    #: connections sent but not yet acknowledged: id -> (function, socket, read-ahead bytes)
    untaken: dict[int, tuple[str, socket.socket, bytes]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.pool}/{self.slot}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "slot": self.slot,
            "generation": self.generation,
            "pid": self.pid,
            "state": "retiring" if self.retired else ("serving" if self.ready else "starting"),
            "connections": self.connections,
            "connections_total": self.connections_total,
            "started_at": self.started_at,
            "resources": self.resources,
        }


class Pool:
    """One pool's workers and restart bookkeeping (owned by the supervisor)."""

    def __init__(self, name: str, size: int, generation: int) -> None:
        self.name = name
        self.size = size
        self.generation = generation
        self.workers: list[WorkerHandle] = []
        self.crashes: collections.deque[float] = collections.deque()
        self.restarts = 0
        self.last_exit = ""
        self.available = anyio.Event()
        self._loop_logged = -CRASH_WINDOW

    def pick(self) -> WorkerHandle | None:
        """The ready worker with the fewest open connections (the lowest slot on a tie)."""
        ready = [w for w in self.workers if w.ready and not w.retired and not w.stopping]
        if not ready:
            return None
        return min(ready, key=lambda w: (w.connections, w.slot))

    def update_available(self) -> None:
        if self.pick() is not None:
            self.available.set()
        elif self.available.is_set():
            self.available = anyio.Event()

    def crashed(self, worker: WorkerHandle) -> float:
        """Record a crash; return the backoff before the worker's slot is restarted."""
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
            self.crashes.popleft()
        self.last_exit = worker.exit
        recent = len(self.crashes)
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (recent - 1))
        if recent >= 5 and now - self._loop_logged >= CRASH_WINDOW:
            self._loop_logged = now
            log.error(
                "pool %s: %d worker crashes in the last %.0fs (last: %s); "
                "restarts are rate-limited to one every %.0fs",
                self.name,
                recent,
                CRASH_WINDOW,
                worker.exit,
                delay,
            )
        return delay

    def as_dict(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "name": self.name,
            "workers": self.size,
            "generation": self.generation,
            "serving": sum(w.ready and not w.retired for w in self.workers),
            "restarts": self.restarts,
            "crashes_last_minute": sum(now - t <= CRASH_WINDOW for t in self.crashes),
            "last_exit": self.last_exit,
        }
