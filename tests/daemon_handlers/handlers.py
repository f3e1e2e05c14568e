"""Handlers the daemon tests configure by file path (as users do)."""

from __future__ import annotations

import udfd


class Mirror(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        return point


class ScaleOptions(udfd.Options):
    field: str = "value"
    factor: float = 2.0


class Scale(udfd.Handler[ScaleOptions]):
    """Multiplies one field; configured defaults apply under TICKscript options."""

    def point(self, point: udfd.Point) -> udfd.Output:
        value = udfd.get_number(point, self.options.field) * self.options.factor
        return udfd.derive(point, {self.options.field: value})


class NotAHandler:
    """Fails the contract check: not a udfd.Handler, not a legacy handler."""


class Stuck(udfd.Handler[udfd.NoOptions]):
    """A threaded handler that never returns from point() (a hung model, a dead NFS)."""

    threaded = True

    def point(self, point: udfd.Point) -> udfd.Output:
        import threading

        threading.Event().wait()  # forever
        return point


class Blocking(udfd.Handler[udfd.NoOptions]):
    """A plain handler that blocks 2 ms per point (a synchronous HTTP call, say)."""

    def point(self, point: udfd.Point) -> udfd.Output:
        import time

        time.sleep(0.002)
        return point


class Burner(udfd.Handler[udfd.NoOptions]):
    """Burns about 5 ms of pure-Python CPU per point."""

    def point(self, point: udfd.Point) -> udfd.Output:
        import time

        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        return point


class AsyncBlocking(udfd.Handler[udfd.NoOptions]):
    """A coroutine callback that blocks by mistake (time.sleep inside async def)."""

    async def point(self, point: udfd.Point) -> udfd.Output:
        import time

        time.sleep(0.002)  # noqa: ASYNC251 - the mistake under test
        return point


class SlowFilter(udfd.Handler[udfd.NoOptions]):
    """Emits nothing and takes 50 ms per point: without heartbeats its task times out."""

    def point(self, point: udfd.Point) -> udfd.Output:
        import time

        time.sleep(0.05)
        return None


class Crash(udfd.Handler[udfd.NoOptions]):
    """Kills its whole process on the point whose value is negative (a segfaulting C call)."""

    def point(self, point: udfd.Point) -> udfd.Output:
        import os

        if point.fieldsDouble.get("value", 0.0) < 0:
            os._exit(139)
        return point


WideOptions = type(
    "WideOptions",
    (udfd.Options,),
    {
        "__annotations__": {f"option_with_a_long_name_{i:02d}": str for i in range(60)},
        **{f"option_with_a_long_name_{i:02d}": "" for i in range(60)},
    },
)


class WideInfo(udfd.Handler[WideOptions]):  # type: ignore[valid-type]
    """A mirror whose Info is about 2 KB: 60 options (what a peer that never reads
    multiplies, one answer per 3-byte InfoRequest)."""

    def point(self, point: udfd.Point) -> udfd.Output:
        return point


class Faulty(udfd.Handler[udfd.NoOptions]):
    """Raises on a point whose ``fail`` field is true (a handler bug, not a point error)."""

    def point(self, point: udfd.Point) -> udfd.Output:
        if point.fieldsBool.get("fail"):
            raise ValueError("cannot handle this point")
        return point
