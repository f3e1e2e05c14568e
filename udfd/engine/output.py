"""What a handler returns, turned into response frames only if the protocol allows it.

Kapacitor trusts its UDFs: an ``EndBatch`` without ``BeginBatch``, a negative or
huge ``size`` (Kapacitor allocates that capacity) or an empty ``Response``
crashes the whole kapacitord, and it never checks that output matches the
declared ``provides``. This module is where udfd checks instead.

An output batch is held back until its ``EndBatch``: the ``BeginBatch`` then goes
out with the exact point count whatever the handler put there, and a batch that
never ends (a handler failure, end of input) is never half-sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from udfd.errors import OutputError, OutputTypeError
from udfd.protocol import wire
from udfd.protocol.proto import udf_pb2 as pb

_Point = pb.Point
_BeginBatch = pb.BeginBatch
_EndBatch = pb.EndBatch
_MESSAGES = (pb.Point, pb.BeginBatch, pb.EndBatch)
_EXPECTED = "return a Point, a list of messages or None"


def _what(value: object) -> str:
    """``a dict``, ``a Response``...: the type as a sentence names it."""
    if isinstance(value, Mapping):
        return "a dict"
    name = type(value).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


class Encoded(list[bytes | pb.BeginBatch | pb.EndBatch]):
    """Output an adapter has encoded already: each point as its framed ``Response``
    (the bytes ``wire.point_frame`` makes), batch edges as messages.

    The legacy path serializes a handler's ``Response`` once, when the handler
    writes it, which both snapshots it (legacy code may reuse and change it) and
    is the encoding the wire needs; decoding it back into a point to encode it
    again would cost more than the handler itself.
    """

    __slots__ = ()


class OutputBuffer:
    """Validated response frames of one connection, waiting for the writer.

    ``frames`` is public so the engine's hot loop can append stream points to it
    directly; everything else goes through :meth:`add`.
    """

    __slots__ = ("_batch", "_begin", "frames", "points", "provides_batch")

    def __init__(self, provides_batch: bool) -> None:
        self.provides_batch = provides_batch
        self.frames: list[bytes] = []
        #: points emitted since the last :meth:`take`
        self.points = 0
        self._batch: list[bytes] | None = None
        self._begin: pb.BeginBatch | None = None

    def take(self) -> bytes:
        """The queued frames joined, and the queue emptied *in place*: the hot loop
        holds a bound ``frames.append`` across a publish."""
        data = b"".join(self.frames)
        self.frames.clear()
        return data

    def add(self, result: Any) -> None:
        """Queue a callback's result: None, one message, or an iterable of messages.

        A generator is run to its end before anything is queued, so a handler that
        fails halfway through its output leaves nothing half-sent behind.
        """
        if result is None:
            return
        if type(result) is Encoded:
            self._add_encoded(result)
            return
        if isinstance(result, _MESSAGES):
            self._add_one(result)
            return
        if isinstance(result, (str, bytes, pb.Response, pb.Request, Mapping)) or not isinstance(
            result, Iterable
        ):
            raise OutputTypeError(f"returned {_what(result)}; {_EXPECTED}")
        items = result if isinstance(result, (list, tuple)) else list(result)
        for item in items:
            if not isinstance(item, _MESSAGES):
                raise OutputTypeError(
                    f"returned a {type(result).__name__} containing {_what(item)}; {_EXPECTED}"
                )
        for item in items:
            self._add_one(item)

    def add_stream_frame(self, frame: bytes) -> None:
        """Queue one encoded point of a stream-providing handler (adapters' hot path)."""
        self.frames.append(frame)
        self.points += 1

    def _add_encoded(self, items: Encoded) -> None:
        for item in items:
            if type(item) is bytes:
                self._add_point_frame(item)
            else:
                self._add_one(cast("pb.BeginBatch | pb.EndBatch", item))

    def _add_point_frame(self, frame: bytes) -> None:
        """A point's frame into the open batch, or the stream; never loose from a batch handler."""
        if self._batch is not None:
            self._batch.append(frame)
        elif self.provides_batch:
            raise OutputError("point outside BeginBatch/EndBatch from a batch handler")
        else:
            self.frames.append(frame)
            self.points += 1

    def _add_one(self, msg: pb.Point | pb.BeginBatch | pb.EndBatch) -> None:
        if isinstance(msg, _Point):
            self._add_point_frame(wire.point_frame(msg))
        elif not self.provides_batch:
            raise OutputError(
                f"{type(msg).__name__} from a handler that provides a stream (declare "
                "provides = Edge.BATCH to send batches)"
            )
        elif isinstance(msg, _BeginBatch):
            if self._batch is not None:
                raise OutputError("BeginBatch before the previous batch's EndBatch")
            if msg.size < 0:
                raise OutputError(f"BeginBatch with negative size {msg.size}")
            self._begin = msg
            self._batch = []
        else:
            if self._batch is None or self._begin is None:
                raise OutputError("EndBatch without BeginBatch")
            begin = pb.BeginBatch()
            begin.CopyFrom(self._begin)
            begin.size = len(self._batch)  # exact, whatever the handler declared
            self.frames.append(wire.begin_frame(begin))
            self.frames.extend(self._batch)
            self.frames.append(wire.end_frame(msg))
            self.points += len(self._batch)
            self._batch = self._begin = None

    def discard_open_batch(self) -> None:
        """Forget a batch that will never end (its points are not sent)."""
        self._batch = self._begin = None
