"""Expensive objects loaded once per worker process and shared by its connections.

A model, a lookup table or a compiled rule set is often far larger than a
connection's state, and loading it can take seconds. Kapacitor opens one
connection per task (and a task per group, in some pipelines), so loading in
every ``init()`` would multiply both memory and start-up time by the number of
tasks. Handlers ask ``self.context.shared.get(key, load)`` instead: the first
caller for a key runs ``load`` (in its own handler thread, never on the event
loop); callers that arrive meanwhile wait for that one load instead of starting
their own, and later callers get the same object at once.

An entry lives as long as the worker process. That is what makes a reload pick
up a changed file: ``udfd reload`` starts a new generation of workers with empty
caches, while the old workers finish their connections with what they loaded.
Keys should therefore name the *content* (a file's sha256, say), not only its
path, so a task started in an old worker after the file changed still loads
the new content instead of getting a stale object.

Failures are not cached: a load that raised is retried by the next caller, so
a file fixed on disk works for the next task without a restart.

``replaces`` bounds what a worker keeps when content changes under one name: a
model retrained every hour would otherwise add an entry per version. Loading a
key with ``replaces=G`` forgets the older entries of group G (say, the file's
path). Connections that hold the old object keep using it, and it is freed when
they end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Entry:
    """One shared object and what it cost."""

    key: Hashable
    label: str
    group: Hashable = None
    value: Any = None
    loaded: bool = False
    load_seconds: float = 0.0
    #: connections that got this entry without loading it
    hits: int = 0


class SharedResources:
    """The per-process cache behind ``Context.shared``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, Entry] = {}
        #: one lock per key being loaded, so different keys load in parallel
        self._loading: dict[Hashable, threading.Lock] = {}
        #: successful loads and hits since the process started (for tests and status)
        self.loads = 0
        self.hits = 0

    def get(
        self,
        key: Hashable,
        load: Callable[[], T],
        *,
        label: str = "",
        replaces: Hashable = None,
        on_load: Callable[[], None] | None = None,
        on_hit: Callable[[], None] | None = None,
    ) -> T:
        """The object for ``key``, loading it with ``load()`` if no one has yet."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.loaded:
                entry.hits += 1
                self.hits += 1
                hit = True
            else:
                hit = False
                key_lock = self._loading.setdefault(key, threading.Lock())
        if hit:
            if on_hit is not None:
                on_hit()
            return entry.value  # type: ignore[union-attr, no-any-return]
        with key_lock:
            # whoever held the key lock may have loaded it meanwhile
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.loaded:
                    entry.hits += 1
                    self.hits += 1
                    hit = True
            if hit:
                if on_hit is not None:
                    on_hit()
                return entry.value  # type: ignore[union-attr, no-any-return]
            started = time.perf_counter()
            value = load()  # raising leaves nothing cached: the next caller retries
            entry = Entry(
                key, label or repr(key), replaces, value, True, time.perf_counter() - started
            )
            with self._lock:
                if replaces is not None:
                    for old in [k for k, e in self._entries.items() if e.group == replaces]:
                        del self._entries[old]
                self._entries[key] = entry
                self._loading.pop(key, None)
                self.loads += 1
        if on_load is not None:
            on_load()
        return value

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def describe(self) -> list[dict[str, Any]]:
        """What is loaded, for the status file and ``/health``."""
        return [
            {"label": e.label, "load_s": round(e.load_seconds, 4), "hits": e.hits}
            for e in self.entries()
        ]


#: the worker process's cache; every connection's ``Context.shared`` goes through it
PROCESS_RESOURCES = SharedResources()


class SharedView:
    """``Context.shared``: the process cache, counting into one function's stats."""

    __slots__ = ("_count_hit", "_count_load", "_resources")

    def __init__(
        self,
        resources: SharedResources,
        count_load: Callable[[], None] | None = None,
        count_hit: Callable[[], None] | None = None,
    ) -> None:
        self._resources = resources
        self._count_load = count_load
        self._count_hit = count_hit

    def get(
        self, key: Hashable, load: Callable[[], T], *, label: str = "", replaces: Hashable = None
    ) -> T:
        """The shared object for ``key``; see :class:`SharedResources`."""
        return self._resources.get(
            key,
            load,
            label=label,
            replaces=replaces,
            on_load=self._count_load,
            on_hit=self._count_hit,
        )
