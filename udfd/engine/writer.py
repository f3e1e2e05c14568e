"""The single FIFO writer of a connection.

Everything a connection sends goes through one writer, in order: handler output,
keepalive answers from the reader, management responses. Whatever accumulated
while the previous ``send`` was in flight goes out joined in one ``send``, so a
chunk of a thousand points costs one system call, and an idle connection flushes
at once (nothing waits for a timer or the next keepalive).

``put`` never blocks, so the reader can answer keepalives while Kapacitor is slow
to read. Bytes count against ``high_water`` from the moment they are queued until
the kernel took them (bytes being sent are still ours): ``wait_writable`` is the
event loop's backpressure and ``writable`` (a ``threading.Event``) the handler
threads'.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import anyio.abc


class FrameWriter:
    __slots__ = (
        "_closed",
        "_drained",
        "_failed",
        "_high_water",
        "_inflight",
        "_pending",
        "_pending_bytes",
        "_stream",
        "_urgent",
        "_urgent_since",
        "_wakeup",
        "bytes_sent",
        "last_send",
        "on_urgent_sent",
        "writable",
    )

    def __init__(self, stream: anyio.abc.ByteSendStream, high_water: int = 1 << 20) -> None:
        self._stream = stream
        self._high_water = high_water
        self._pending: list[bytes] = []
        #: keepalive answers, sent ahead of ``_pending``, in their own order
        self._urgent: list[bytes] = []
        #: when each urgent answer's request was read (monotonic), for its latency
        self._urgent_since: list[float] = []
        #: called with each urgent answer's latency once the kernel took it
        self.on_urgent_sent: Callable[[float], None] | None = None
        self._pending_bytes = 0  # queued in either list
        self._inflight = 0  # handed to send() and not yet accepted by the kernel
        self._closed = False
        self._failed: BaseException | None = None
        self._wakeup = anyio.Event()
        self._drained = anyio.Event()
        self.bytes_sent = 0
        #: monotonic time of the last completed send (the heartbeat watches it)
        self.last_send = time.monotonic()
        #: set while at or below the high-water mark, or once sending stopped
        self.writable = threading.Event()
        self.writable.set()

    @property
    def failed(self) -> BaseException | None:
        """Why sending stopped (the peer went away), if it did."""
        return self._failed

    @property
    def full(self) -> bool:
        return self._pending_bytes + self._inflight > self._high_water and self._failed is None

    @property
    def idle(self) -> bool:
        """Nothing queued or in flight."""
        return not self._pending_bytes and not self._inflight

    def _queued(self, size: int) -> None:
        self._pending_bytes += size
        if self.full:
            self.writable.clear()
        self._wakeup.set()

    def put(self, data: bytes) -> None:
        """Queue bytes for sending; never blocks. Ignored once closed or failed."""
        if self._closed or self._failed is not None or not data:
            return
        self._pending.append(data)
        self._queued(len(data))

    def put_urgent(self, data: bytes, since: float | None = None) -> None:
        """Queue bytes ahead of everything not yet sent (keepalive answers).

        Kapacitor matches responses by type, so a keepalive answer may overtake
        points; it must not wait behind a megabyte of output the peer has not
        read yet, or the keepalive timeout fires on a healthy connection.
        """
        if self._closed or self._failed is not None or not data:
            return
        self._urgent.append(data)
        if since is not None:
            self._urgent_since.append(since)
        self._queued(len(data))

    async def wait_writable(self) -> None:
        """Wait until the queue is at or below the high-water mark (or sending stopped)."""
        while self.full:
            if self._drained.is_set():
                self._drained = anyio.Event()
            await self._drained.wait()

    def close(self) -> None:
        """No more data: ``run`` returns once everything queued is sent."""
        self._closed = True
        self._wakeup.set()

    def _stopped(self, exc: BaseException | None) -> None:
        self._failed = exc
        self._pending, self._urgent, self._urgent_since = [], [], []
        self._pending_bytes = self._inflight = 0
        self.writable.set()
        self._drained.set()

    async def run(self) -> None:
        """Send queued data until closed and drained. Owned by the connection's task group."""
        while True:
            if not self._pending and not self._urgent:
                if self._closed:
                    return
                self._drained.set()
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            parts = self._urgent + self._pending if self._urgent else self._pending
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            since, self._urgent_since = self._urgent_since, []
            self._pending, self._urgent = [], []
            self._inflight, self._pending_bytes = self._pending_bytes, 0
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._stopped(exc)
                return
            self.bytes_sent += len(data)
            self._inflight = 0
            if since and self.on_urgent_sent is not None:
                now = time.monotonic()
                for t in since:
                    self.on_urgent_sent(now - t)
            self.last_send = time.monotonic()
            if not self.full:
                self.writable.set()
                self._drained.set()
