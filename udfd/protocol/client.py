"""Kapacitor's side of a UDF connection, for tests, ``udfd check`` and benchmarks.

It behaves as Kapacitor does on the socket: reading and writing run concurrently
(a background task reads while the caller writes, so a full socket buffer can
never deadlock the two sides), responses are matched to requests by type, and
the end of a task is a half-close followed by reading until the UDF closes.

It is also as strict as kapacitord has to be: whatever would harm a real
kapacitord (an empty ``Response``, a management response nobody asked for, bad
batch framing, bytes that are not frames) is a :class:`UdfProtocolError`. The
first violation ends the interpretation of the UDF's output (what follows is
read and discarded, so the UDF never blocks on a full socket), and every later
call on the client raises it: the pending or next request, send or wait, and
:meth:`UdfClient.finish`. Leaving :func:`connect`'s block raises it too when no
call did. An ``ErrorResponse`` is not a violation: it lands in
:attr:`UdfClient.errors`. Unsolicited keepalive responses are accepted, as
Kapacitor accepts them, and counted in :attr:`UdfClient.unsolicited_keepalives`.

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
from typing import Any, Literal, TypeAlias

import anyio
import anyio.abc
from google.protobuf.message import DecodeError

from udfd.errors import FrameError, ProtocolError, UdfdError
from udfd.protocol import wire
from udfd.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder
from udfd.protocol.proto import udf_pb2 as pb

__all__ = [
    "KeepaliveStats",
    "UdfClient",
    "UdfError",
    "UdfProtocolError",
    "ViolationKind",
    "connect",
    "init_options",
    "option_value",
    "probe_info",
]


class UdfError(UdfdError):
    """The UDF answered with an ErrorResponse, closed, did not answer in time, or
    broke the protocol (:class:`UdfProtocolError`)."""


#: What kind of protocol violation a :class:`UdfProtocolError` reports.
ViolationKind: TypeAlias = Literal[
    "empty_response",  # a Response with no message set
    "unsolicited_response",  # Info/Init/Snapshot/Restore response with no such request outstanding
    "batch_framing",  # EndBatch without BeginBatch, nested BeginBatch, bad size, EOF in a batch
    "bad_frame",  # bytes that are not a length-prefixed Response
]


class UdfProtocolError(UdfError, ProtocolError):
    """The UDF sent something that would harm a real kapacitord.

    ``kind`` says which rule was broken (see :data:`ViolationKind`), ``response``
    is the offending message when one was decoded (``None`` for undecodable bytes
    and for the end of output inside a batch), and ``index`` is how many responses
    had been read before it (its position in the UDF's output, from 0).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ViolationKind,
        response: pb.Response | None = None,
        index: int = 0,
    ) -> None:
        super().__init__(f"UDF protocol violation: {message}")
        self.kind: ViolationKind = kind
        self.response = response
        self.index = index


#: management responses that must answer an outstanding request of the same kind
_MANAGEMENT: tuple[str, ...] = ("info", "init", "snapshot", "restore")
_TYPE_NAMES = {
    "info": "InfoResponse",
    "init": "InitResponse",
    "snapshot": "SnapshotResponse",
    "restore": "RestoreResponse",
}


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
    collected in :attr:`output`, in arrival order. The first protocol violation
    is kept in :attr:`protocol_error` and raised by every later call.

    Management requests are known to the client when sent through :meth:`send`
    (or :meth:`info`, :meth:`init`, ...): a response to one sent as raw bytes
    with :meth:`send_raw` counts as unsolicited.
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
        #: KeepaliveResponses whose time matches no outstanding request (allowed: heartbeats)
        self.unsolicited_keepalives = 0
        #: the first protocol violation of the connection, if any
        self.protocol_error: UdfProtocolError | None = None
        self._reported = False  # protocol_error was raised to the caller at least once
        self._pending: dict[str, list[Any]] = {k: [] for k in _MANAGEMENT}
        self._outstanding: dict[str, int] = dict.fromkeys(_MANAGEMENT, 0)
        self._responses = 0  # responses read so far (a violation's index)
        self._batch: pb.BeginBatch | None = None  # the open output batch
        self._batch_points = 0
        self._arrived = anyio.Event()
        self._eof = anyio.Event()
        self._keepalives: dict[int, float] = {}
        self._write_lock = anyio.Lock()

    # ------------------------------------------------------------ reading

    async def _read(self) -> None:
        decoder = FrameDecoder(self._max)
        try:
            while True:
                try:
                    data = await self._stream.receive(256 * 1024)
                except anyio.ClosedResourceError:
                    break  # closed on our side: not the end of the UDF's output
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    if self.protocol_error is None:
                        self._end_of_output(decoder)
                    break
                if self.protocol_error is not None:
                    continue  # drain and discard, so the UDF never blocks writing to us
                try:
                    frames = decoder.feed(data)
                except FrameError as exc:
                    self._route_all(exc.frames)  # what came before the bad bytes counts
                    self._violation("bad_frame", f"bad frame in the UDF's output: {exc}")
                else:
                    self._route_all(frames)
                self._wake()
        finally:
            self._eof.set()
            self._wake()

    def _end_of_output(self, decoder: FrameDecoder) -> None:
        try:
            decoder.check_eof()
        except FrameError as exc:
            self._violation("bad_frame", f"bad frame in the UDF's output: {exc}")
            return
        if self._batch is not None and not self.errors:
            # after an ErrorResponse Kapacitor has already stopped the task: an
            # unfinished batch then harms nothing
            self._violation(
                "batch_framing",
                f"output ended inside an open batch ({_describe(self._batch)}, "
                f"{self._batch_points} point(s), no EndBatch)",
            )

    def _route_all(self, frames: list[bytes]) -> None:
        for frame in frames:
            if self.protocol_error is not None:
                return
            self._route(frame)
            self._responses += 1

    def _route(self, frame: bytes) -> None:
        try:
            response = pb.Response.FromString(frame)
        except DecodeError as exc:
            self._violation(
                "bad_frame", f"frame of {len(frame)} bytes does not decode as a Response: {exc}"
            )
            return
        which = response.WhichOneof("message")
        if which == "point":
            self.output.append(response.point)
            if self._batch is not None:
                self._batch_points += 1
        elif which == "begin":
            self._begin(response)
        elif which == "end":
            self._end(response)
        elif which == "keepalive":
            sent = self._keepalives.pop(response.keepalive.time, None)
            if sent is None:
                self.unsolicited_keepalives += 1
            else:
                self.keepalive_stats.samples.append(time.perf_counter() - sent)
        elif which == "error":
            self.errors.append(response.error.error)
        elif which is None:
            self._violation(
                "empty_response",
                f"empty Response ({len(frame)} bytes, no message set): kapacitord crashes on it",
                response,
            )
        elif self._outstanding[which] <= 0:
            name = _TYPE_NAMES[which]
            self._violation(
                "unsolicited_response",
                f"unsolicited {name}: no {name.replace('Response', 'Request')} was outstanding",
                response,
            )
        else:
            self._outstanding[which] -= 1
            self._pending[which].append(getattr(response, which))

    def _begin(self, response: pb.Response) -> None:
        begin = response.begin
        if self._batch is not None:
            self._violation(
                "batch_framing",
                f"BeginBatch ({_describe(begin)}) inside an open batch "
                f"({_describe(self._batch)}, {self._batch_points} point(s) so far)",
                response,
            )
        elif begin.size < 0:
            self._violation(
                "batch_framing",
                f"BeginBatch ({_describe(begin)}) with negative size {begin.size}: "
                "kapacitord crashes on it",
                response,
            )
        else:
            self.output.append(begin)
            self._batch = begin
            self._batch_points = 0

    def _end(self, response: pb.Response) -> None:
        end = response.end
        begin = self._batch
        if begin is None:
            self._violation(
                "batch_framing",
                f"EndBatch ({_describe(end)}) without a BeginBatch: kapacitord crashes on it",
                response,
            )
        elif begin.size != 0 and begin.size != self._batch_points:
            self._violation(
                "batch_framing",
                f"BeginBatch ({_describe(begin)}) announced size {begin.size} but "
                f"{self._batch_points} point(s) came before its EndBatch",
                response,
            )
        else:
            self.output.append(end)
            self._batch = None

    def _violation(
        self, kind: ViolationKind, message: str, response: pb.Response | None = None
    ) -> None:
        if self.protocol_error is None:
            self.protocol_error = UdfProtocolError(
                message, kind=kind, response=response, index=self._responses
            )
        self._wake()

    def _check(self) -> None:
        """Raise the connection's protocol violation, if there was one."""
        error = self.protocol_error
        if error is not None:
            self._reported = True
            raise error.with_traceback(None)

    def _raise_unreported(self) -> None:
        if self.protocol_error is not None and not self._reported:
            self._check()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    async def _wait_for(self, kind: str) -> Any:
        with anyio.fail_after(self.timeout):
            while not self._pending[kind]:
                self._check()
                if self.errors:
                    raise UdfError(f"UDF sent an error while {kind} was pending: {self.errors[-1]}")
                if self._eof.is_set():
                    raise UdfError(f"UDF closed the connection while {kind} was pending")
                await self._arrived.wait()
        self._check()
        return self._pending[kind].pop(0)

    # ------------------------------------------------------------ writing

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for malformed-input tests and fast drivers).

        Management requests in them are not known to the client: send those with
        :meth:`send`, or their responses count as unsolicited.
        """
        self._check()
        async with self._write_lock:
            await self._stream.send(data)

    async def send(self, request: pb.Request) -> None:
        self._check()
        which = request.WhichOneof("message")
        if which in self._outstanding:
            self._outstanding[which] += 1  # before the write: the answer may beat us back
        elif which == "keepalive":
            self._keepalives.setdefault(request.keepalive.time, time.perf_counter())
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
                self._check()
                if self._eof.is_set():
                    raise UdfError("UDF closed the connection before answering the keepalive")
                await self._arrived.wait()
        self._check()
        return self.keepalive_stats.samples[count]

    async def wait_output(self, count: int) -> list[pb.Point | pb.BeginBatch | pb.EndBatch]:
        """Wait until at least ``count`` data messages arrived (or fail)."""
        with anyio.fail_after(self.timeout):
            while len(self.output) < count:
                self._check()
                if self._eof.is_set():
                    raise UdfError(
                        f"UDF closed after {len(self.output)} of {count} outputs"
                        + (f"; errors: {self.errors}" if self.errors else "")
                    )
                await self._arrived.wait()
        self._check()
        return self.output

    async def wait_error(self) -> str:
        """Wait for the first ErrorResponse (a protocol violation raises instead)."""
        with anyio.fail_after(self.timeout):
            while not self.errors:
                self._check()
                if self._eof.is_set():
                    raise UdfError("UDF closed without sending an ErrorResponse")
                await self._arrived.wait()
        self._check()
        return self.errors[0]

    async def wait_closed(self) -> None:
        """Wait until the UDF closes; raises at once on a protocol violation."""
        with anyio.fail_after(self.timeout):
            while not self._eof.is_set():
                self._check()
                await self._arrived.wait()
        self._check()

    async def finish(self) -> list[pb.Point | pb.BeginBatch | pb.EndBatch]:
        """Half-close and read until the UDF closes; returns all data output.

        Raises :class:`UdfProtocolError` if the UDF broke the protocol at any time
        on this connection, so empty output from a broken UDF cannot pass.
        """
        self._check()
        try:
            await self.close_write()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._check()  # the UDF hung up after a violation: report the violation
            raise
        await self.wait_closed()
        return self.output

    @property
    def points(self) -> list[pb.Point]:
        return [m for m in self.output if isinstance(m, pb.Point)]


def _describe(message: pb.BeginBatch | pb.EndBatch) -> str:
    """Name a batch edge in an error message."""
    return f"name {message.name!r}, group {message.group!r}"


@asynccontextmanager
async def connect(
    path: str | os.PathLike[str],
    *,
    reply_timeout: float = 10.0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> AsyncIterator[UdfClient]:
    """Open a connection to a UDF socket; its reader task lives as long as the block.

    ``reply_timeout`` bounds each wait for a response (as Kapacitor's own timeout).
    An exception raised in the block leaves it as itself, not in an exception
    group. A protocol violation that no call inside the block raised is raised when the
    block ends normally, so a broken UDF cannot go unnoticed.
    """
    stream = await anyio.connect_unix(os.fspath(path))
    client = UdfClient(stream, timeout=reply_timeout, max_message_size=max_message_size)
    async with stream:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client._read)
                try:
                    yield client
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The reader never raises, so the one exception is the block's own: the
            # group is only the task group's wrapping, which would hide it from
            # ``except UdfProtocolError`` (or UdfError, TimeoutError) around the block.
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None
    client._raise_unreported()


async def probe_info(path: str | os.PathLike[str], reply_timeout: float = 5.0) -> pb.InfoResponse:
    """Info and a prompt close, exactly what Kapacitor does at start-up."""
    async with connect(path, reply_timeout=reply_timeout) as client:
        info = await client.info()
        await client.close_write()
        await client.wait_closed()
        return info
