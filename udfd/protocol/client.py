"""Kapacitor's side of a UDF connection, for tests, ``udfd check`` and benchmarks.

It behaves as Kapacitor does on the socket: reading and writing run concurrently
(a background task reads while the caller writes, so a full socket buffer can
never deadlock the two sides), responses are matched to requests by type, and
the end of a task is a half-close followed by reading until the UDF closes.

Option values are typed the way a TICKscript types its literals: ``int`` is INT,
``float`` DOUBLE, ``str`` STRING, ``bool`` BOOL and ``timedelta`` DURATION; a
tuple passes several values in one call, a list repeats the option, and ``()``
is a flag with no value.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc

from udfd.errors import ProtocolError, UdfdError
from udfd.protocol import wire
from udfd.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder
from udfd.protocol.proto import udf_pb2 as pb


class UdfError(UdfdError):
    """The UDF answered with an ErrorResponse, closed, or did not answer in time."""


def option_value(value: Any) -> pb.OptionValue:
    """Type one literal as Kapacitor types a TICKscript literal."""
    if isinstance(value, pb.OptionValue):
        return value
    if isinstance(value, bool):
        return pb.OptionValue(type=pb.BOOL, boolValue=value)
    if isinstance(value, int):
        return pb.OptionValue(type=pb.INT, intValue=value)
    if isinstance(value, float):
        return pb.OptionValue(type=pb.DOUBLE, doubleValue=value)
    if isinstance(value, str):
        return pb.OptionValue(type=pb.STRING, stringValue=value)
    if isinstance(value, timedelta):
        ns = (value.days * 86400 + value.seconds) * 10**9 + value.microseconds * 1000
        return pb.OptionValue(type=pb.DURATION, durationValue=ns)
    raise TypeError(f"{type(value).__name__} cannot be a TICKscript option value")


def init_options(options: Mapping[str, Any] | Iterable[pb.Option]) -> list[pb.Option]:
    """Turn ``{"field": "value", "size": 10}`` into Init's option list."""
    if not isinstance(options, Mapping):
        return list(options)
    out: list[pb.Option] = []
    for name, value in options.items():
        calls = value if isinstance(value, list) else [value]
        for call in calls:
            values = call if isinstance(call, tuple) else (call,)
            out.append(pb.Option(name=name, values=[option_value(v) for v in values]))
    return out


@dataclass
class KeepaliveStats:
    """Round-trip times of keepalives, in seconds."""

    samples: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.samples:
            return math.nan
        ordered = sorted(self.samples)
        index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[index]


class UdfClient:
    """One connection to a UDF socket, driven as Kapacitor drives it.

    Use :func:`connect` to open one; data output (points and batch edges) is
    collected in :attr:`output`, in arrival order.
    """

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        *,
        timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._stream = stream
        self.timeout = timeout
        self._max = max_message_size
        self.output: list[pb.Point | pb.BeginBatch | pb.EndBatch] = []
        self.errors: list[str] = []
        self.keepalive_stats = KeepaliveStats()
        self._pending: dict[str, list[Any]] = {
            k: [] for k in ("info", "init", "snapshot", "restore")
        }
        self._arrived = anyio.Event()
        self._eof = anyio.Event()
        self._keepalives: dict[int, float] = {}
        self._write_lock = anyio.Lock()
        self.protocol_error: ProtocolError | None = None

    # ------------------------------------------------------------ reading

    async def _read(self) -> None:
        decoder = FrameDecoder(self._max)
        try:
            while True:
                try:
                    data = await self._stream.receive(256 * 1024)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                except OSError:
                    break
                for frame in decoder.feed(data):
                    self._route(wire.decode_response(frame))
                self._wake()
            decoder.check_eof()
        except ProtocolError as exc:
            self.protocol_error = exc
        finally:
            self._eof.set()
            self._wake()

    def _route(self, response: pb.Response) -> None:
        which = response.WhichOneof("message")
        if which in ("point", "begin", "end"):
            self.output.append(getattr(response, which))
        elif which == "keepalive":
            sent = self._keepalives.pop(response.keepalive.time, None)
            if sent is not None:
                self.keepalive_stats.samples.append(time.perf_counter() - sent)
        elif which == "error":
            self.errors.append(response.error.error)
        elif which is not None:
            self._pending[which].append(getattr(response, which))

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    async def _wait_for(self, kind: str) -> Any:
        with anyio.fail_after(self.timeout):
            while not self._pending[kind]:
                if self.errors:
                    raise UdfError(f"UDF sent an error while {kind} was pending: {self.errors[-1]}")
                if self._eof.is_set():
                    raise UdfError(f"UDF closed the connection while {kind} was pending")
                await self._arrived.wait()
        return self._pending[kind].pop(0)

    # ------------------------------------------------------------ writing

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for malformed-input tests and fast drivers)."""
        async with self._write_lock:
            await self._stream.send(data)

    async def send(self, request: pb.Request) -> None:
        await self.send_raw(wire.request_frame(request))

    async def send_point(self, point: pb.Point) -> None:
        await self.send_raw(wire.point_request_frame(point))

    async def send_points(self, points: Iterable[pb.Point], chunk: int = 1000) -> None:
        """Send many points, several frames per write, as Kapacitor's buffered writer does."""
        buf: list[bytes] = []
        for p in points:
            buf.append(wire.point_request_frame(p))
            if len(buf) >= chunk:
                await self.send_raw(b"".join(buf))
                buf = []
        if buf:
            await self.send_raw(b"".join(buf))

    async def send_batch(
        self, begin: pb.BeginBatch, points: Iterable[pb.Point], end: pb.EndBatch
    ) -> None:
        frames = [wire.request_frame(pb.Request(begin=begin))]
        frames.extend(wire.point_request_frame(p) for p in points)
        frames.append(wire.request_frame(pb.Request(end=end)))
        await self.send_raw(b"".join(frames))

    async def close_write(self) -> None:
        """Half-close, as Kapacitor does when the task stops."""
        async with self._write_lock:
            await self._stream.send_eof()

    # ------------------------------------------------------------ requests

    async def info(self) -> pb.InfoResponse:
        await self.send(pb.Request(info=pb.InfoRequest()))
        result: pb.InfoResponse = await self._wait_for("info")
        return result

    async def init(
        self,
        options: Mapping[str, Any] | Iterable[pb.Option] = (),
        *,
        task_id: str = "test-task",
        node_id: str = "udf1",
    ) -> pb.InitResponse:
        request = pb.InitRequest(options=init_options(options), taskID=task_id, nodeID=node_id)
        await self.send(pb.Request(init=request))
        result: pb.InitResponse = await self._wait_for("init")
        return result

    async def snapshot(self) -> bytes:
        await self.send(pb.Request(snapshot=pb.SnapshotRequest()))
        result: pb.SnapshotResponse = await self._wait_for("snapshot")
        return bytes(result.snapshot)

    async def restore(self, snapshot: bytes) -> pb.RestoreResponse:
        await self.send(pb.Request(restore=pb.RestoreRequest(snapshot=snapshot)))
        result: pb.RestoreResponse = await self._wait_for("restore")
        return result

    async def send_keepalive(self) -> int:
        """Send a keepalive without waiting; its round trip lands in keepalive_stats."""
        stamp = time.monotonic_ns()
        while stamp in self._keepalives:
            stamp += 1
        self._keepalives[stamp] = time.perf_counter()
        await self.send(pb.Request(keepalive=pb.KeepaliveRequest(time=stamp)))
        return stamp

    async def keepalive(self) -> float:
        """Round-trip one keepalive; returns its latency in seconds."""
        count = len(self.keepalive_stats.samples)
        stamp = await self.send_keepalive()
        with anyio.fail_after(self.timeout):
            while stamp in self._keepalives:
                if self._eof.is_set():
                    raise UdfError("UDF closed the connection before answering the keepalive")
                await self._arrived.wait()
        return self.keepalive_stats.samples[count]

    async def wait_output(self, count: int) -> list[pb.Point | pb.BeginBatch | pb.EndBatch]:
        """Wait until at least ``count`` data messages arrived (or fail)."""
        with anyio.fail_after(self.timeout):
            while len(self.output) < count:
                if self._eof.is_set():
                    raise UdfError(
                        f"UDF closed after {len(self.output)} of {count} outputs"
                        + (f"; errors: {self.errors}" if self.errors else "")
                    )
                await self._arrived.wait()
        return self.output

    async def wait_error(self) -> str:
        with anyio.fail_after(self.timeout):
            while not self.errors:
                if self._eof.is_set():
                    raise UdfError("UDF closed without sending an ErrorResponse")
                await self._arrived.wait()
        return self.errors[0]

    async def wait_closed(self) -> None:
        with anyio.fail_after(self.timeout):
            await self._eof.wait()

    async def finish(self) -> list[pb.Point | pb.BeginBatch | pb.EndBatch]:
        """Half-close and read until the UDF closes; returns all data output."""
        await self.close_write()
        await self.wait_closed()
        return self.output

    @property
    def points(self) -> list[pb.Point]:
        return [m for m in self.output if isinstance(m, pb.Point)]


@asynccontextmanager
async def connect(
    path: str | os.PathLike[str],
    *,
    reply_timeout: float = 10.0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> AsyncIterator[UdfClient]:
    """Open a connection to a UDF socket; its reader task lives as long as the block.

    ``reply_timeout`` bounds each wait for a response (as Kapacitor's own timeout).
    """
    stream = await anyio.connect_unix(os.fspath(path))
    async with stream, anyio.create_task_group() as tg:
        client = UdfClient(stream, timeout=reply_timeout, max_message_size=max_message_size)
        tg.start_soon(client._read)
        try:
            yield client
        finally:
            tg.cancel_scope.cancel()


async def probe_info(path: str | os.PathLike[str], reply_timeout: float = 5.0) -> pb.InfoResponse:
    """Info and a prompt close, exactly what Kapacitor does at start-up."""
    async with connect(path, reply_timeout=reply_timeout) as client:
        info = await client.info()
        await client.close_write()
        await client.wait_closed()
        return info
