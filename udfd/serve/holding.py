"""A connection the supervisor keeps while its pool has no worker up (start, crash, reload).

Kapacitor must still get its Info, and its keepalive timer must not run out,
so the supervisor answers Info (the Info last served for the function) and
keepalives itself, and keeps every other frame, in order and bounded. When a
worker is up, the socket goes to it with the kept bytes, which the worker
handles before its first read. No handler code runs here: an Info that is not
known yet waits for the worker like everything else.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

import anyio
import anyio.abc

from udfd.errors import ProtocolError
from udfd.protocol import wire
from udfd.protocol.framing import FrameDecoder, encode_frame
from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["HOLD_BYTES", "HeldConnection"]

log = logging.getLogger("udfd.supervisor")

#: bytes of unanswered frames kept per held connection before reading stops
HOLD_BYTES = 64 * 1024


class HeldConnection:
    """Owns one accepted socket until :meth:`release` hands it to a worker."""

    def __init__(
        self,
        sock: socket.socket,
        function: str,
        info: Callable[[], pb.InfoResponse | None],
        max_message_size: int,
    ) -> None:
        self.sock = sock
        self.function = function
        self._info = info
        self._decoder = FrameDecoder(max_message_size)
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self.eof = False
        self.failed = False

    def preload(self, data: bytes) -> None:
        """Bytes read ahead by an earlier hold (a worker died before taking them): kept as is."""
        self._kept.append(data)
        self._kept_bytes += len(data)

    async def serve_until(self, ready: anyio.Event, patience: float) -> bool:
        """Answer what can be answered until ``ready``; False when the peer left or broke."""
        stream = await anyio.abc.UNIXSocketStream.from_socket(os.dup(self.sock.fileno()))
        try:
            async with anyio.create_task_group() as tg:

                async def released() -> None:
                    await ready.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(released)
                with anyio.move_on_after(patience) as waiting:
                    await self._read(stream)
                    tg.cancel_scope.cancel()  # EOF or a bad frame: no worker needed
                if waiting.cancelled_caught:
                    await self._send(stream, wire.error_frame(self._timeout_message(patience)))
                    self.failed = True
                    tg.cancel_scope.cancel()
        finally:
            await stream.aclose()
        return not (self.eof or self.failed)

    def _timeout_message(self, timeout: float) -> str:
        return (
            f"udfd: no worker process could serve {self.function} within {timeout:g}s "
            "(its pool is restarting; see udfd's log)"
        )

    async def _read(self, stream: anyio.abc.ByteStream) -> None:
        while True:
            if self._kept_bytes >= HOLD_BYTES:
                await anyio.sleep_forever()  # stop reading: backpressure reaches Kapacitor
            try:
                data = await stream.receive(HOLD_BYTES - self._kept_bytes)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                self.eof = True
                return
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as exc:
                log.warning("%s: protocol error from Kapacitor: %s", self.function, exc)
                await self._send(stream, wire.error_frame(f"udfd: protocol error: {exc}"))
                self.failed = True
                return
            for frame in frames:
                await self._answer_or_keep(stream, frame)

    async def _answer_or_keep(self, stream: anyio.abc.ByteStream, frame: bytes) -> None:
        first = frame[0] if frame else 0
        answer = b""
        if first == wire.TAG_KEEPALIVE:
            try:
                answer = wire.keepalive_frame(wire.keepalive_time(frame))
            except ProtocolError:
                answer = b""
        elif first == wire.TAG_INFO and not self._kept:
            info = self._info()
            if info is not None:
                answer = wire.info_frame(info)
        if answer:
            await self._send(stream, answer)
            return
        self._kept.append(encode_frame(frame))
        self._kept_bytes += len(self._kept[-1])

    async def _send(self, stream: anyio.abc.ByteStream, data: bytes) -> None:
        try:
            with anyio.fail_after(5):
                await stream.send(data)
        except (anyio.BrokenResourceError, OSError, TimeoutError):
            self.eof = True

    def release(self) -> bytes:
        """The kept bytes (whole frames, then a partial one), for the worker to handle first."""
        return b"".join(self._kept) + self._decoder.take_remainder()
