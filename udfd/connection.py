"""One Kapacitor connection: a reader, a handler runner and one writer, in one task group.

::

    socket ─▶ reader ──(bounded queue of frame chunks)──▶ runner ──▶ writer ─▶ socket
               │ answers Info and Keepalive at once ─────────────────▶│

* The **reader** splits each large read into frames in one pass. Info and
  keepalives are answered on the spot, so a busy handler never delays them;
  everything else goes, as one chunk per read, into a queue of a few chunks.
  When the queue is full the reader stops reading and backpressure reaches
  Kapacitor through the socket; memory stays flat.
* The **runner** owns the handler instance. Data frames run in a tight loop
  (in a worker thread for ``threaded`` handlers); Init, Snapshot and Restore are
  always answered, with ``success=false`` and the reason when the handler fails.
  Output is validated against the handler's declaration before it is queued.
* The **writer** (``writer.FrameWriter``) sends in FIFO order, joining whatever
  accumulated into one send.

End of input (Kapacitor's half-close) drains the queue, calls ``close``, flushes
and closes. A fatal error (protocol violation, handler exception under the
``error`` policy, invalid output) sends one ``ErrorResponse`` after the output
already produced, stops reading and closes this connection only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import wire
from .errors import (
    FrameError,
    InitFailed,
    OptionsError,
    OutputError,
    PointError,
    ProtocolError,
    RestoreFailed,
    TaskError,
)
from .framing import DEFAULT_MAX_MESSAGE_SIZE, FrameDecoder, encode_varint
from .handler import Context, Edge, ErrorPolicy, Handler, HandlerSpec
from .options import build_options
from .proto import udf_pb2 as pb
from .writer import FrameWriter

log = logging.getLogger("udfd.connection")

_Point = pb.Point
_BeginBatch = pb.BeginBatch
_EndBatch = pb.EndBatch
_point_frame = wire.point_frame
_decode_request = wire.decode_request
_parse_point = pb.Point.FromString
#: frame prefix + Response.point tag + length, for point bodies under 128 bytes
_POINT_HEADERS = tuple(encode_varint(n + 3) + bytes([0x8A, 0x01, n]) for n in range(0x80))

# first bytes of data frames (field tags of begin=16, point=17, end=18)
_DATA_TAG = 0x80


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
    #: output bytes queued in the writer before the runner waits
    write_high_water: int = 256 * 1024
    #: frames handled between two yields to the event loop, so one busy
    #: connection cannot delay the others' keepalives by more than a slice
    slice_frames: int = 256


@dataclass
class Stats:
    """Counters of one function (shared by its connections); plain data for health/metrics."""

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


class _Fatal(Exception):
    """Ends the connection after an ErrorResponse carrying ``str(self)``."""


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
        spec: HandlerSpec,
        *,
        function: str = "",
        defaults: Mapping[str, Any] | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.ERROR,
        limits: Limits | None = None,
        stats: Stats | None = None,
        init_error: str | None = None,
    ) -> None:
        self._stream = stream
        self._spec = spec
        self._function = function or spec.name
        self._defaults = dict(defaults or {})
        self._policy = error_policy
        self._limits = limits or Limits()
        self._stats = stats if stats is not None else Stats()
        #: set for a function whose handler failed to load: Init fails with this
        self._init_error = init_error
        self._writer = FrameWriter(stream, self._limits.write_high_water)
        self._read_scope = anyio.CancelScope()
        self._handler: Handler[Any] | None = None
        self._info_frame = wire.info_frame(spec.info)
        self._provides_batch = spec.provides is Edge.BATCH
        self._wants_batch = spec.wants is Edge.BATCH
        self._in_batch = False  # input framing
        self._out_in_batch = False  # output framing
        self._out: list[bytes] = []
        self._task_id = ""
        self._node_id = ""
        self._log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            log, {"function": self._function}
        )
        self._drop_log = _RateLimitedLog(self._log)
        self._group = ""  # group of the point being handled, for error context
        self._flush_requested = False
        self._chunks: MemoryObjectSendStream[list[bytes] | ProtocolError] | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self.ended_by: str = ""

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
        self._token = anyio.lowlevel.current_token()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer.run)
                tg.start_soon(self._run_handler, receive)
                with self._read_scope:
                    await self._read(send)
        finally:
            self._stats.connections_active -= 1
            self._stats.bytes_out += self._writer.bytes_sent
            with anyio.CancelScope(shield=True):
                await self._close_handler_quietly()
                await self._stream.aclose()

    async def _read(self, send: MemoryObjectSendStream[list[bytes] | ProtocolError]) -> None:
        decoder = FrameDecoder(self._limits.max_message_size)
        stats = self._stats
        read_size = self._limits.read_size
        receive = self._stream.receive
        with send:
            try:
                while True:
                    try:
                        data = await receive(read_size)
                    except anyio.EndOfStream:
                        decoder.check_eof()
                        self.ended_by = self.ended_by or "eof"
                        return
                    except (anyio.BrokenResourceError, OSError):
                        self.ended_by = "reset"
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
        """Answer Info and keepalives at once (never behind handler work); return the rest."""
        writer = self._writer
        for i in range(len(chunk) - 1, -1, -1):
            frame = chunk[i]
            if not frame:
                continue
            first = frame[0]
            if first == wire.TAG_KEEPALIVE:
                writer.put_urgent(wire.keepalive_frame(wire.keepalive_time(frame)))
                self._stats.keepalives += 1
                del chunk[i]
            elif first == wire.TAG_INFO:
                writer.put(self._info_frame)
                del chunk[i]
        return chunk

    async def _run_handler(
        self, receive: MemoryObjectReceiveStream[list[bytes] | ProtocolError]
    ) -> None:
        writer = self._writer
        try:
            async with receive:
                async for chunk in receive:
                    if isinstance(chunk, ProtocolError):
                        raise _Fatal(f"udfd: protocol error: {chunk}")
                    if chunk:
                        await self._process_chunk(chunk)
                    if self._flush_requested and self._handler is not None:
                        self._flush_requested = False
                        await self._call_for_output(self._handler.flush)
                    if self._out:
                        writer.put_many(self._out)
                        self._out = []
                    await writer.wait_writable()
                    if writer.failed is not None:
                        self.ended_by = self.ended_by or "peer closed"
                        self._read_scope.cancel()
                        return
            # input ended cleanly: let the handler emit its last output
            if self._handler is not None:
                handler, self._handler = self._handler, None
                await self._call_for_output(handler.close)
                if self._out:
                    writer.put_many(self._out)
                    self._out = []
        except _Fatal as exc:
            message = str(exc)
            self._stats.last_error = message
            self._stats.last_error_time = time.time()
            self.ended_by = "error"
            if self._out:
                writer.put_many(self._out)
                self._out = []
            writer.put(wire.error_frame(message))
            # stop reading (Kapacitor stops the task when it sees the error); the
            # writer still flushes everything queued before its task ends
            self._read_scope.cancel()
        finally:
            writer.close()

    async def _close_handler_quietly(self) -> None:
        """Give the handler its ``close`` after an abnormal end; output is discarded."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        try:
            await self._call(handler.close)
        except Exception:
            self._log.exception("handler close failed")

    def request_flush(self) -> None:
        """Thread-safe: have the runner call the handler's ``flush`` soon.

        Sets a flag the runner checks after every chunk, and wakes an idle runner
        with an empty chunk when the queue has room (a full queue means the runner
        is busy and will see the flag anyway).
        """
        self._flush_requested = True
        chunks, token = self._chunks, self._token
        if chunks is None or token is None:
            return

        def wake() -> None:
            with contextlib.suppress(
                anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
            ):
                chunks.send_nowait([])

        try:
            anyio.from_thread.run_sync(wake, token=token)
        except RuntimeError:
            wake()  # called on the event loop thread itself

    # ------------------------------------------------------------ processing

    async def _process_chunk(self, frames: list[bytes]) -> None:
        i = 0
        n = len(frames)
        threaded = self._spec.threaded
        is_async = bool(self._spec.is_async & {"point", "begin_batch", "end_batch"})
        step = self._limits.slice_frames
        while i < n:
            first = frames[i][0] if frames[i] else 0
            if first >= _DATA_TAG and self._handler is not None:
                stop = min(n, i + step)
                if is_async:
                    i = await self._data_async(frames, i, stop)
                elif threaded:
                    i = await anyio.to_thread.run_sync(self._data_sync, frames, i, stop)
                else:
                    i = self._data_sync(frames, i, stop)
                    await anyio.lowlevel.checkpoint()
            else:
                await self._manage(frames[i])
                i += 1

    def _data_sync(self, frames: list[bytes], start: int, stop: int) -> int:
        """Handle data frames from ``start`` up to ``stop`` or the next management frame.

        The hot loop: one parse, one callback and one serialization per point,
        with the canonical point encoding decoded and encoded inline (a function
        call per point is a measurable share of the budget). Returns the index of
        the first frame it did not handle.
        """
        handler = self._handler
        assert handler is not None
        on_point = handler.point
        append = self._out.append
        emit = self._emit
        stream_out = not self._provides_batch
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
                if size > 3 and frame[0] == 0x8A and frame[1] == 1 and frame[2] + 3 == size:
                    if frame[2] >= 0x80:  # a two-byte length that happened to fit
                        kind, msg = _decode_request(frame)
                    else:
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
                        emit(result)
                    else:
                        emit(self._batch_edge(handler, kind, msg))
                except (ProtocolError, OutputError, _Fatal):
                    raise
                except Exception as exc:
                    self._handler_exception(exc, kind, msg)
        except ProtocolError as exc:
            self._stats.protocol_errors += 1
            raise _Fatal(f"udfd: protocol error: {exc}") from None
        except OutputError as exc:
            raise _Fatal(f"{self._function}: invalid handler output: {exc}") from None
        finally:
            self._stats.points_in += points
            self._stats.points_out += points_out
        return i

    async def _data_async(self, frames: list[bytes], start: int, stop: int) -> int:
        """The same as :meth:`_data_sync` for coroutine callbacks (one frame at a time)."""
        handler = self._handler
        assert handler is not None
        i = start
        n = stop
        while i < n:
            frame = frames[i]
            if not frame or frame[0] < _DATA_TAG:
                break
            i += 1
            try:
                kind, msg = _decode_request(frame)
            except ProtocolError as exc:
                self._stats.protocol_errors += 1
                raise _Fatal(f"udfd: protocol error: {exc}") from None
            try:
                if kind == wire.POINT:
                    if self._wants_batch and not self._in_batch:
                        raise ProtocolError("point outside a batch for a batch handler")
                    self._stats.points_in += 1
                    result = handler.point(msg)  # type: ignore[arg-type]
                else:
                    result = self._batch_edge(handler, kind, msg)
                if hasattr(result, "__await__"):
                    result = await result  # type: ignore[misc]
                self._emit(result)
            except ProtocolError as exc:
                self._stats.protocol_errors += 1
                raise _Fatal(f"udfd: protocol error: {exc}") from None
            except OutputError as exc:
                raise _Fatal(f"{self._function}: invalid handler output: {exc}") from None
            except _Fatal:
                raise
            except Exception as exc:
                self._handler_exception(exc, kind, msg)
        return i

    def _batch_edge(self, handler: Handler[Any], kind: int, msg: object) -> Any:
        if kind == wire.BEGIN:
            if not self._wants_batch:
                raise ProtocolError("BeginBatch sent to a stream handler")
            if self._in_batch:
                raise ProtocolError("BeginBatch inside an open batch")
            self._in_batch = True
            self._stats.batches_in += 1
            self._group = msg.group  # type: ignore[attr-defined]
            return handler.begin_batch(msg)  # type: ignore[arg-type]
        if kind == wire.END:
            if not self._in_batch:
                raise ProtocolError("EndBatch without BeginBatch")
            self._in_batch = False
            return handler.end_batch(msg)  # type: ignore[arg-type]
        raise ProtocolError(f"unexpected {wire.KIND_NAMES.get(kind, kind)} request among data")

    def _handler_exception(self, exc: Exception, kind: int, msg: object) -> None:
        """Apply the error policy; raises ``_Fatal`` to end the connection."""
        what = wire.KIND_NAMES.get(kind, "data")
        group = getattr(msg, "group", self._group)
        context = f"task={self._task_id or '?'} node={self._node_id or '?'} group={group!r}"
        if isinstance(exc, PointError):
            self._stats.dropped += 1
            self._drop_log(logging.INFO, "dropped %s (%s): %s", what, context, exc)
            return
        if isinstance(exc, TaskError):
            self._stats.handler_errors += 1
            self._log.error("handler stopped the task on %s (%s): %s", what, context, exc)
            raise _Fatal(str(exc))
        self._stats.handler_errors += 1
        text = f"{type(exc).__name__}: {exc}"
        if self._policy is ErrorPolicy.DROP:
            self._stats.dropped += 1
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

    def _emit(self, result: Any) -> None:
        """Validate handler output against the declaration and queue its frames."""
        if result is None:
            return
        if isinstance(result, (_Point, _BeginBatch, _EndBatch)):
            self._emit_one(result)
            return
        if isinstance(result, (str, bytes, pb.Response, pb.Request)) or not isinstance(
            result, Iterable
        ):
            raise OutputError(
                f"handler returned {type(result).__name__}; expected None, a Point, "
                "BeginBatch or EndBatch, or an iterable of them"
            )
        for item in result:
            if not isinstance(item, (_Point, _BeginBatch, _EndBatch)):
                raise OutputError(f"handler output contains a {type(item).__name__}")
            self._emit_one(item)

    def _emit_one(self, msg: pb.Point | pb.BeginBatch | pb.EndBatch) -> None:
        if isinstance(msg, _Point):
            if self._provides_batch and not self._out_in_batch:
                raise OutputError("point outside BeginBatch/EndBatch from a batch handler")
            self._out.append(_point_frame(msg))
            self._stats.points_out += 1
        elif not self._provides_batch:
            raise OutputError(
                f"{type(msg).__name__} from a handler that provides a stream (declare "
                "provides = Edge.BATCH to send batches)"
            )
        elif isinstance(msg, _BeginBatch):
            if self._out_in_batch:
                raise OutputError("BeginBatch before the previous batch's EndBatch")
            if msg.size < 0:
                raise OutputError(f"BeginBatch with negative size {msg.size}")
            self._out_in_batch = True
            self._out.append(wire.begin_frame(msg))
        else:
            if not self._out_in_batch:
                raise OutputError("EndBatch without BeginBatch")
            self._out_in_batch = False
            self._out.append(wire.end_frame(msg))

    async def _call_for_output(self, fn: Any, *args: Any) -> None:
        """Run a callback whose result is output, honouring async/threaded and the policy."""
        try:
            if self._spec.threaded:
                result = await anyio.to_thread.run_sync(fn, *args)
            else:
                result = fn(*args)
                if hasattr(result, "__await__"):
                    result = await result
            self._emit(result)
        except OutputError as exc:
            raise _Fatal(f"{self._function}: invalid handler output: {exc}") from None
        except Exception as exc:
            self._handler_exception(exc, 0, None)

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._spec.threaded:
            return await anyio.to_thread.run_sync(fn, *args)
        result = fn(*args)
        if hasattr(result, "__await__"):
            result = await result
        return result

    # ------------------------------------------------------------ management

    async def _manage(self, frame: bytes) -> None:
        try:
            kind, msg = _decode_request(frame)
        except ProtocolError as exc:
            self._stats.protocol_errors += 1
            raise _Fatal(f"udfd: protocol error: {exc}") from None
        if kind == wire.INIT:
            await self._init(msg)  # type: ignore[arg-type]
        elif kind == wire.SNAPSHOT:
            await self._snapshot()
        elif kind == wire.RESTORE:
            await self._restore(msg)  # type: ignore[arg-type]
        elif kind in (wire.POINT, wire.BEGIN, wire.END):
            self._stats.protocol_errors += 1
            raise _Fatal(f"udfd: protocol error: {wire.KIND_NAMES[kind]} before a successful Init")
        else:  # Info/keepalive reach here only when sent oddly encoded
            if kind == wire.INFO:
                self._out.append(self._info_frame)
            elif kind == wire.KEEPALIVE:
                self._out.append(wire.keepalive_frame(msg.time))  # type: ignore[attr-defined]

    async def _init(self, request: pb.InitRequest) -> None:
        self._task_id, self._node_id = request.taskID, request.nodeID
        self._log = logging.LoggerAdapter(
            log, {"function": self._function, "task": self._task_id, "node": self._node_id}
        )
        self._drop_log = _RateLimitedLog(self._log)
        if self._handler is not None:
            self._out.append(wire.init_frame(False, "udfd: Init received twice on one connection"))
            return
        if self._init_error is not None:
            self._out.append(wire.init_frame(False, self._init_error))
            return
        spec = self._spec
        try:
            if spec.cls.raw_options:
                options: Any = request
            else:
                options = build_options(
                    spec.cls.options_model, spec.options, request.options, self._defaults
                )
        except OptionsError as exc:
            self._log.warning("Init rejected: %s", exc)
            self._out.append(wire.init_frame(False, f"{self._function}: {exc}"))
            return
        context = Context(
            self._function, self._task_id, self._node_id, self._log, self.request_flush
        )
        try:
            handler = spec.cls(options, context)
            await self._call(handler.init)
        except InitFailed as exc:
            self._log.warning("handler refused Init: %s", exc)
            self._out.append(wire.init_frame(False, str(exc)))
            return
        except Exception as exc:
            self._log.error("handler init failed: %s", exc, exc_info=exc)
            self._out.append(
                wire.init_frame(
                    False, f"{self._function}: init failed: {type(exc).__name__}: {exc}"
                )
            )
            return
        self._handler = handler
        self._out.append(wire.init_frame(True))

    async def _snapshot(self) -> None:
        handler = self._handler
        if handler is None:
            self._out.append(wire.snapshot_frame(b""))
            return
        try:
            data = await self._call(handler.snapshot)
            if isinstance(data, str):
                data = data.encode()
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"snapshot returned {type(data).__name__}, not bytes")
        except Exception as exc:
            # always answer: Kapacitor waits forever for a snapshot response
            self._out.append(wire.snapshot_frame(b""))
            self._handler_exception(exc, wire.SNAPSHOT, None)
            return
        self._out.append(wire.snapshot_frame(bytes(data)))

    async def _restore(self, request: pb.RestoreRequest) -> None:
        handler = self._handler
        if handler is None:
            self._out.append(wire.restore_frame(False, "udfd: Restore before a successful Init"))
            return
        try:
            await self._call(handler.restore, request.snapshot)
        except RestoreFailed as exc:
            self._log.warning("handler refused Restore: %s", exc)
            self._out.append(wire.restore_frame(False, str(exc)))
            return
        except Exception as exc:
            self._log.warning("restore failed: %s", exc)
            self._out.append(wire.restore_frame(False, f"{self._function}: restore failed: {exc}"))
            return
        self._out.append(wire.restore_frame(True))
