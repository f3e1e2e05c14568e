"""Handlers bench_isolation.py configures by file path: a mirror and three slow ones.

Each slow handler misbehaves in a different way a real UDF might:

* ``SleepyMirror`` blocks in ``time.sleep(0.002)`` per point (a synchronous
  HTTP call, a database lookup): the GIL is released while it waits;
* ``BurningMirror`` burns about 5 ms of pure-Python CPU per point (a model in
  plain Python): it holds the GIL for as long as the interpreter lets it;
* ``AsyncSleepyMirror`` is ``async def point`` that calls ``time.sleep`` by
  mistake instead of ``await anyio.sleep``.
"""

from __future__ import annotations

import time

import udfd

#: CPU seconds BurningMirror spends per point
BURN_SECONDS = 0.005


class Mirror(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        return point


class SleepyMirror(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        time.sleep(0.002)
        return point


class BurningMirror(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        # the thread's own CPU clock: time spent waiting for the GIL or a core
        # does not count, so each point really costs BURN_SECONDS of CPU
        end = time.thread_time() + BURN_SECONDS
        x = 0
        while time.thread_time() < end:
            for i in range(200):
                x += i * i
        return point


class AsyncSleepyMirror(udfd.Handler[udfd.NoOptions]):
    # coroutine callbacks are supported; the base class types the plain form
    async def point(self, point: udfd.Point) -> udfd.Output:  # type: ignore[override]
        time.sleep(0.002)  # noqa: ASYNC251 - the mistake: blocks the coroutine's loop
        return point
