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
