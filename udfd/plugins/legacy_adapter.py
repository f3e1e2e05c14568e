"""The runtime half of legacy support: what serves one Kapacitor connection.

:func:`udfd.plugins.legacy.legacy_handler` (the load-time half) builds a subclass of
:class:`LegacyAdapter` for each legacy handler class; this module holds what
that subclass does once Kapacitor connects, kept apart because it runs on every
callback while the loader runs once per handler. It needs nothing from the
loader, so the import goes one way only (``udfd.plugins.legacy`` re-exports the names
here; import them from there).

* One legacy instance per Kapacitor connection, created at Init with an
  adapter agent. The agent buffers what ``write_response`` receives; after each
  callback the adapter returns the buffered points and batch edges as the
  callback's output, so they reach the connection's single writer in order and
  are sent at once. (The official agent only flushes when asked, or at the next
  keepalive; udfd flushes regardless of the ``flush`` flag.)
* The path of a point costs what the handler's own code costs plus one
  serialization: a point ``Response`` written from the callback's own thread
  is serialized right there (which is also the snapshot the legacy code's
  reuse of its Response requires) and appended, without a lock, as the very
  frame the wire needs (:class:`udfd.engine.output.Encoded`). Writes from the
  handler's other threads take a lock, ask the connection for a ``flush()``,
  and block while their output piles up.
* Callbacks run off the I/O thread, a whole chunk of points per hop (as all
  plain handlers do): legacy code is synchronous, and keepalives must keep
  flowing while it works.
* An ``ErrorResponse`` written by the handler ends that connection with its
  message, after the output written before it; an exception does the same, as
  under the official agent, but only that connection is affected. At the end
  of input, where output and the error cannot both be delivered, the output
  is (see :meth:`LegacyAdapter.close`).

Common mistakes that the official agent let through, or that Python 3 turned
into errors nobody noticed at migration time, are tolerated with a warning in
the log (each kind once per handler class): a snapshot set or returned as
``str``; ``info()`` returning nothing; ``init``/``restore``/``snapshot`` returning
``None``; a bare ``InitResponse``/... returned instead of a ``Response``;
management responses written through ``write_response`` (dropped, never
forwarded: Kapacitor must never see a response it did not ask for).
``info()`` runs at load time, in :func:`udfd.plugins.legacy.legacy_info`, but its
result goes through the same :func:`management_result` as the others.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, cast

from google.protobuf.message import Message

from udfd.engine.output import Encoded
from udfd.errors import InitFailed, RestoreFailed, TaskError, UdfdError
from udfd.handler import Context, Handler, Output
from udfd.plugins.compat import kapacitor_agent as stand_in_agent
from udfd.plugins.compat import kapacitor_udf_pb2 as stand_in_pb2
from udfd.protocol import wire
from udfd.protocol.framing import encode_frame
from udfd.protocol.proto import udf_pb2 as pb

_Response = pb.Response
_encode_frame = encode_frame
#: a serialized Response holding a point starts with its field tag (17, a oneof)
_POINT_TAG = b"\x8a\x01"
_get_ident = threading.get_ident
#: what the buffer holds besides errors: point frames, and batch edges as messages
_Item = bytes | pb.BeginBatch | pb.EndBatch
#: messages a legacy handler's own thread may have waiting before write_response blocks
BUFFER_LIMIT = 1024
_DATA_KINDS = frozenset({"point", "begin", "end"})
#: management kind -> the message a legacy callback should have put in its Response
_RESULT_TYPES: dict[str, type[Message]] = {
    "info": pb.InfoResponse,
    "init": pb.InitResponse,
    "snapshot": pb.SnapshotResponse,
    "restore": pb.RestoreResponse,
}


class LegacyHandlerError(TaskError):
    """The legacy handler wrote an ``ErrorResponse``; its connection ends with that message."""


class _ErrorMark:
    """An ``ErrorResponse`` the handler wrote, kept in sequence with its data output."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class ReportedError(Exception):
    """A management callback returned a Response carrying an ``ErrorResponse``.

    Raised by :func:`management_result`, whose callers (the adapter, and the
    loader for ``info()``) each turn it into their own kind of failure.
    """


# ------------------------------------------------------------------ message conversion


def _encoded(items: list[_Item | _ErrorMark]) -> Output:
    """Buffered output (the caller cut it before any error) as a callback's result."""
    return cast("Output", Encoded(cast("list[_Item]", items)))


def _is_message(obj: object, name: str) -> bool:
    """True for a protobuf message of that name from any generated module (ours or official)."""
    return isinstance(obj, Message) and obj.DESCRIPTOR.name == name


def _as_ours(obj: Message, cls: type[Message]) -> Message:
    """The same message as udfd's class: official-package messages cross by bytes."""
    if type(obj) is cls:
        return obj
    return cls.FromString(obj.SerializeToString())


def _as_response(obj: object) -> tuple[pb.Response, bool, list[str]] | None:
    """``(response, converted, notes)`` for any kind of Response, else None.

    ``converted`` tells that ``response`` is a fresh copy (so nothing the legacy
    code does later can change it); ``notes`` are the stand-in's coercions.
    """
    notes = stand_in_pb2.notes(obj)
    inner = stand_in_pb2.unwrap(obj)
    if type(inner) is pb.Response:
        return inner, False, notes
    if _is_message(inner, "Response"):
        return cast("pb.Response", _as_ours(inner, pb.Response)), True, notes
    return None


def management_result(result: object, kind: str, where: str) -> tuple[Any, list[str]]:
    """The ``kind`` message (udfd's class) inside what a management callback returned.

    Returns ``(None, notes)`` for ``None`` or an empty Response; raises
    ``ReportedError`` for a Response carrying an error and ``TypeError`` for
    anything that is not a Response of the expected kind.
    """
    if result is None:
        return None, []
    found = _as_response(result)
    if found is not None:
        response, _, notes = found
        which = response.WhichOneof("message")
        if which == kind:
            return getattr(response, kind), notes
        if which == "error":
            raise ReportedError(response.error.error or f"{where} reported an error")
        if which is None:
            return None, [*notes, f"{where} returned an empty Response"]
        raise TypeError(f"{where} returned a Response carrying {which!r}, expected {kind!r}")
    expected = _RESULT_TYPES[kind]
    inner = stand_in_pb2.unwrap(result)
    if _is_message(inner, expected.DESCRIPTOR.name):
        note = f"{where} returned a bare {expected.DESCRIPTOR.name} instead of a Response"
        return _as_ours(inner, expected), [*stand_in_pb2.notes(result), note]
    raise TypeError(
        f"{where} returned {type(result).__name__}; expected a udf_pb2.Response with {kind!r} set"
    )


# ------------------------------------------------------------------ the agent


class UdfdAgent(stand_in_agent.Agent):
    """The agent udfd gives each legacy handler: ``write_response`` feeds its connection."""

    def __init__(self, adapter: LegacyAdapter) -> None:  # no super(): the stand-in refuses to start
        self.handler: Any = None
        self._adapter = adapter
        # the adapter's own method, bound here: one Python call less on every point
        self.write_response = adapter._write  # type: ignore[method-assign]

    def write_response(self, response: Any, flush: bool = False) -> None:
        """Queue ``response`` for the connection; thread-safe; always sent promptly."""
        self._adapter._write(response, flush)

    def start(self) -> None:
        """udfd runs the handler; nothing to start."""

    def wait(self) -> None:
        """udfd runs the handler; nothing to wait for."""


# ------------------------------------------------------------------ the adapter


class LegacyAdapter(Handler[Any]):
    """Base of the classes :func:`legacy_handler` builds; one instance per connection."""

    threaded: ClassVar[bool] = True
    raw_options: ClassVar[bool] = True
    legacy_class: ClassVar[type[Any]]
    #: official-package classes to hand the legacy code (empty: it uses udfd's own)
    legacy_types: ClassVar[dict[str, type[Message]]] = {}
    has_snapshot: ClassVar[bool] = True
    has_restore: ClassVar[bool] = True
    #: tolerated mistakes already logged for this class (each is logged once)
    _warned: ClassVar[set[str]]

    def __init__(self, options: Any, context: Context | None = None) -> None:
        super().__init__(options, context)
        self.agent = UdfdAgent(self)
        self.legacy: Any = None
        self._lock = threading.Lock()
        #: signalled when the connection takes buffered output (shares ``_lock``)
        self._room = threading.Condition(self._lock)
        #: what write_response delivered, in order: point frames, batch edges, errors.
        #: The callback's own thread appends without the lock (it is also the only
        #: thread that replaces the list); other threads append under it.
        self._buffer: list[_Item | _ErrorMark] = []
        #: _ErrorMarks in the buffer (changed under the lock)
        self._marks = 0
        #: threads blocked in _wait_for_room (changed under the lock)
        self._waiters = 0
        #: the thread running a callback now (0 between callbacks)
        self._callback_thread = 0
        self._closed = False
        #: the connection's own queue for stream points (None: return them instead);
        #: used only inside point(): output of init() must follow the InitResponse
        self._emit = self.context.emit_point_frame
        self._in_point = False

    # ---- what write_response feeds

    def _write(self, response: Any, flush: bool = False) -> None:
        """``write_response``: ``flush`` is accepted and moot (output always goes out)."""
        if type(response) is _Response and _get_ident() == self._callback_thread:
            body = response.SerializeToString()
            if body[:2] == _POINT_TAG:  # the hot path: a point, from the callback itself
                frame = _encode_frame(body)
                if self._closed:
                    self._dropped_after_close()
                elif self._in_point and self._emit is not None and not self._buffer:
                    self._emit(frame)  # straight into the connection's output, in order
                else:
                    self._buffer.append(frame)  # behind what other threads wrote
                return
        found = _as_response(response)
        if found is None:
            raise TypeError(
                f"write_response() expects a udf_pb2.Response, not {type(response).__name__} "
                "(wrap a point as response.point.CopyFrom(point))"
            )
        message, fresh, _ = found
        which = message.WhichOneof("message")
        item: Any
        if which == "point":
            item = wire.point_frame(message.point)  # serialized now: later changes are not seen
        elif which in _DATA_KINDS:
            item = getattr(message, which)
            if not fresh:  # the legacy code may reuse and change its Response afterwards
                copy = type(item)()
                copy.CopyFrom(item)
                item = copy
        elif which == "error":
            item = _ErrorMark(message.error.error or "the handler wrote an empty ErrorResponse")
        else:
            self._warn_once(
                f"unsolicited-{which}",
                "write_response() got a %s response, which Kapacitor did not ask for; "
                "dropped (return management responses from the callback instead)",
                which or "empty",
            )
            return
        own = _get_ident() == self._callback_thread
        with self._lock:
            if self._closed:
                self._dropped_after_close()
                return
            self._buffer.append(item)
            if type(item) is _ErrorMark:
                self._marks += 1
        if not own:  # the callback's own output is taken when it returns
            self.context.request_flush()
            self._wait_for_room()

    def _dropped_after_close(self) -> None:
        self._warn_once("after-close", "output written after the connection ended dropped")

    def _wait_for_room(self) -> None:
        """Block the handler's own thread while its output piles up, as the official
        agent's ``write_response`` blocks on a full socket: first while the buffer
        waits for the connection to take it, then while the writer is full."""
        with self._room:
            self._waiters += 1
            try:
                while len(self._buffer) >= BUFFER_LIMIT and not self._closed:
                    self._room.wait(0.5)
            finally:
                self._waiters -= 1
        self.context.wait_writable()

    def _drain(self) -> Output:
        """Return the buffered output up to the first reported error; raise that error
        when nothing precedes it.

        So a handler that writes points and then an ``ErrorResponse`` gets its
        points out first (a callback cannot both return output and raise), and
        the error is raised by the next call into the adapter, a flush requested
        for it. The error is a :class:`TaskError`, which no error policy drops:
        the connection ends there, and what was written after it is never sent.
        """
        with self._lock:
            buffer = self._buffer
            if not buffer:
                return None
            if self._waiters:
                self._room.notify_all()
            if not self._marks:  # the common case: hand the whole list over
                self._buffer = []
                return _encoded(buffer)
            first = buffer[0]
            if isinstance(first, _ErrorMark):
                del buffer[0]
                self._marks -= 1
            else:
                cut = next(
                    (i for i, m in enumerate(buffer) if isinstance(m, _ErrorMark)), len(buffer)
                )
                out = _encoded(buffer[:cut])
                del buffer[:cut]
            more = bool(buffer)
        if more:
            self.context.request_flush()
        if isinstance(first, _ErrorMark):
            raise LegacyHandlerError(first.error)
        return out

    def _take_error(self) -> str | None:
        """Remove the first error reported so far (management callbacks fail with it)."""
        with self._lock:
            for i, item in enumerate(self._buffer):
                if isinstance(item, _ErrorMark):
                    del self._buffer[i]
                    self._marks -= 1
                    return item.error
        return None

    def _wake_if_buffered(self) -> None:
        """Output written during a management callback goes out with the next flush."""
        with self._lock:
            pending = bool(self._buffer)
        if pending:
            self.context.request_flush()

    def _call_legacy(self, name: str, *args: Any) -> Any:
        self._callback_thread = _get_ident()
        try:
            return getattr(self.legacy, name)(*args)
        finally:
            self._callback_thread = 0

    def _to_legacy(self, message: Message) -> Any:
        """The message as the legacy code's own udf_pb2 class (identity under the shim)."""
        target = self.legacy_types.get(type(message).__name__)
        return message if target is None else target.FromString(message.SerializeToString())

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.log.warning("legacy handler %s: " + msg, self.legacy_class.__qualname__, *args)

    def _warn_notes(self, notes: list[str]) -> None:
        for note in notes:
            self._warn_once(note, "%s", note)

    def _ignored(self, result: object, callback: str) -> None:
        if result is not None:
            self._warn_once(
                f"returned-{callback}",
                "%s() returned %s, which is ignored (as by the official agent); "
                "send output with self._agent.write_response()",
                callback,
                type(result).__name__,
            )

    # ---- udfd callbacks

    def _confirm(self, kind: str, request: Message, failure: type[UdfdError], refused: str) -> None:
        """Call the legacy ``init``/``restore``, whose Response says success or refusal.

        Raises ``failure`` with exactly the handler's message when it refused, or
        wrote or returned an ``ErrorResponse``; ``refused`` describes a refusal
        without a message.
        """
        where = f"{self.legacy_class.__qualname__}.{kind}()"
        try:
            result = self._call_legacy(kind, self._to_legacy(request))
            response, notes = management_result(result, kind, where)
        except ReportedError as exc:
            raise failure(str(exc)) from None
        error = self._take_error()
        if error is not None:
            raise failure(error)
        self._warn_notes(notes)
        if response is None:
            self._warn_once(
                f"{kind}-none",
                "%s() returned no %s; treated as success",
                kind,
                _RESULT_TYPES[kind].DESCRIPTOR.name,
            )
        elif not response.success:
            raise failure(response.error or f"{where} {refused} (no error given)")
        self._wake_if_buffered()

    def init(self) -> None:
        legacy = self.legacy_class(self.agent)
        self.agent.handler = legacy
        self.legacy = legacy
        self._legacy_point = legacy.point
        #: the legacy code uses udfd's own message classes: nothing to convert
        self._native = not self.legacy_types
        self._confirm("init", self.options, InitFailed, "refused the options")

    def point(self, point: pb.Point) -> Output:
        # the hot path, inlined: _call_legacy, and _to_legacy when nothing converts
        self._callback_thread = _get_ident()
        self._in_point = True
        try:
            result = self._legacy_point(point if self._native else self._to_legacy(point))
        finally:
            self._callback_thread = 0
            self._in_point = False
        if result is not None:
            self._ignored(result, "point")
        if self._buffer:
            return self._drain()
        return None

    def begin_batch(self, begin: pb.BeginBatch) -> Output:
        self._ignored(self._call_legacy("begin_batch", self._to_legacy(begin)), "begin_batch")
        return self._drain()

    def end_batch(self, end: pb.EndBatch) -> Output:
        self._ignored(self._call_legacy("end_batch", self._to_legacy(end)), "end_batch")
        return self._drain()

    def flush(self) -> Output:
        return self._drain()

    def close(self) -> Output:
        """Return what the handler wrote that is still buffered when Kapacitor's input ends.

        ``close`` is the last call: the engine sends what it returns, and if it
        raises, nothing it would have returned. So for output followed by an
        ``ErrorResponse`` (written from a thread just before the end) one of the
        two must give way, and the output wins: the input has ended, meaning
        Kapacitor is stopping the task anyway, so the error could not stop
        anything, while the points are results Kapacitor still reads. The
        output before the error is returned and the error is logged (at ERROR,
        with its message). What follows the error is dropped, as it would be
        mid-stream, where the error ends the connection. An error with no
        output before it loses nothing by being raised, so it is raised: it
        reaches Kapacitor and the function's error counters like any other.
        """
        with self._lock:
            self._closed = True
            self._room.notify_all()
            buffer, self._buffer = self._buffer, []
            self._marks = 0
        cut = next((i for i, m in enumerate(buffer) if isinstance(m, _ErrorMark)), len(buffer))
        out = buffer[:cut]
        if cut == len(buffer):
            return _encoded(out) if out else None
        error = cast("_ErrorMark", buffer[cut]).error
        if not out:
            raise LegacyHandlerError(error)
        dropped = len(buffer) - cut - 1
        self.log.error(
            "legacy handler %s wrote an ErrorResponse as its input ended; the %d message(s) "
            "written before it are sent, the error is only logged%s: %s",
            self.legacy_class.__qualname__,
            len(out),
            f" and the {dropped} written after it dropped" if dropped else "",
            error,
        )
        return _encoded(out)

    def snapshot(self) -> bytes:
        if not self.has_snapshot:
            return b""  # no snapshot(): nothing to keep (the official agent would fail)
        where = f"{self.legacy_class.__qualname__}.snapshot()"
        with stand_in_pb2.tolerant_snapshots():  # a str snapshot is encoded, with a warning
            result = self._call_legacy("snapshot")
        error = self._take_error()
        if error is not None:
            raise LegacyHandlerError(error)
        if isinstance(result, str):
            self._warn_once("snapshot-str", "snapshot() returned a str; encoded as UTF-8")
            data = result.encode("utf-8")
        elif isinstance(result, (bytes, bytearray)):
            self._warn_once("snapshot-bytes", "snapshot() returned bytes, not a Response; used")
            data = bytes(result)
        else:
            try:
                response, notes = management_result(result, "snapshot", where)
            except ReportedError as exc:
                raise LegacyHandlerError(str(exc)) from None
            self._warn_notes(notes)
            if response is None:
                self._warn_once(
                    "snapshot-none", "snapshot() returned no snapshot; sent an empty one"
                )
                data = b""
            else:
                data = bytes(response.snapshot)
        self._wake_if_buffered()
        return data

    def restore(self, data: bytes) -> None:
        if not self.has_restore:
            self._warn_once("no-restore", "has no restore(); the snapshot is ignored")
            return
        self._confirm("restore", pb.RestoreRequest(snapshot=data), RestoreFailed, "failed")


__all__ = [
    "LegacyAdapter",
    "LegacyHandlerError",
    "UdfdAgent",
]
