"""The handler side of a connection: runs one handler instance and answers for it.

The runner owns the handler (created at Init with validated options) and is the
only caller of its callbacks, never on the event loop thread: plain callbacks run
in a thread of the function's pool, coroutines on the connection's own loop
(:class:`HandlerLoop`). Data frames run in a tight loop; Init, Snapshot and
Restore are always answered, with ``success=false`` and the reason when the
handler fails, because Kapacitor waits forever for those. Exceptions follow the
function's error policy; output is validated (``output.OutputBuffer``) before the
connection hands it to the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any

import anyio
import anyio.to_thread
from google.protobuf.message import DecodeError

from udfd.engine.limits import Limits
from udfd.engine.output import OutputBuffer
from udfd.engine.source import HandlerSource
from udfd.engine.stats import Stats, Tally
from udfd.errors import (
    InitFailed,
    OutputError,
    OutputTypeError,
    PointError,
    ProtocolError,
    RestoreFailed,
    TaskError,
)
from udfd.handler import (
    MAX_POINTS_CALL,
    BatchHandler,
    Context,
    Edge,
    ErrorPolicy,
    Handler,
    HandlerSpec,
)
from udfd.options import build_options
from udfd.protocol import wire
from udfd.protocol.proto import udf_pb2 as pb
from udfd.shared import PROCESS_RESOURCES, SharedView

log = logging.getLogger("udfd.engine.connection")

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
#: the callback behind a data frame, as an error message names it
_CALLBACKS = {wire.POINT: "point", wire.BEGIN: "begin_batch", wire.END: "end_batch"}
#: how long a handler's ``close`` may take after an abnormal end
CLOSE_TIMEOUT = 2.0
#: the handler thread hands output to the writer at least this often (seconds) ...
PUBLISH_INTERVAL = 0.005
#: ... or once this many frames are waiting
PUBLISH_FRAMES = 4096


#: thread id -> function, for every thread running handler code now (process-wide):
#: what a worker that exits anyway abandons
BUSY_THREADS: dict[int, str] = {}


def _drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its end, synchronously.

    The runner's chunk and management code is written once, as coroutines; for
    plain handlers nothing in it awaits anything that suspends, so a worker
    thread can run it without an event loop.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("udfd: a plain handler's callback suspended")


class HandlerLoop:
    """An event loop in a thread of its own, for one connection's coroutine callbacks.

    A coroutine callback that blocks by mistake (``time.sleep`` in ``async def``)
    then blocks only its own connection, never the I/O loop.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=f"udfd-async-{name}", daemon=True)
        self._thread.start()

    @property
    def thread_id(self) -> int:
        return self._thread.ident or 0

    def _main(self) -> None:
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return await asyncio.wrap_future(future)
        finally:
            future.cancel()  # abandoned on cancellation: the handler's loop cancels it

    def stop(self) -> None:
        """Ask the loop to end; a callback still blocking in it is abandoned with its thread."""
        with contextlib.suppress(RuntimeError):  # closed already
            self._loop.call_soon_threadsafe(self._loop.stop)


class Fatal(Exception):
    """Ends the connection after an ErrorResponse carrying ``str(self)``."""

    def __init__(self, message: str, *, protocol_error: bool = False, logged: bool = False) -> None:
        super().__init__(message)
        #: count it as a protocol error (the peer's fault, not the handler's)
        self.protocol_error = protocol_error
        #: udfd's log has it already (with the handler's traceback); else the
        #: connection logs it as it ends, so no error that ends one goes unlogged
        self.logged = logged


def protocol_fatal(exc: ProtocolError | DecodeError, *, counted: bool = False) -> Fatal:
    # counted: the reader counted and logged it already
    return Fatal(f"udfd: protocol error: {exc}", protocol_error=not counted, logged=counted)


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


class Runner:
    """Runs one connection's handler; the connection feeds it chunks of frames."""

    def __init__(
        self,
        source: HandlerSource,
        *,
        function: str,
        defaults: Mapping[str, Any],
        error_policy: ErrorPolicy,
        limits: Limits,
        stats: Stats,
        request_flush: Callable[[], None],
        emit: Callable[[bytes, int], None],
        wait_writable: Callable[[], None],
    ) -> None:
        self._source = source
        self._function = function
        self._defaults = dict(defaults)
        self._policy = error_policy
        self._limits = limits
        self._stats = stats
        self._request_flush = request_flush
        #: thread-safe: hand joined frames (and their point count) to the connection's writer
        self._emit = emit
        #: thread-safe and blocking: wait while the writer is above its high-water mark
        self._wait_writable = wait_writable
        self.tally = Tally()
        #: handler code is running (a chunk or a callback), as the loop thread sees it
        self.busy = False
        #: frames handled so far; the connection's watchdog reads it to tell a handler
        #: that is slow but moving from one stuck in a single call
        self.progress = 0
        #: the thread running handler code now (for the stack of a slow or stuck call)
        self.thread_id = 0
        self._handler_loop: HandlerLoop | None = None
        self._last_publish = 0.0
        self.out = OutputBuffer(provides_batch=False)
        #: set when the connection ends: a worker thread left running stops early
        self.stopping = False
        self._busy = threading.Event()
        self.flush_requested = False
        self._handler: Handler[Any] | None = None
        self._spec: HandlerSpec | None = None  # set once loaded
        self._wants_batch = False
        self._in_batch = False  # input framing
        #: the open batch's begin_batch failed under ``drop``: skip to its End
        self._skip_batch = False
        self._task_id = ""
        self._node_id = ""
        #: awaited after a successful Init with (task ID, node ID): the process model
        #: records which Kapacitor task uses the function
        self.on_init: Callable[[str, str], Awaitable[None]] | None = None
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            log, {"function": function}
        )
        self._drop_log = _RateLimitedLog(self.log)

    @property
    def loaded(self) -> bool:
        return self._spec is not None

    @property
    def task(self) -> tuple[str, str]:
        return self._task_id, self._node_id

    @property
    def handler(self) -> Handler[Any] | None:
        return self._handler

    def take_handler(self) -> Handler[Any] | None:
        """Hand over the handler for its final ``close`` (it gets no more callbacks)."""
        handler, self._handler = self._handler, None
        return handler

    async def load(self) -> HandlerSpec:
        """Wait for the function's handler: the socket may be served before it is imported."""
        source = self._source
        await source.wait_loaded()
        spec = source.spec
        if spec is None:  # a source must provide a spec once loaded
            raise RuntimeError(f"{self._function}: handler source loaded without a spec")
        self._spec = spec
        if not self._function:
            self._function = spec.name
        self.out = OutputBuffer(provides_batch=spec.provides is Edge.BATCH)
        self._wants_batch = spec.wants is Edge.BATCH
        if spec.is_async:
            self._handler_loop = HandlerLoop(self._function)
            self.thread_id = self._handler_loop.thread_id
        return spec

    async def process_chunk(self, frames: list[bytes]) -> None:
        """Handle one chunk of frames, off the event loop thread.

        Plain callbacks run in a worker thread of the function's pool, the whole
        chunk in one hop; coroutine callbacks run on this connection's own event
        loop thread (:class:`HandlerLoop`), so even one that blocks by mistake
        never stalls the I/O loop that answers Info and keepalives.
        """
        assert self._spec is not None
        started = time.perf_counter()
        try:
            await self._off_loop(self._process(frames))
        finally:
            self._stats.handler_seconds.observe(time.perf_counter() - started)
            self.merge_tally()

    async def _process(self, frames: list[bytes]) -> None:
        """The chunk itself, on the handler's thread; plain handlers never suspend here."""
        i = 0
        n = len(frames)
        is_async = self._handler_loop is not None
        assert self._spec is not None
        vectorised = self._spec.vectorised
        while i < n and not self.stopping:
            first = frames[i][0] if frames[i] else 0
            if first >= _DATA_TAG and self._handler is not None:
                if is_async:
                    i = await self._data_async(frames, i, n)
                elif vectorised:
                    i = self._data_vector(frames, i, n)
                else:
                    i = self._data_sync(frames, i, n)
            else:
                await self._manage(frames[i])
                i += 1
                self.progress += 1
                self.publish()

    # ------------------------------------------------------------ output handoff

    def publish(self) -> None:
        """Hand the output produced so far to the writer, then wait while it is full.

        Runs on the handler's thread. Waiting here is the handler path's
        backpressure: a peer that stops reading stops the handler, instead of
        growing udfd's memory.
        """
        self._last_publish = time.monotonic()
        out = self.out
        if out.frames or out.points:
            data = out.take()  # joined here, off the event loop thread
            points, out.points = out.points, 0
            self._emit(data, points)
        self._wait_writable()

    def _tick(self) -> None:
        """Called every few frames of the hot loop: publish what waited long enough."""
        if len(self.out.frames) >= PUBLISH_FRAMES or (
            time.monotonic() - self._last_publish >= PUBLISH_INTERVAL and self.out.frames
        ):
            self.publish()

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
        out = self.out
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
        tick = self._tick
        progress = self.progress - start
        try:
            while i < stop and not self.stopping:
                if not i & 7:  # progress every 8 frames: a store per frame costs ~8%
                    self.progress = progress + i
                    if not i & 63:
                        tick()
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
                        if check_batch and (not self._in_batch or self._skip_batch):
                            if not self._in_batch:
                                raise ProtocolError("point outside a batch for a batch handler")
                            points += 1
                            self.tally.dropped += 1  # its batch's begin_batch failed
                            continue
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
                except OutputTypeError as exc:
                    self._bad_output(exc, _CALLBACKS.get(kind, "the handler"), msg)
                except (ProtocolError, OutputError, Fatal):
                    raise
                except HANDLER_FAILURES as exc:
                    self._handler_exception(exc, kind, msg)
        except (ProtocolError, DecodeError) as exc:
            raise protocol_fatal(exc) from None
        except OutputError as exc:
            raise Fatal(f"{self._function}: invalid handler output: {exc}") from None
        finally:
            self.progress = progress + i
            self.tally.points_in += points
            out.points += points_out
        return i

    def _data_vector(self, frames: list[bytes], start: int, stop: int) -> int:
        """Hand a run of consecutive point frames to ``handler.points`` in one call.

        Stops at the next management frame (so a snapshot sees every point before
        it), at a non-point data frame (a protocol error for a stream handler,
        raised by ``_batch_edge``) or after ``MAX_POINTS_CALL`` points.
        """
        handler = self._handler
        assert handler is not None
        parse_point = _parse_point
        run: list[pb.Point] = []
        i = start
        limit = min(stop, start + MAX_POINTS_CALL)
        try:
            while i < limit:
                frame = frames[i]
                size = len(frame)
                # the canonical small-point frame, recognised as _data_sync does it inline
                if (
                    size > 3
                    and frame[0] == 0x8A
                    and frame[1] == 1
                    and frame[2] < 0x80
                    and frame[2] + 3 == size
                ):
                    run.append(parse_point(frame[3:]))
                elif not frame or frame[0] < _DATA_TAG:
                    break
                else:
                    kind, msg = _decode_request(frame)
                    if kind != wire.POINT:
                        if not run:
                            self._batch_edge(handler, kind, msg)  # raises for a stream handler
                        break
                    run.append(msg)  # type: ignore[arg-type]
                i += 1
        except (ProtocolError, DecodeError) as exc:
            raise protocol_fatal(exc) from None
        self.tally.points_in += len(run)
        dropped_before = self.tally.dropped
        try:
            self.out.add(handler.points(run))
        except OutputTypeError as exc:
            lost = self._policy is ErrorPolicy.DROP
            self._bad_output(exc, "points", run[0] if run else None)
            if lost:  # the whole run's output is gone, minus what drop() already counted
                self._count_lost_run(run, dropped_before)
        except OutputError as exc:
            raise Fatal(f"{self._function}: invalid handler output: {exc}") from None
        except (ProtocolError, Fatal):
            raise
        except HANDLER_FAILURES as exc:
            self._failed_run(exc, run, dropped_before)
        finally:
            self.progress += i - start
        self._tick()
        return i

    def _failed_run(self, exc: BaseException, run: list[pb.Point], dropped_before: int) -> None:
        """``points()`` raised: the error policy applies to the run as a whole."""
        lost = isinstance(exc, PointError) or (
            self._policy is ErrorPolicy.DROP
            and isinstance(exc, Exception)
            and not isinstance(exc, TaskError)
        )
        self._handler_exception(exc, wire.POINT, run[0] if run else None)
        if lost:
            self._count_lost_run(run, dropped_before)

    def _count_lost_run(self, run: list[pb.Point], dropped_before: int) -> None:
        """Count every point of a lost run exactly once: the handler may have reported
        some with ``context.drop`` already, and the policy counted one."""
        already = self.tally.dropped - dropped_before
        self.tally.dropped += max(len(run) - already, 0)

    def _progressed(self) -> None:
        """``Context.progressed``: a step of a long call (one integer store)."""
        self.progress += 1

    def _drop_point(self, point: pb.Point, error: Exception) -> None:
        """``Context.drop``: one point a ``points()`` call could not handle."""
        self.tally.dropped += 1
        self._drop_log(logging.INFO, "dropped point (%s): %s", self._context(point), error)

    async def _data_async(self, frames: list[bytes], start: int, stop: int) -> int:
        """The same as :meth:`_data_sync` for coroutine callbacks (one frame at a time)."""
        handler = self._handler
        assert handler is not None
        i = start
        while i < stop and not self.stopping:
            frame = frames[i]
            if not frame or frame[0] < _DATA_TAG:
                break
            i += 1
            self.progress += 1
            self._tick()
            try:
                kind, msg = _decode_request(frame)
            except ProtocolError as exc:
                raise protocol_fatal(exc) from None
            try:
                if kind == wire.POINT:
                    if self._wants_batch and not self._in_batch:
                        raise ProtocolError("point outside a batch for a batch handler")
                    self.tally.points_in += 1
                    if self._skip_batch:
                        self.tally.dropped += 1  # its batch's begin_batch failed
                        continue
                    result: Any = handler.point(msg)  # type: ignore[arg-type]
                else:
                    result = self._batch_edge(handler, kind, msg)
                if hasattr(result, "__await__"):
                    result = await result
                self.out.add(result)
            except ProtocolError as exc:
                raise protocol_fatal(exc) from None
            except OutputTypeError as exc:
                self._bad_output(exc, _CALLBACKS.get(kind, "the handler"), msg)
            except OutputError as exc:
                raise Fatal(f"{self._function}: invalid handler output: {exc}") from None
            except Fatal:
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
            self.tally.batches_in += 1
            return handler.begin_batch(msg)  # type: ignore[arg-type]
        if kind == wire.END:
            if not self._in_batch:
                raise ProtocolError("EndBatch without BeginBatch")
            self._in_batch = False
            if self._skip_batch:  # begin_batch failed: the batch was dropped, point by point
                self._skip_batch = False
                return None
            return handler.end_batch(msg)  # type: ignore[arg-type]
        raise ProtocolError(f"unexpected {wire.KIND_NAMES.get(kind, kind)} request among data")

    def _handler_exception(self, exc: BaseException, kind: int, msg: object) -> None:
        """Apply the error policy; raises ``Fatal`` to end the connection.

        May run in a worker thread: it counts into the connection's tally and
        logs; ``last_error`` is a single attribute store.
        """
        what = wire.KIND_NAMES.get(kind, "data")
        context = self._context(msg)
        if isinstance(exc, PointError):
            self.tally.dropped += 1
            self._drop_log(logging.INFO, "dropped %s (%s): %s", what, context, exc)
            return
        self.tally.handler_errors += 1
        if isinstance(exc, TaskError):
            self.log.error("handler stopped the task on %s (%s): %s", what, context, exc)
            raise Fatal(str(exc), logged=True)
        text = f"{type(exc).__name__}: {exc}"
        if self._policy is ErrorPolicy.DROP and isinstance(exc, Exception):
            if kind == wire.END:
                # the batch will never be completed: its held output must not block the next
                self.out.discard_open_batch()
            elif kind == wire.BEGIN:
                # the handler has no batch open: its points and End would only fail or
                # frame output wrongly, so the rest of this batch is dropped, and counted
                self.out.discard_open_batch()
                self._skip_batch = True
            self.tally.dropped += 1
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
        self.log.error("handler failed on %s (%s): %s", what, context, text, exc_info=exc)
        raise Fatal(f"{self._function}: {text}", logged=True)

    def _context(self, msg: object) -> str:
        """Where a failure happened, as every log line about one names it."""
        group = getattr(msg, "group", "")
        return f"task={self._task_id or '?'} node={self._node_id or '?'} group={group!r}"

    def _bad_output(self, exc: OutputTypeError, callback: str, msg: object) -> None:
        """Output that is not a message: dropped and counted under ``drop``, else fatal.

        Nothing of it was queued (``OutputBuffer.add`` checks everything first), so
        dropping it cannot break the framing of what is sent.
        """
        context = self._context(msg)
        text = f"{callback}() {exc}"
        self.tally.handler_errors += 1
        if self._policy is ErrorPolicy.DROP:
            self.tally.dropped += 1
            self._stats.last_error = text
            self._stats.last_error_time = time.time()
            self._drop_log(logging.ERROR, "invalid output (%s), dropped: %s", context, text)
            return
        self.log.error("invalid output (%s): %s", context, text)
        raise Fatal(f"{self._function}: invalid handler output: {text}", logged=True)

    async def call_for_output(self, fn: Callable[[], Any]) -> None:
        """Run a callback whose result is output, honouring async/threaded and the policy."""
        try:
            self.out.add(await self._off_loop(self._call(fn)))
        except OutputTypeError as exc:
            self._bad_output(exc, getattr(fn, "__name__", "the handler"), None)
        except OutputError as exc:
            raise Fatal(f"{self._function}: invalid handler output: {exc}") from None
        except Fatal:
            raise
        except HANDLER_FAILURES as exc:
            self._handler_exception(exc, 0, None)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run handler code in a worker thread of this function's own pool.

        A separate pool per function means a function whose handler hangs cannot
        starve another function's Init. Cancellation abandons the thread (Python
        cannot stop it); ``_busy`` stays set until it really returns, so ``close``
        is never called on a handler still running.
        """

        def marked() -> Any:
            self._busy.set()
            self.thread_id = ident = threading.get_ident()
            BUSY_THREADS[ident] = self._function
            try:
                return fn(*args)
            finally:
                BUSY_THREADS.pop(ident, None)
                self._busy.clear()

        return await anyio.to_thread.run_sync(
            marked, abandon_on_cancel=True, limiter=self._source.thread_limiter
        )

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a callback where the runner runs now (the handler's thread or loop).

        For plain handlers this never suspends, which is what lets :func:`_drive`
        run the management code synchronously in the worker thread.
        """
        result = fn(*args)
        if hasattr(result, "__await__"):
            if self._handler_loop is None:
                raise TypeError(f"{getattr(fn, '__name__', fn)}() returned an awaitable")
            result = await result
        return result

    async def _off_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run runner code that calls the handler (from the loop thread) where handler
        code runs: the connection's own loop for coroutine handlers, else a thread."""
        self.busy = True
        try:
            if self._handler_loop is not None:
                return await self._handler_loop.run(coro)
            return await self._in_thread(_drive, coro)
        finally:
            self.busy = False
            if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                coro.close()  # cancelled before a thread took it: never ran

    # ------------------------------------------------------------ management

    async def close_quietly(self) -> None:
        """Give the handler its ``close`` after an abnormal end; output is discarded."""
        self.stopping = True  # an abandoned worker thread stops at its next frame
        handler, self._handler = self._handler, None
        try:
            if handler is None:
                return
            if self._busy.is_set():
                self.log.warning("handler still busy in a worker thread: close() not called")
                return
            with anyio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self._off_loop(self._call(handler.close))
                except HANDLER_FAILURES:
                    self.log.exception("handler close failed")
        finally:
            self.stop_handler_loop()  # also when Init failed: the loop thread must end

    def stop_handler_loop(self) -> None:
        """End this connection's coroutine-handler thread, if it has one."""
        if self._handler_loop is not None:
            self._handler_loop.stop()

    def merge_tally(self) -> None:
        """Add what worker threads counted to the shared stats (on the loop thread)."""
        self.tally.merge_into(self._stats)

    # ------------------------------------------------------------ management

    async def _manage(self, frame: bytes) -> None:
        try:
            kind, msg = _decode_request(frame)
        except ProtocolError as exc:
            raise protocol_fatal(exc) from None
        if kind == wire.INIT:
            await self._init(msg)  # type: ignore[arg-type]
        elif kind == wire.SNAPSHOT:
            await self._snapshot()
        elif kind == wire.RESTORE:
            await self._restore(msg)  # type: ignore[arg-type]
        elif kind in (wire.POINT, wire.BEGIN, wire.END):
            raise Fatal(f"udfd: protocol error: {wire.KIND_NAMES[kind]} before a successful Init")
        elif kind == wire.INFO:  # sent before any Info was known, or oddly encoded
            assert self._spec is not None
            self.out.frames.append(wire.info_frame(self._spec.info))
        elif kind == wire.KEEPALIVE:
            self.out.frames.append(wire.keepalive_frame(msg.time))  # type: ignore[attr-defined]

    async def _init(self, request: pb.InitRequest) -> None:
        self._task_id, self._node_id = request.taskID, request.nodeID
        self.log = logging.LoggerAdapter(
            log, {"function": self._function, "task": self._task_id, "node": self._node_id}
        )
        self._drop_log = _RateLimitedLog(self.log)
        answer = self.out.frames.append
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
            self.log.warning("Init rejected: %s", exc)
            answer(wire.init_frame(False, f"{self._function}: {exc}"))
            return
        context = Context(
            self._function,
            self._task_id,
            self._node_id,
            self.log,
            self._request_flush,
            self._wait_writable,
            None if self.out.provides_batch else self.out.add_stream_frame,
            drop=self._drop_point,
            shared=SharedView(PROCESS_RESOURCES, self.tally.count_load, self.tally.count_hit),
            progressed=self._progressed,
            config_options=MappingProxyType(self._defaults),
        )
        try:
            handler = await self._call(spec.cls, options, context)
            await self._call(handler.init)
        except InitFailed as exc:
            self.log.warning("handler refused Init: %s", exc)
            answer(wire.init_frame(False, str(exc)))
            return
        except HANDLER_FAILURES as exc:
            self.log.error("handler init failed: %s", exc, exc_info=exc)
            answer(
                wire.init_frame(
                    False, f"{self._function}: init failed: {type(exc).__name__}: {exc}"
                )
            )
            return
        self._handler = handler
        self._apply_bounds(handler)
        answer(wire.init_frame(True))
        if self.on_init is not None:
            await self.on_init(self._task_id, self._node_id)

    def _apply_bounds(self, handler: Handler[Any]) -> None:
        """Bound what a handler keeps per connection: groups of state, points of a batch."""
        for state in handler._group_states().values():
            state.limit = self._limits.max_groups
        if isinstance(handler, BatchHandler):
            handler.max_batch_points = self._limits.max_batch_points

    async def _snapshot(self) -> None:
        handler = self._handler
        if handler is None:
            self.out.frames.append(wire.snapshot_frame(b""))
            return
        try:
            data = await self._call(handler.snapshot)
            if isinstance(data, str):
                data = data.encode()
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"snapshot returned {type(data).__name__}, not bytes")
        except HANDLER_FAILURES as exc:
            # Never answer with an empty snapshot: Kapacitor would store it over the good
            # state it has. An ErrorResponse ends the task instead, and Kapacitor stops
            # waiting for the answer when it gets one. Whatever the error policy: dropping
            # a snapshot is losing state, not a point.
            self.tally.handler_errors += 1
            text = f"{type(exc).__name__}: {exc}"
            self.log.error(
                "handler failed in snapshot(); ending the connection so that Kapacitor keeps "
                "its last good snapshot: %s",
                text,
                exc_info=exc,
            )
            raise Fatal(f"{self._function}: snapshot failed: {text}", logged=True) from None
        self.out.frames.append(wire.snapshot_frame(bytes(data)))

    async def _restore(self, request: pb.RestoreRequest) -> None:
        handler = self._handler
        answer = self.out.frames.append
        if handler is None:
            answer(wire.restore_frame(False, "udfd: Restore before a successful Init"))
            return
        try:
            await self._call(handler.restore, request.snapshot)
        except RestoreFailed as exc:
            self.log.warning("handler refused Restore: %s", exc)
            answer(wire.restore_frame(False, str(exc)))
            return
        except HANDLER_FAILURES as exc:
            self.log.warning("restore failed: %s", exc)
            answer(wire.restore_frame(False, f"{self._function}: restore failed: {exc}"))
            return
        answer(wire.restore_frame(True))
