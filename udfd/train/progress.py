"""Progress of long reads and fits on stderr: a bar on a terminal, a line now and then
elsewhere (a CI log or a pipe would otherwise fill with carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: seconds between two progress lines when stderr is not a terminal
LINE_INTERVAL = 5.0
BAR_WIDTH = 30


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._what = ""
        self._unit = ""
        self._total: int | None = None
        self._done = 0
        self._started = self._last = time.monotonic()

    def start(self, what: str, total: int | None = None, unit: str = "") -> None:
        self._what, self._total, self._unit, self._done = what, total, unit, 0
        self._started = self._last = time.monotonic()
        self._draw(force=not self._tty)

    def advance(self, amount: int = 1) -> None:
        self.update(self._done + amount)

    def update(self, done: int) -> None:
        self._done = done
        self._draw()

    def finish(self, note: str = "") -> float:
        """End the phase; returns its seconds."""
        elapsed = time.monotonic() - self._started
        if self._enabled:
            if self._tty:
                self._stream.write("\r\x1b[K")
            amount = f"{self._done:,} {self._unit} " if self._unit else ""
            self._stream.write(f"{self._what}: {amount}in {elapsed:.1f}s{note}\n")
            self._stream.flush()
        return elapsed

    def _draw(self, force: bool = False) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if self._tty:
            if not force and now - self._last < 0.1:
                return
            self._last = now
            self._stream.write("\r\x1b[K" + self._line(now))
        else:
            if not force and now - self._last < LINE_INTERVAL:
                return
            self._last = now
            self._stream.write(self._line(now) + "\n")
        self._stream.flush()

    def _line(self, now: float) -> str:
        elapsed = now - self._started
        amount = f"{self._done:,}" + (f" {self._unit}" if self._unit else "")
        if self._total:
            share = min(self._done / self._total, 1.0)
            filled = int(share * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            return f"{self._what} [{bar}] {share:4.0%} {amount} {elapsed:.1f}s"
        return f"{self._what}: {amount} {elapsed:.1f}s"
