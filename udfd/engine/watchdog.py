"""The watchdog of one connection: heartbeats, the slow-call log and ``handler_timeout``.

Kapacitor resets a task's keepalive timer on every response it reads, and treats
a ``KeepaliveResponse`` as a no-op whatever its time. While the handler is busy
on a backlog, its keepalive requests sit in the socket behind the points it has
not reached yet, so the watchdog answers for them: when the connection has been
silent for ``heartbeat`` seconds and the handler is still making progress, it
sends an unsolicited keepalive answer.

Progress is the runner's frame counter (the hot loop updates it every 8
frames, so a handler slower than ``slow_call / 8`` per point shows up as slow
too). A handler call that does not move it for ``slow_call`` seconds is
logged once with its Python stack (php-fpm's slowlog, at most once a minute
per connection); one stuck past
``handler_timeout`` no longer counts as progress: the watchdog logs its stack,
counts it, and ends the connection with an ``ErrorResponse`` naming the
function and the callback. Python cannot stop the thread; it is abandoned and
stops at its next frame.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from udfd.engine.limits import Limits
from udfd.engine.stats import Stats
from udfd.engine.writer import FrameWriter
from udfd.protocol import wire

if TYPE_CHECKING:
    from udfd.engine.runner import Runner

__all__ = ["Watchdog", "describe_call"]

#: the slow-call log speaks at most this often per connection (seconds)
SLOW_LOG_INTERVAL = 60.0
_ENGINE_FILES = frozenset(
    {
        __file__.replace("watchdog.py", "runner.py"),
        __file__.replace("watchdog.py", "connection.py"),
    }
)


def describe_call(thread_id: int) -> tuple[str, str]:
    """(callback name, formatted stack) of what the handler thread runs now.

    The callback is the first frame below the engine's own frames: ``point``,
    ``init``, ``snapshot``... (a legacy handler's shows its adapter's method).
    """
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "?", "  (the handler's thread has no Python frame)\n"
    stack = "".join(traceback.format_stack(frame))
    inner = None
    while frame is not None:
        if frame.f_code.co_filename in _ENGINE_FILES:
            return (inner.f_code.co_name if inner is not None else "?"), stack
        inner, frame = frame, frame.f_back
    return "?", stack


class Watchdog:
    """Watches one connection's runner from the event loop thread; owned by the connection."""

    def __init__(
        self,
        runner: Runner,
        writer: FrameWriter,
        limits: Limits,
        stats: Stats,
        on_stuck: Callable[[str], None],
        on_peer_gone: Callable[[], None],
    ) -> None:
        self._runner = runner
        self._writer = writer
        self._limits = limits
        self._stats = stats
        self._on_stuck = on_stuck
        self._on_peer_gone = on_peer_gone
        #: the connection waits for its handler to be imported: keep the timer fed
        self.loading = False

    async def run(self) -> None:
        limits = self._limits
        tick = max(0.01, min(0.25, limits.heartbeat / 4, limits.slow_call / 4))
        runner = self._runner
        seen = -1
        moved_at = time.monotonic()
        reported = False
        last_slow_log = -math.inf
        while True:
            await anyio.sleep(tick)
            now = time.monotonic()
            if self._writer.failed is not None:
                self._on_peer_gone()
                return
            if not runner.busy:
                seen, moved_at, reported = runner.progress, now, False
                if self.loading:
                    self._heartbeat(now)
                continue
            if runner.progress != seen:
                seen, moved_at, reported = runner.progress, now, False
            stuck = now - moved_at
            if stuck >= limits.handler_timeout:
                self._stuck(stuck)
                return
            if stuck >= limits.slow_call and not reported:
                reported = True
                if now - last_slow_log >= SLOW_LOG_INTERVAL:
                    last_slow_log = now
                    self._slow(stuck)
            self._heartbeat(now)

    def _heartbeat(self, now: float) -> None:
        writer = self._writer
        if writer.idle and now - writer.last_send >= self._limits.heartbeat:
            writer.put_urgent(wire.keepalive_frame(time.time_ns()))
            writer.last_send = now  # one heartbeat per interval, even before it is sent
            self._stats.heartbeats += 1

    def _slow(self, stuck: float) -> None:
        callback, stack = describe_call(self._runner.thread_id)
        self._stats.slow_calls += 1
        self._runner.log.warning(
            "slow handler call: %s() made no progress for %.1fs (slow_call %.1fs); "
            "heartbeats keep Kapacitor's keepalive timer fed. Stack:\n%s",
            callback,
            stuck,
            self._limits.slow_call,
            stack.rstrip(),
        )

    def _stuck(self, stuck: float) -> None:
        callback, stack = describe_call(self._runner.thread_id)
        self._stats.handler_timeouts += 1
        self._runner.log.error(
            "handler call stuck: %s() has not returned for %.1fs (handler_timeout %.1fs); "
            "ending the connection. Stack:\n%s",
            callback,
            stuck,
            self._limits.handler_timeout,
            stack.rstrip(),
        )
        self._on_stuck(callback)
