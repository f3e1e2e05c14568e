"""Stand-in for ``kapacitor.udf.udf_pb2``: udfd's own message classes under the official names.

Legacy handlers build ``udf_pb2.Response`` messages and read ``udf_pb2.Point``
and friends. Re-exporting udfd's generated classes (wire-identical to the
official ones) means what a legacy handler builds is already what udfd's engine
sends: no conversion per point.

Two names are not the plain classes: ``Response`` and ``SnapshotResponse``.
Python-2-era handlers set the snapshot from a ``str``
(``response.snapshot.snapshot = json.dumps(state)``); on Python 3 the bytes
field rejects that with ``TypeError: expected bytes, str found``, and generated
protobuf classes cannot be subclassed to relax it. A thin proxy around the real
message encodes such a str as UTF-8 and records the coercion, so udfd can log a
warning with the handler's context instead of failing every snapshot (which
would stop the task).

A proxy on every ``Response`` would cost more than the rest of a point's path
(every ``response.point`` and ``CopyFrom`` through Python), and only a snapshot
can need it. So these names are the real classes, except while some thread is
inside :func:`tolerant_snapshots` (the adapter enters it around the handler's
``snapshot()``, about once a minute per task): then they are the tolerant
proxies. A thread that builds a Response meanwhile gets a proxy too, which
works the same, only slower. Either way ``isinstance(x, udf_pb2.Response)``
holds and class attributes (``DESCRIPTOR``, ``FromString``) are the real
class's. A handler that imported the class itself (``from ... import
Response``) keeps the real one and gets no tolerance.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from google.protobuf.message import Message

from udfd.protocol.proto import udf_pb2 as _pb

DESCRIPTOR = _pb.DESCRIPTOR

EdgeType = _pb.EdgeType
ValueType = _pb.ValueType
STREAM = _pb.STREAM
BATCH = _pb.BATCH
BOOL = _pb.BOOL
INT = _pb.INT
DOUBLE = _pb.DOUBLE
STRING = _pb.STRING
DURATION = _pb.DURATION

Request = _pb.Request
InfoRequest = _pb.InfoRequest
InfoResponse = _pb.InfoResponse
OptionInfo = _pb.OptionInfo
InitRequest = _pb.InitRequest
Option = _pb.Option
OptionValue = _pb.OptionValue
InitResponse = _pb.InitResponse
SnapshotRequest = _pb.SnapshotRequest
RestoreRequest = _pb.RestoreRequest
RestoreResponse = _pb.RestoreResponse
KeepaliveRequest = _pb.KeepaliveRequest
KeepaliveResponse = _pb.KeepaliveResponse
ErrorResponse = _pb.ErrorResponse
BeginBatch = _pb.BeginBatch
Point = _pb.Point
EndBatch = _pb.EndBatch

#: What the proxies record when they coerce a str snapshot (read by udfd.legacy_adapter).
SNAPSHOT_STR_NOTE = "snapshot set from a str; encoded as UTF-8 (set bytes, e.g. s.encode())"


class _ProxyMeta(type):
    """Lets the proxy class stand for the real class in ``isinstance`` and class attributes."""

    _wrapped: type[Message]

    def __instancecheck__(cls, instance: Any) -> bool:
        if type.__instancecheck__(cls, instance):
            return True
        wrapped = cls.__dict__.get("_wrapped")
        return wrapped is not None and isinstance(instance, wrapped)

    def __getattr__(cls, name: str) -> Any:
        # DESCRIPTOR, FromString, nested types...; private names would recurse on the base
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(cls._wrapped, name)


class _Proxy(metaclass=_ProxyMeta):
    """A real message plus the list of coercions applied while legacy code filled it."""

    __slots__ = ("_udfd_message", "_udfd_notes")
    _wrapped: ClassVar[type[Message]]
    _udfd_message: Message
    _udfd_notes: list[str]
    #: sub-message fields that must be handed out as tolerant proxies too
    _views: ClassVar[dict[str, type[_Proxy]]] = {}

    def __init__(self, **fields: Any) -> None:
        notes: list[str] = []
        clean = {name: self._coerce(name, value, notes) for name, value in fields.items()}
        object.__setattr__(self, "_udfd_notes", notes)
        object.__setattr__(self, "_udfd_message", type(self)._wrapped(**clean))

    @classmethod
    def _wrap(cls, message: Message, notes: list[str]) -> _Proxy:
        """A proxy over an existing (sub-)message that shares its parent's notes."""
        proxy = object.__new__(cls)
        object.__setattr__(proxy, "_udfd_message", message)
        object.__setattr__(proxy, "_udfd_notes", notes)
        return proxy

    @staticmethod
    def _coerce(name: str, value: Any, notes: list[str]) -> Any:
        if isinstance(value, _Proxy):
            notes.extend(value._udfd_notes)
            return value._udfd_message
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_udfd"):  # a slot not set yet: never recurse
            raise AttributeError(name)
        message = self._udfd_message
        value = getattr(message, name)
        view = self._views.get(name)
        if view is not None:
            return view._wrap(value, self._udfd_notes)
        if callable(value) and not isinstance(value, type):
            return self._method(value)
        return value

    def _method(self, method: Any) -> Any:
        """A bound method of the real message that accepts proxies as arguments."""
        notes = self._udfd_notes

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(self._coerce("", a, notes) for a in args)
            kwargs = {k: self._coerce(k, v, notes) for k, v in kwargs.items()}
            return method(*args, **kwargs)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._udfd_message, name, self._coerce(name, value, self._udfd_notes))

    def __eq__(self, other: object) -> bool:
        return bool(self._udfd_message == unwrap(other))

    __hash__ = None  # type: ignore[assignment]  # messages are mutable, like the real ones

    def __repr__(self) -> str:
        return repr(self._udfd_message)

    def __str__(self) -> str:
        return str(self._udfd_message)

    def __dir__(self) -> list[str]:
        return dir(self._udfd_message)


class TolerantSnapshotResponse(_Proxy):
    """``SnapshotResponse`` whose ``snapshot`` also accepts a str (encoded as UTF-8)."""

    __slots__ = ()
    _wrapped = _pb.SnapshotResponse

    @staticmethod
    def _coerce(name: str, value: Any, notes: list[str]) -> Any:
        if name == "snapshot" and isinstance(value, str):
            notes.append(SNAPSHOT_STR_NOTE)
            return value.encode("utf-8")
        return _Proxy._coerce(name, value, notes)


class TolerantResponse(_Proxy):
    """``Response`` whose ``snapshot`` sub-message tolerates a str snapshot."""

    __slots__ = ()
    _wrapped = _pb.Response
    _views: ClassVar[dict[str, type[_Proxy]]] = {"snapshot": TolerantSnapshotResponse}


Response: Any = _pb.Response
SnapshotResponse: Any = _pb.SnapshotResponse
_swap_lock = threading.Lock()
_inside = 0


@contextlib.contextmanager
def tolerant_snapshots() -> Iterator[None]:
    """While any thread is inside, ``Response``/``SnapshotResponse`` accept a str snapshot."""
    global _inside, Response, SnapshotResponse
    with _swap_lock:
        _inside += 1
        Response, SnapshotResponse = TolerantResponse, TolerantSnapshotResponse
    try:
        yield
    finally:
        with _swap_lock:
            _inside -= 1
            if not _inside:
                Response, SnapshotResponse = _pb.Response, _pb.SnapshotResponse


def unwrap(obj: Any) -> Any:
    """The real message behind a proxy (anything else is returned as it is)."""
    return obj._udfd_message if isinstance(obj, _Proxy) else obj


def notes(obj: Any) -> list[str]:
    """The coercions recorded while ``obj`` was filled (empty for anything but a proxy)."""
    return list(obj._udfd_notes) if isinstance(obj, _Proxy) else []
