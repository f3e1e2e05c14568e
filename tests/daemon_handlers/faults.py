"""Handlers that fail at each stage a plugin can fail at (tests/test_faults.py)."""

from __future__ import annotations

import udfd


class FailsAtInit(udfd.Handler[udfd.NoOptions]):
    def init(self) -> None:
        raise RuntimeError("no database connection")


class FailsAtPoint(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        raise ZeroDivisionError("division by zero in the handler")


class FailsAtSnapshot(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        return point

    def snapshot(self) -> bytes:
        raise OSError("state store unreachable")
