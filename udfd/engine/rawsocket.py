"""A unix-socket byte stream whose reads and writes can be cancelled at any moment.

anyio's asyncio ``UNIXSocketStream`` waits for readiness with
``loop.add_reader(fd, future.set_result, None)``. When the waiting task is
cancelled in the same loop iteration in which the socket becomes ready, the
loop has already queued ``set_result`` on a future that the cancellation has
completed, and asyncio logs ``Exception in callback Future.set_result(None)``
with an ``InvalidStateError`` traceback. udfd cancels a connection's reader
whenever it ends the connection (an error it sends, a stuck handler), often
while Kapacitor is still sending, so this showed up in real logs.
``anyio.wait_readable``/``wait_writable`` guard that case; this stream waits
with them and otherwise does what anyio's stream does (a checkpoint per call,
``EndOfStream`` at EOF, ``BrokenResourceError`` on socket errors).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["race_free"]


class _UnixStream(anyio.abc.ByteStream):
    def __init__(self, inner: anyio.abc.ByteStream, sock: socket.socket) -> None:
        self._inner = inner
        self._sock = sock

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        sock = self._sock
        while True:
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        sock = self._sock
        view = memoryview(item)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[sent:]

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return self._inner.extra_attributes


def race_free(stream: anyio.abc.ByteStream) -> anyio.abc.ByteStream:
    """``stream`` itself, or, for a unix socket stream, one that waits race-free."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX:
        return stream
    return _UnixStream(stream, sock)
