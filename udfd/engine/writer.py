"""The single FIFO writer of a connection.

Everything a connection sends goes through one writer, in order: handler output,
keepalive answers from the reader, management responses. Whatever accumulated
while the previous ``send`` was in flight goes out joined in one ``send``, so a
chunk of a thousand points costs one system call, and an idle connection flushes
at once (nothing waits for a timer or the next keepalive).

``put`` never blocks, so the reader can answer keepalives while Kapacitor is slow
to read; ``put_and_wait`` is the handler path's backpressure: it waits while more
than ``high_water`` bytes are queued.
"""

from __future__ import annotations

import anyio
import anyio.abc


class FrameWriter:
    __slots__ = (
        "_closed",
        "_drained",
        "_failed",
        "_high_water",
        "_pending",
        "_pending_bytes",
        "_stream",
        "_wakeup",
        "bytes_sent",
    )

    def __init__(self, stream: anyio.abc.ByteSendStream, high_water: int = 1 << 20) -> None:
        self._stream = stream
        self._high_water = high_water
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._closed = False
        self._failed: BaseException | None = None
        self._wakeup = anyio.Event()
        self._drained = anyio.Event()
        self.bytes_sent = 0

    @property
    def failed(self) -> BaseException | None:
        """Why sending stopped (the peer went away), if it did."""
        return self._failed

    def put(self, data: bytes) -> None:
        """Queue bytes for sending; never blocks. Ignored once closed or failed."""
        if self._closed or self._failed is not None or not data:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._wakeup.set()

    def put_urgent(self, data: bytes) -> None:
        """Queue bytes ahead of everything not yet sent (keepalive answers).

        Kapacitor matches responses by type, so a keepalive answer may overtake
        points; it must not wait behind a megabyte of output the peer has not
        read yet, or the keepalive timeout fires on a healthy connection.
        """
        if self._closed or self._failed is not None or not data:
            return
        self._pending.insert(0, data)
        self._pending_bytes += len(data)
        self._wakeup.set()

    def put_many(self, frames: list[bytes]) -> None:
        if self._closed or self._failed is not None or not frames:
            return
        data = b"".join(frames)
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._wakeup.set()

    async def wait_writable(self) -> None:
        """Wait until the queue is below the high-water mark (or sending stopped)."""
        while self._pending_bytes > self._high_water and self._failed is None:
            if self._drained.is_set():
                self._drained = anyio.Event()
            await self._drained.wait()

    def close(self) -> None:
        """No more data: ``run`` returns once everything queued is sent."""
        self._closed = True
        self._wakeup.set()

    async def run(self) -> None:
        """Send queued data until closed and drained. Owned by the connection's task group."""
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._drained.set()
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                continue
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending = []
            self._pending_bytes = 0
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._failed = exc
                self._drained.set()
                return
            self.bytes_sent += len(data)
            self._drained.set()
