"""One Kapacitor connection: a reader, a handler runner and one writer, in one task group.

::

    socket ─▶ reader ──(bounded queue of frame chunks)──▶ runner ──▶ writer ─▶ socket
               │ answers Info and Keepalive at once ─────────────────▶│

* The **reader** splits each read into frames in one pass. Info and keepalives
  are answered on the spot, so neither a busy handler nor one still being
  imported delays them; everything else goes, one chunk per read, into a queue
  of a few chunks. When the queue (or the writer) is full the reader stops
  reading and backpressure reaches Kapacitor through the socket.
* The **runner** waits until the function's handler is loaded, then owns the
  handler instance. Data frames run in a tight loop (in a worker thread for
  ``threaded`` handlers); Init, Snapshot and Restore are always answered, with
  ``success=false`` and the reason when the handler fails.
* The **writer** (``writer.FrameWriter``) sends in FIFO order, joining whatever
  accumulated into one send; output is validated first (``output.OutputBuffer``).

End of input (Kapacitor's half-close) drains the queue, calls ``close``, flushes
and closes. A fatal error (protocol violation, handler exception under the
``error`` policy, invalid output) sends the output already produced, then one
``ErrorResponse``, stops reading and closes this connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from google.protobuf.message import DecodeError

from . import wire
from .errors import (
    FrameError,
    InitFailed,
    OutputError,
    PointError,
    ProtocolError,
    RestoreFailed,
    TaskError,
)
from .framing import DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder
from .handler import Context, Edge, ErrorPolicy, Handler, HandlerSpec
from .options import build_options
from .output import OutputBuffer
from .proto import udf_pb2 as pb
from .writer import FrameWriter

log = logging.getLogger("udfd.connection")

_Point = pb.Point
_point_frame = wire.point_frame
_decode_request = wire.decode_request
_parse_point = pb.Point.FromString
_POINT_HEADERS = wire.POINT_HEADERS
#: first bytes of data frames (field tags of begin=16, point=17, end=18)
_DATA_TAG = 0x80
#: what handler code may raise that must end only its own connection; cancellation
#: (a BaseException of the event loop's own) is deliberately not among them
HANDLER_FAILURES: tuple[type[BaseException], ...] = (
    Exception,
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
)
#: how long a handler's ``close`` may take after an abnormal end
CLOSE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Limits:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: bytes asked of the socket per read; one read becomes one queued chunk.
    #: Small enough that the reader returns to the socket often (a keepalive is
    #: answered when it is read), large enough to amortise the read; 64 KiB
    #: measured best (see benchmarks/).
    read_size: int = 64 * 1024
    #: chunks queued between reader and runner before the reader waits: with
    #: read_size this bounds buffered input per connection to ~128 KiB
    queue_chunks: int = 2
    #: output bytes queued in the writer before the runner (and reader) wait
    write_high_water: int = 256 * 1024
    #: frames handled between two yields to the event loop, so one busy
    #: connection cannot delay the others' keepalives by more than a slice
    slice_frames: int = 256


@dataclass
class Stats:
    """Counters of one function (shared by its connections); plain data for health/metrics.

    Only the event loop thread writes them: worker threads count into their
    connection's tally, which the loop adds here after each slice.
    """

    connections_total: int = 0
    connections_active: int = 0
    points_in: int = 0
    points_out: int = 0
    batches_in: int = 0
    dropped: int = 0
    handler_errors: int = 0
    protocol_errors: int = 0
    keepalives: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    last_error: str = ""
    last_error_time: float = field(default=0.0)


class _Tally:
    """Per-connection counts, written by whichever thread runs the handler."""

    __slots__ = ("batches_in", "dropped", "handler_errors", "points_in")

    def __init__(self) -> None:
        self.points_in = self.batches_in = self.dropped = self.handler_errors = 0


class HandlerSource(Protocol):
    """Where a connection gets its handler: the function's Site, or a fixed spec.

    The socket is bound before the handler is imported, so ``spec`` may still be
    None when a connection starts; ``early_info`` is then the Info to serve
    meanwhile (the one last served for this function), if any.
    """

    @property
    def spec(self) -> HandlerSpec | None: ...

    @property
    def init_error(self) -> str | None: ...

    @property
    def early_info(self) -> pb.InfoResponse | None: ...

    async def wait_loaded(self) -> None: ...


@dataclass
class FixedSource:
    """A handler known up front (tests, ``udfd.testing``)."""

    spec: HandlerSpec
    init_error: str | None = None
    early_info: pb.InfoResponse | None = None

    async def wait_loaded(self) -> None:
        return None


class _Fatal(Exception):
    """Ends the connection after an ErrorResponse carrying ``str(self)``."""

    def __init__(self, message: str, *, protocol_error: bool = False) -> None:
        super().__init__(message)
        #: count it as a protocol error (the peer's fault, not the handler's)
        self.protocol_error = protocol_error


def _protocol_fatal(exc: ProtocolError | DecodeError, *, counted: bool = False) -> _Fatal:
    return _Fatal(f"udfd: protocol error: {exc}", protocol_error=not counted)


class _RateLimitedLog:
    """Logs the first of a kind at once, then at most once per interval with a count."""

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(
        self, logger: logging.LoggerAdapter[logging.Logger], interval: float = 10.0
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} similar messages suppressed)"
            self._suppressed = 0
        self._last = now
        self._logger.log(level, msg, *args, exc_info=exc_info)


class Connection:
    """Serves one accepted socket for one function until either side ends it."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        source: HandlerSource | HandlerSpec,
        *,
        function: str = "",
        defaults: Mapping[str, Any] | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.ERROR,
        limits: Limits | None = None,
        stats: Stats | None = None,
    ) -> None:
        self._stream = stream
        self._source = FixedSource(source) if isinstance(source, HandlerSpec) else source
        self._function = function or (self._source.spec.name if self._source.spec else "")
        self._defaults = dict(defaults or {})
        self._policy = error_policy
        self._limits = limits or Limits()
        self._stats = stats if stats is not None else Stats()
        self._tally = _Tally()
        self._writer = FrameWriter(stream, self._limits.write_high_water)
        self._read_scope = anyio.CancelScope()
        self._handler: Handler[Any] | None = None
        self._spec: HandlerSpec | None = None  # set once loaded
        self._info_frame: bytes | None = None
        self._out = OutputBuffer(provides_batch=False)
        self._wants_batch = False
        self._in_batch = False  # input framing
        self._task_id = ""
        self._node_id = ""
        self._log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            log, {"function": self._function}
        )
        self._drop_log = _RateLimitedLog(self._log)
        self._flush_requested = False
        self._chunks: MemoryObjectSendStream[list[bytes] | ProtocolError] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        spec = self._source.spec
        self._early_info = spec.info if spec is not None else self._source.early_info
        if self._early_info is not None:
            self._info_frame = wire.info_frame(self._early_info)

    @property
    def stats(self) -> Stats:
        return self._stats

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Run until Kapacitor closes, a fatal error, or cancellation; always closes the socket."""
        self._stats.connections_total += 1
        self._stats.connections_active += 1
        send, receive = anyio.create_memory_object_stream[list[bytes] | ProtocolError](
            self._limits.queue_chunks
        )
        self._chunks = send
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer.run)
                tg.start_soon(self._run_handler, receive)
                with self._read_scope:
                    await self._read(send)
        finally:
            self._stats.connections_active -= 1
            self._stats.bytes_out += self._writer.bytes_sent
            self._merge_tally()
            with anyio.CancelScope(shield=True):
                await self._close_handler_quietly()
                await self._stream.aclose()

    async def close_unstarted(self) -> None:
        """Close the socket of a connection whose task was cancelled before it ran."""
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    def abort(self, message: str) -> None:
        """End the connection soon with an ErrorResponse (daemon shutdown past its grace).

        Kapacitor then stops the task with ``message`` instead of a bare broken
        connection. Output not yet handed to the writer is not sent.
        """
        self._read_scope.cancel()
        self._writer.put(wire.error_frame(message))
        self._writer.close()

    async def _read(self, send: MemoryObjectSendStream[list[bytes] | ProtocolError]) -> None:
        decoder = FrameDecoder(self._limits.max_message_size)
        stats = self._stats
        read_size = self._limits.read_size
        receive = self._stream.receive
        writer = self._writer
        with send:
            try:
                while True:
                    # inline answers count against the writer's limit too: a peer that
                    # sends requests but never reads must not grow our memory
                    await writer.wait_writable()
                    try:
                        data = await receive(read_size)
                    except anyio.EndOfStream:
                        decoder.check_eof()
                        return
                    except (anyio.BrokenResourceError, OSError):
                        return
                    stats.bytes_in += len(data)
                    try:
                        chunk = decoder.feed(data)
                    except FrameError as exc:
                        # what arrived intact before the bad bytes is still handled
                        if exc.frames:
                            await send.send(self._answer_inline(exc.frames))
                        raise
                    chunk = self._answer_inline(chunk)
                    if chunk:
                        await send.send(chunk)
            except ProtocolError as exc:
                stats.protocol_errors += 1
                self._log.warning("protocol error from Kapacitor: %s", exc)
                await send.send(exc)

    def _answer_inline(self, chunk: list[bytes]) -> list[bytes]:
        """Answer Info and keepalives at once (never behind handler work); return the rest.

        A frame that cannot be answered here (an Info before any Info is known, a
        keepalive that does not decode) stays in place, so the runner handles or
        fails on it in stream order.
        """
        rest: list[bytes] = []
        keep = rest.append
        writer = self._writer
        for frame in chunk:
            first = frame[0] if frame else 0
            if first == wire.TAG_KEEPALIVE:
                try:
                    answer = wire.keepalive_frame(wire.keepalive_time(frame))
                except ProtocolError:
                    keep(frame)
                    continue
                writer.put_urgent(answer)
                self._stats.keepalives += 1
            elif first == wire.TAG_INFO and self._info_frame is not None:
                writer.put(self._info_frame)
            else:
                keep(frame)
        return rest

    async def _run_handler(
        self, receive: MemoryObjectReceiveStream[list[bytes] | ProtocolError]
    ) -> None:
        writer = self._writer
        try:
            async with receive:
                async for chunk in receive:
                    if isinstance(chunk, ProtocolError):
                        raise _protocol_fatal(chunk, counted=True)  # the reader counted it
                    if chunk:
                        # only now wait for an import still running: Kapacitor's start-up
                        # Info-then-EOF connection must close without waiting for it
                        if self._spec is None:
                            await self._wait_for_handler()
                        await self._process_chunk(chunk)
                    if self._flush_requested and self._handler is not None:
                        self._flush_requested = False
                        await self._call_for_output(self._handler.flush)
                    self._send_output()
                    await writer.wait_writable()
                    if writer.failed is not None:
                        self._read_scope.cancel()
                        return
            # input ended cleanly: let the handler emit its last output
            if self._handler is not None:
                handler, self._handler = self._handler, None
                await self._call_for_output(handler.close)
                self._out.discard_open_batch()
                self._send_output()
        except _Fatal as exc:
            if exc.protocol_error:
                self._stats.protocol_errors += 1
            self._fail(str(exc))
        except Exception as exc:
            # a udfd bug: still tell Kapacitor, and keep it to this connection
            self._log.exception("internal error")
            self._fail(f"udfd: internal error: {type(exc).__name__}: {exc}")
        finally:
            self._merge_tally()
            writer.close()

    def _fail(self, message: str) -> None:
        self._stats.last_error = message
        self._stats.last_error_time = time.time()
        self._send_output()
        self._writer.put(wire.error_frame(message))
        # stop reading (Kapacitor stops the task when it sees the error); the
        # writer still flushes everything queued before its task ends
        self._read_scope.cancel()

    def _send_output(self) -> None:
        if self._out.frames:
            self._writer.put_many(self._out.take())
        self._stats.points_out += self._out.points
        self._out.points = 0

    def _merge_tally(self) -> None:
        """Add what worker threads counted to the shared stats (on the loop thread)."""
        tally, stats = self._tally, self._stats
        stats.points_in += tally.points_in
        stats.batches_in += tally.batches_in
        stats.dropped += tally.dropped
        stats.handler_errors += tally.handler_errors
        self._tally = _Tally()

    async def _wait_for_handler(self) -> None:
        """The socket may be served before the handler is imported: wait for it here."""
        source = self._source
        await source.wait_loaded()
        spec = source.spec
        if spec is None:  # a source must provide a spec once loaded
            raise RuntimeError(f"{self._function}: handler source loaded without a spec")
        self._spec = spec
        if not self._function:
            self._function = spec.name
        self._out = OutputBuffer(provides_batch=spec.provides is Edge.BATCH)
        self._wants_batch = spec.wants is Edge.BATCH
        if self._early_info is not None and self._early_info != spec.info:
            self._log.warning(
                "the Info served before the handler loaded differs from its declaration; "
                "restart Kapacitor to pick up the new options"
            )
        self._info_frame = wire.info_frame(spec.info)

    async def _close_handler_quietly(self) -> None:
        """Give the handler its ``close`` after an abnormal end; output is discarded."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        with anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._call(handler.close)
            except HANDLER_FAILURES:
                self._log.exception("handler close failed")

    def request_flush(self) -> None:
        """Thread-safe and never blocking: have the runner call the handler's ``flush`` soon.

        Sets a flag the runner checks after every chunk, and wakes an idle runner
        with an empty chunk when the queue has room (a full queue means the runner
        is busy and will see the flag anyway).
        """
        self._flush_requested = True
        if threading.get_ident() == self._loop_thread:
            self._wake_runner()
        elif self._loop is not None:
            # RuntimeError: the loop is closed, the connection is gone
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake_runner)

    def _wake_runner(self) -> None:
        chunks = self._chunks
        if chunks is None:
            return
        with contextlib.suppress(
            anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
        ):
            chunks.send_nowait([])

    # ------------------------------------------------------------ processing

    async def _process_chunk(self, frames: list[bytes]) -> None:
        spec = self._spec
        assert spec is not None
        i = 0
        n = len(frames)
        threaded = spec.threaded
        is_async = bool(spec.is_async & {"point", "begin_batch", "end_batch"})
        step = self._limits.slice_frames
        try:
            while i < n:
                first = frames[i][0] if frames[i] else 0
                if first >= _DATA_TAG and self._handler is not None:
                    stop = min(n, i + step)
                    if is_async:
                        i = await self._data_async(frames, i, stop)
                    elif threaded:
                        i = await anyio.to_thread.run_sync(
                            self._data_sync, frames, i, stop, abandon_on_cancel=True
                        )
                    else:
                        i = self._data_sync(frames, i, stop)
                        await anyio.lowlevel.checkpoint()
                else:
                    await self._manage(frames[i])
                    i += 1
        finally:
            self._merge_tally()

    def _data_sync(self, frames: list[bytes], start: int, stop: int) -> int:
        """Handle data frames from ``start`` up to ``stop`` or the next management frame.

        The hot loop: one parse, one callback and one serialization per point,
        with the canonical point encoding decoded and encoded inline (a function
        call per point is a measurable share of the budget). Returns the index of
        the first frame it did not handle. May run in a worker thread: it touches
        only this connection's state.
        """
        handler = self._handler
        assert handler is not None
        on_point = handler.point
        out = self._out
        append = out.frames.append
        add = out.add
        stream_out = not out.provides_batch
        check_batch = self._wants_batch
        parse_point = _parse_point
        headers = _POINT_HEADERS
        i = start
        points = points_out = 0
        kind = wire.POINT
        msg: Any = None
        try:
            while i < stop:
                frame = frames[i]
                size = len(frame)
                if (
                    size > 3
                    and frame[0] == 0x8A
                    and frame[1] == 1
                    and frame[2] < 0x80
                    and frame[2] + 3 == size
                ):
                    kind, msg = wire.POINT, parse_point(frame[3:])
                elif not frame or frame[0] < _DATA_TAG:
                    break
                else:
                    kind, msg = _decode_request(frame)
                i += 1
                try:
                    if kind == wire.POINT:
                        if check_batch and not self._in_batch:
                            raise ProtocolError("point outside a batch for a batch handler")
                        points += 1
                        result = on_point(msg)
                        if result is None:
                            continue
                        if type(result) is _Point and stream_out:
                            body = result.SerializeToString()
                            if len(body) < 0x80:
                                append(headers[len(body)] + body)
                            else:
                                append(_point_frame(result))
                            points_out += 1
                            continue
                        add(result)
                    else:
                        add(self._batch_edge(handler, kind, msg))
                except (ProtocolError, OutputError, _Fatal):
                    raise
                except HANDLER_FAILURES as exc:
                    self._handler_exception(exc, kind, msg)
        except (ProtocolError, DecodeError) as exc:
            raise _protocol_fatal(exc) from None
        except OutputError as exc:
            raise _Fatal(f"{self._function}: invalid handler output: {exc}") from None
        finally:
            self._tally.points_in += points
            out.points += points_out
        return i

    async def _data_async(self, frames: list[bytes], start: int, stop: int) -> int:
        """The same as :meth:`_data_sync` for coroutine callbacks (one frame at a time)."""
        handler = self._handler
        assert handler is not None
        i = start
        while i < stop:
            frame = frames[i]
            if not frame or frame[0] < _DATA_TAG:
                break
            i += 1
            try:
                kind, msg = _decode_request(frame)
            except ProtocolError as exc:
                raise _protocol_fatal(exc) from None
            try:
                if kind == wire.POINT:
                    if self._wants_batch and not self._in_batch:
                        raise ProtocolError("point outside a batch for a batch handler")
                    self._tally.points_in += 1
                    result: Any = handler.point(msg)  # type: ignore[arg-type]
                else:
                    result = self._batch_edge(handler, kind, msg)
                if hasattr(result, "__await__"):
                    result = await result
                self._out.add(result)
            except ProtocolError as exc:
                raise _protocol_fatal(exc) from None
            except OutputError as exc:
                raise _Fatal(f"{self._function}: invalid handler output: {exc}") from None
            except _Fatal:
                raise
            except HANDLER_FAILURES as exc:
                self._handler_exception(exc, kind, msg)
        return i

    def _batch_edge(self, handler: Handler[Any], kind: int, msg: object) -> Any:
        if kind == wire.BEGIN:
            if not self._wants_batch:
                raise ProtocolError("BeginBatch sent to a stream handler")
            if self._in_batch:
                raise ProtocolError("BeginBatch inside an open batch")
            self._in_batch = True
            self._tally.batches_in += 1
            return handler.begin_batch(msg)  # type: ignore[arg-type]
        if kind == wire.END:
            if not self._in_batch:
                raise ProtocolError("EndBatch without BeginBatch")
            self._in_batch = False
            return handler.end_batch(msg)  # type: ignore[arg-type]
        raise ProtocolError(f"unexpected {wire.KIND_NAMES.get(kind, kind)} request among data")

    def _handler_exception(self, exc: BaseException, kind: int, msg: object) -> None:
        """Apply the error policy; raises ``_Fatal`` to end the connection.

        May run in a worker thread: it counts into the connection's tally and
        logs; ``last_error`` is a single attribute store.
        """
        what = wire.KIND_NAMES.get(kind, "data")
        group = getattr(msg, "group", "")
        context = f"task={self._task_id or '?'} node={self._node_id or '?'} group={group!r}"
        if isinstance(exc, PointError):
            self._tally.dropped += 1
            self._drop_log(logging.INFO, "dropped %s (%s): %s", what, context, exc)
            return
        self._tally.handler_errors += 1
        if isinstance(exc, TaskError):
            self._log.error("handler stopped the task on %s (%s): %s", what, context, exc)
            raise _Fatal(str(exc))
        text = f"{type(exc).__name__}: {exc}"
        if self._policy is ErrorPolicy.DROP and isinstance(exc, Exception):
            self._tally.dropped += 1
            self._stats.last_error = text
            self._stats.last_error_time = time.time()
            self._drop_log(
                logging.ERROR,
                "handler failed on %s (%s), dropped: %s",
                what,
                context,
                text,
                exc_info=True,
            )
            return
        self._log.error("handler failed on %s (%s): %s", what, context, text, exc_info=exc)
        raise _Fatal(f"{self._function}: {text}")

    async def _call_for_output(self, fn: Callable[[], Any]) -> None:
        """Run a callback whose result is output, honouring async/threaded and the policy."""
        try:
            self._out.add(await self._call(fn))
        except OutputError as exc:
            raise _Fatal(f"{self._function}: invalid handler output: {exc}") from None
        except _Fatal:
            raise
        except HANDLER_FAILURES as exc:
            self._handler_exception(exc, 0, None)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        spec = self._spec
        if spec is not None and spec.threaded:
            return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        result = fn(*args)
        if hasattr(result, "__await__"):
            result = await result
        return result

    # ------------------------------------------------------------ management

    async def _manage(self, frame: bytes) -> None:
        try:
            kind, msg = _decode_request(frame)
        except ProtocolError as exc:
            raise _protocol_fatal(exc) from None
        if kind == wire.INIT:
            await self._init(msg)  # type: ignore[arg-type]
        elif kind == wire.SNAPSHOT:
            await self._snapshot()
        elif kind == wire.RESTORE:
            await self._restore(msg)  # type: ignore[arg-type]
        elif kind in (wire.POINT, wire.BEGIN, wire.END):
            raise _Fatal(f"udfd: protocol error: {wire.KIND_NAMES[kind]} before a successful Init")
        elif kind == wire.INFO:  # sent before any Info was known, or oddly encoded
            assert self._info_frame is not None
            self._out.frames.append(self._info_frame)
        elif kind == wire.KEEPALIVE:
            self._out.frames.append(wire.keepalive_frame(msg.time))  # type: ignore[attr-defined]

    async def _init(self, request: pb.InitRequest) -> None:
        self._task_id, self._node_id = request.taskID, request.nodeID
        self._log = logging.LoggerAdapter(
            log, {"function": self._function, "task": self._task_id, "node": self._node_id}
        )
        self._drop_log = _RateLimitedLog(self._log)
        answer = self._out.frames.append
        if self._handler is not None:
            answer(wire.init_frame(False, "udfd: Init received twice on one connection"))
            return
        init_error = self._source.init_error
        if init_error is not None:
            answer(wire.init_frame(False, init_error))
            return
        spec = self._spec
        assert spec is not None
        try:
            if spec.cls.raw_options:
                options: Any = request
            else:
                options = build_options(
                    spec.cls.options_model, spec.options, request.options, self._defaults
                )
        except HANDLER_FAILURES as exc:  # OptionsError, or a user validator's own error
            self._log.warning("Init rejected: %s", exc)
            answer(wire.init_frame(False, f"{self._function}: {exc}"))
            return
        context = Context(
            self._function, self._task_id, self._node_id, self._log, self.request_flush
        )
        try:
            handler = spec.cls(options, context)
            await self._call(handler.init)
        except InitFailed as exc:
            self._log.warning("handler refused Init: %s", exc)
            answer(wire.init_frame(False, str(exc)))
            return
        except HANDLER_FAILURES as exc:
            self._log.error("handler init failed: %s", exc, exc_info=exc)
            answer(
                wire.init_frame(
                    False, f"{self._function}: init failed: {type(exc).__name__}: {exc}"
                )
            )
            return
        self._handler = handler
        answer(wire.init_frame(True))

    async def _snapshot(self) -> None:
        handler = self._handler
        if handler is None:
            self._out.frames.append(wire.snapshot_frame(b""))
            return
        try:
            data = await self._call(handler.snapshot)
            if isinstance(data, str):
                data = data.encode()
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"snapshot returned {type(data).__name__}, not bytes")
        except HANDLER_FAILURES as exc:
            # always answer: Kapacitor waits forever for a snapshot response
            self._out.frames.append(wire.snapshot_frame(b""))
            self._handler_exception(exc, wire.SNAPSHOT, None)
            return
        self._out.frames.append(wire.snapshot_frame(bytes(data)))

    async def _restore(self, request: pb.RestoreRequest) -> None:
        handler = self._handler
        answer = self._out.frames.append
        if handler is None:
            answer(wire.restore_frame(False, "udfd: Restore before a successful Init"))
            return
        try:
            await self._call(handler.restore, request.snapshot)
        except RestoreFailed as exc:
            self._log.warning("handler refused Restore: %s", exc)
            answer(wire.restore_frame(False, str(exc)))
            return
        except HANDLER_FAILURES as exc:
            self._log.warning("restore failed: %s", exc)
            answer(wire.restore_frame(False, f"{self._function}: restore failed: {exc}"))
            return
        answer(wire.restore_frame(True))
