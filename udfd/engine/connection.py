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
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from udfd.engine.limits import Limits
from udfd.engine.rawsocket import race_free
from udfd.engine.runner import Fatal, Runner, protocol_fatal
from udfd.engine.source import FixedSource, HandlerSource
from udfd.engine.stats import Stats
from udfd.engine.watchdog import Watchdog
from udfd.engine.writer import FrameWriter
from udfd.errors import FrameError, ProtocolError, describe_os_error
from udfd.handler import ErrorPolicy, HandlerSpec
from udfd.protocol import wire
from udfd.protocol.framing import FrameDecoder

__all__ = ["Connection", "EndedBy"]

#: who ended a connection: the peer (Kapacitor stopped the task, or went away), an
#: error udfd sent (Kapacitor stops the task with it), or udfd itself (shutdown)
EndedBy = Literal["peer", "error", "udfd"]


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
        initial: bytes = b"",
    ) -> None:
        """``initial``: bytes already read from the socket (by the supervisor, which held
        the connection while no worker was up); they are handled before the first read."""
        stream = race_free(stream)
        self._stream = stream
        self._initial = initial
        source = FixedSource(source) if isinstance(source, HandlerSpec) else source
        spec = source.spec
        function = function or (spec.name if spec is not None else "")
        self._limits = limits or Limits()
        self._stats = stats if stats is not None else Stats()
        self._writer = FrameWriter(stream, self._limits.write_high_water)
        self._writer.on_urgent_sent = self._stats.keepalive_latency.observe
        #: when the last read returned (the keepalives in it were read then)
        self._read_at = time.monotonic()
        self._read_scope = anyio.CancelScope()
        self._runner = Runner(
            source,
            function=function,
            defaults=defaults or {},
            error_policy=error_policy,
            limits=self._limits,
            stats=self._stats,
            request_flush=self.request_flush,
            emit=self._emit,
            wait_writable=self._wait_writable,
        )
        self._handler_scope = anyio.CancelScope()
        self._watch_scope = anyio.CancelScope()
        self._function = function
        self._watchdog = Watchdog(
            self._runner,
            self._writer,
            self._limits,
            self._stats,
            self._handler_stuck,
            self._peer_gone,
        )
        self._early_info = spec.info if spec is not None else source.early_info
        self._info_frame = (
            wire.info_frame(self._early_info) if self._early_info is not None else None
        )
        self._chunks: MemoryObjectSendStream[list[bytes] | ProtocolError] | None = None
        #: set when a read failed (as opposed to a clean end of input)
        self._read_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        #: set by whichever side ends the connection first, and never changed after
        self._ended_by: EndedBy | None = None

    @property
    def stats(self) -> Stats:
        return self._stats

    @property
    def ended_by(self) -> EndedBy:
        """Who ended the connection first; meaningful once ``serve`` has returned."""
        return self._ended_by or "peer"

    def _ended(self, by: EndedBy) -> None:
        if self._ended_by is None:
            self._ended_by = by

    @property
    def task(self) -> tuple[str, str]:
        """Kapacitor's task and node IDs from Init ("" before Init)."""
        return self._runner.task

    def on_init(self, callback: Callable[[str, str], Awaitable[None]]) -> None:
        """Await ``callback(task_id, node_id)`` after each successful Init."""
        self._runner.on_init = callback

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
                tg.start_soon(self._watch)
                with self._read_scope:
                    await self._read(send)
        except anyio.get_cancelled_exc_class():
            self._ended("udfd")  # the process is stopping or retiring this connection
            raise
        finally:
            self._stats.connections_active -= 1
            self._stats.bytes_out += self._writer.bytes_sent
            self._runner.merge_tally()
            with anyio.CancelScope(shield=True):
                await self._runner.close_quietly()
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
        self._ended("udfd")
        self._read_scope.cancel()
        self._writer.put(wire.error_frame(message))
        self._writer.close()

    async def _read(self, send: MemoryObjectSendStream[list[bytes] | ProtocolError]) -> None:
        decoder = FrameDecoder(self._limits.max_message_size)
        stats = self._stats
        read_size = self._limits.read_size
        receive = self._stream.receive
        writer = self._writer
        initial, self._initial = self._initial, b""
        with send:
            try:
                while True:
                    # inline answers count against the writer's limit too: a peer that
                    # sends requests but never reads must not grow our memory
                    await writer.wait_writable()
                    try:
                        data = initial or await receive(read_size)
                        initial = b""
                        self._read_at = time.monotonic()
                    except anyio.EndOfStream:
                        self._ended("peer")
                        decoder.check_eof()
                        return
                    except (anyio.BrokenResourceError, OSError) as exc:
                        # not an end of input (ECONNRESET, say): the peer is gone, so the
                        # handler gets no close() whose output would go to a dead socket
                        self._read_error = exc
                        self._ended("peer")
                        self._runner.log.warning(
                            "connection lost while reading: %s",
                            describe_os_error(exc),
                        )
                        return
                    stats.bytes_in += len(data)
                    try:
                        chunk = decoder.feed(data)
                    except FrameError as exc:
                        # what arrived intact before the bad bytes is still handled
                        if exc.frames:  # decoder.control describes them too
                            await self._answer_inline(exc.frames, decoder.control, send)
                        raise
                    if decoder.control:
                        await self._answer_inline(chunk, decoder.control, send)
                    elif chunk:
                        await send.send(chunk)  # data only: nothing to answer here
            except ProtocolError as exc:
                stats.protocol_errors += 1
                self._runner.log.warning("protocol error from Kapacitor: %s", exc)
                with contextlib.suppress(anyio.BrokenResourceError):
                    await send.send(exc)
            except anyio.BrokenResourceError:
                # the queue's other end closed: the handler side ended (it failed, and its
                # ErrorResponse is with the writer), so there is nothing left to read for.
                # Socket errors never get here: the receive above handles its own.
                return

    async def _answer_inline(
        self,
        chunk: list[bytes],
        control: list[int],
        send: MemoryObjectSendStream[list[bytes] | ProtocolError],
    ) -> None:
        """Answer Info and keepalives at once (never behind handler work); queue the rest.

        ``control`` lists where the frames that are not data sit in ``chunk`` (the
        decoder found them); only those are looked at. A frame that cannot be
        answered here (an Info before any Info is known, a keepalive that does not
        decode) stays in place, so the runner handles or fails on it in stream
        order. Answers count against the writer's high-water mark frame by frame:
        one read of tiny requests from a peer that never reads must not queue
        thousands of answers. When the writer is full, the frames before the one
        just answered go to the runner and the reader waits.
        """
        rest: list[bytes] = []
        writer = self._writer
        stats = self._stats
        done = 0  # chunk[:done] is in rest or answered
        for i in control:
            frame = chunk[i]
            first = frame[0] if frame else 0
            if first == wire.TAG_KEEPALIVE:
                try:
                    answer = wire.keepalive_frame(wire.keepalive_time(frame))
                except ProtocolError:
                    continue  # stays in place, for the runner
                writer.put_urgent(answer, self._read_at)
                stats.keepalives += 1
            elif first == wire.TAG_INFO and self._info_frame is not None:
                writer.put(self._info_frame)
            else:
                continue
            rest.extend(chunk[done:i])
            done = i + 1
            if writer.full:
                if rest:
                    await send.send(rest)
                    rest = []
                await writer.wait_writable()
        if done == 0:
            rest = chunk  # nothing answered: the chunk goes as it is
        else:
            rest.extend(chunk[done:])
        if rest:
            await send.send(rest)

    async def _run_handler(
        self, receive: MemoryObjectReceiveStream[list[bytes] | ProtocolError]
    ) -> None:
        writer = self._writer
        runner = self._runner
        try:
            with self._handler_scope:
                await self._handle(receive)
        except Fatal as exc:
            if exc.protocol_error:
                self._stats.protocol_errors += 1
            if not exc.logged:
                runner.log.error("ending the connection: %s", exc)
            self._fail(str(exc))
        except Exception as exc:
            # a udfd bug: still tell Kapacitor, and keep it to this connection
            runner.log.exception("internal error")
            self._fail(f"udfd: internal error: {type(exc).__name__}: {exc}")
        finally:
            self._watch_scope.cancel()
            runner.merge_tally()
            writer.close()

    async def _handle(
        self, receive: MemoryObjectReceiveStream[list[bytes] | ProtocolError]
    ) -> None:
        writer = self._writer
        runner = self._runner
        async with receive:
            async for chunk in receive:
                if isinstance(chunk, ProtocolError):
                    raise protocol_fatal(chunk, counted=True)  # the reader counted it
                if chunk:
                    # only now wait for an import still running: Kapacitor's start-up
                    # Info-then-EOF connection must close without waiting for it
                    if not runner.loaded:
                        await self._load()
                    await runner.process_chunk(chunk)
                if runner.flush_requested and runner.handler is not None:
                    runner.flush_requested = False
                    await runner.call_for_output(runner.handler.flush)
                self._send_output()
                await writer.wait_writable()
                if writer.failed is not None:
                    self._read_scope.cancel()
                    return
        if self._read_error is not None:
            return  # not a clean end: close_quietly() gives the handler its close()
        # input ended cleanly: let the handler emit its last output
        handler = runner.take_handler()
        if handler is not None:
            if runner.flush_requested:
                runner.flush_requested = False
                await runner.call_for_output(handler.flush)
            await runner.call_for_output(handler.close)
            runner.out.discard_open_batch()
            self._send_output()
        runner.stop_handler_loop()

    async def _expect_init(self) -> None:
        """End a connection that has not completed Init within ``init_timeout``."""
        deadline = time.monotonic() + self._limits.init_timeout
        while self._runner.handler is None and not self._runner.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                self._stats.idle_closed += 1
                message = (
                    f"udfd: no Init within init_timeout ({self._limits.init_timeout:g}s); "
                    "udfd ended the connection"
                )
                self._runner.log.warning("%s", message.removeprefix("udfd: "))
                self._fail(message)
                return
            await anyio.sleep(min(left, 0.5))

    async def _watch(self) -> None:
        """The watchdog and the Init deadline, for as long as the handler side runs (its
        ``finally`` ends them): a peer that closes before Init must not wait for either."""
        with self._watch_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._expect_init)
                await self._watchdog.run()

    def _handler_stuck(self, callback: str) -> None:
        """The watchdog saw a call stuck past ``handler_timeout``: end this connection.

        The stuck thread's unpublished output stays with it (it may still be
        writing to it); what was published goes out before the ErrorResponse.
        """
        runner = self._runner
        runner.stopping = True
        self._handler_scope.cancel()
        message = (
            f"{self._function}: handler {callback}() did not return within handler_timeout "
            f"({self._limits.handler_timeout:g}s); udfd ended the connection"
        )
        self._fail(message, send_output=False)

    def _emit(self, data: bytes, points: int) -> None:
        """Thread-safe: queue a handler thread's published output on the writer."""
        if threading.get_ident() == self._loop_thread:
            self._deliver(data, points)
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the connection is gone
                self._loop.call_soon_threadsafe(self._deliver, data, points)

    def _deliver(self, data: bytes, points: int) -> None:
        self._writer.put(data)
        self._stats.points_out += points

    def _wait_writable(self) -> None:
        """Block a handler thread while the writer is full (never the loop thread)."""
        if threading.get_ident() == self._loop_thread:
            return
        writable = self._writer.writable
        while not writable.wait(0.25) and not self._runner.stopping:
            pass

    def _peer_gone(self) -> None:
        """Sending failed (the peer closed for good): stop the handler at its next frame."""
        self._ended("peer")
        self._runner.stopping = True
        self._read_scope.cancel()
        self._handler_scope.cancel()

    async def _load(self) -> None:
        self._watchdog.loading = True
        try:
            spec = await self._runner.load()
        finally:
            self._watchdog.loading = False
        if self._early_info is not None and self._early_info != spec.info:
            self._runner.log.warning(
                "the Info served before the handler loaded differs from its declaration; "
                "restart Kapacitor to pick up the new options"
            )
        self._info_frame = wire.info_frame(spec.info)

    def _fail(self, message: str, *, send_output: bool = True) -> None:
        self._ended("error")
        self._stats.last_error = message
        self._stats.last_error_time = time.time()
        if send_output:
            self._send_output()
        self._writer.put(wire.error_frame(message))
        # stop reading (Kapacitor stops the task when it sees the error); the
        # writer still flushes everything queued before its task ends
        self._read_scope.cancel()

    def _send_output(self) -> None:
        out = self._runner.out
        if out.frames:
            self._writer.put(out.take())
        self._stats.points_out += out.points
        out.points = 0

    def request_flush(self) -> None:
        """Thread-safe and never blocking: have the runner call the handler's ``flush`` soon.

        Sets a flag the runner checks after every chunk, and wakes an idle runner
        with an empty chunk when the queue has room (a full queue means the runner
        is busy and will see the flag anyway).
        """
        self._runner.flush_requested = True
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
