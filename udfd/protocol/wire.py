"""Requests and responses on the wire: classify, decode and encode, with no I/O.

Points dominate the traffic, so they get a fast path: a ``Request`` holding only a
point is ``0x8a 0x01 <len> <Point>`` and a ``Response`` holding only a point has
the very same shape (both use field 17). The decoder parses the inner ``Point``
directly and the encoder wraps a serialized ``Point`` by hand, so no wrapper
message is built or copied per point. Anything that does not match the fast path
falls back to parsing the full ``Request``.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.message import DecodeError

from udfd.errors import ProtocolError
from udfd.protocol.framing import _PREFIX_CACHE, encode_frame, encode_varint
from udfd.protocol.proto import udf_pb2 as pb

# Request kinds, in the order of the protocol's oneof.
INFO: Final = 1
INIT: Final = 2
KEEPALIVE: Final = 3
SNAPSHOT: Final = 4
RESTORE: Final = 5
BEGIN: Final = 16
POINT: Final = 17
END: Final = 18

KIND_NAMES: Final = {
    INFO: "info",
    INIT: "init",
    KEEPALIVE: "keepalive",
    SNAPSHOT: "snapshot",
    RESTORE: "restore",
    BEGIN: "begin",
    POINT: "point",
    END: "end",
}
_KIND_BY_NAME: Final = {name: kind for kind, name in KIND_NAMES.items()}

# First byte of a frame -> the kind it announces (length-delimited field tags).
TAG_INFO: Final = 0x0A
TAG_KEEPALIVE: Final = 0x1A
_POINT_TAG: Final = b"\x8a\x01"

#: frame prefix + Response.point tag + length, for point bodies under 128 bytes
#: (the common case; the engine's hot loop uses it inline too)
POINT_HEADERS: Final = tuple(
    _PREFIX_CACHE[n + 3] + _POINT_TAG + _PREFIX_CACHE[n] for n in range(0x80)
)

_parse_point = pb.Point.FromString
_parse_request = pb.Request.FromString
_parse_keepalive = pb.KeepaliveRequest.FromString


def decode_request(frame: bytes) -> tuple[int, object]:
    """Turn one frame from Kapacitor into ``(kind, message)``.

    ``message`` is the inner message (``pb.Point``, ``pb.InitRequest``, ...).
    Raises :class:`ProtocolError` for bytes that are not a ``Request``.
    """
    # Fast path: a point, encoded the canonical way Kapacitor encodes it.
    if len(frame) > 3 and frame[0] == 0x8A and frame[1] == 0x01:
        size = frame[2]
        start = 3
        if size >= 0x80 and len(frame) > 4 and frame[3] < 0x80:
            size = (size & 0x7F) | (frame[3] << 7)
            start = 4
        if (size < 0x80 or start == 4) and start + size == len(frame):
            try:
                return POINT, _parse_point(frame[start:])
            except DecodeError as exc:
                raise ProtocolError(f"undecodable point: {exc}") from None
    try:
        request = _parse_request(frame)
    except DecodeError as exc:
        raise ProtocolError(f"undecodable request ({len(frame)} bytes): {exc}") from None
    which = request.WhichOneof("message")
    if which is None:
        raise ProtocolError(
            f"request of {len(frame)} bytes carries no known message: not a UDF request"
        )
    return _KIND_BY_NAME[which], getattr(request, which)


def keepalive_time(frame: bytes) -> int:
    """The time of a keepalive request frame (first byte already known to be 0x1a)."""
    try:
        request = _parse_request(frame)
    except DecodeError as exc:
        raise ProtocolError(f"undecodable keepalive: {exc}") from None
    return int(request.keepalive.time)


# ---------------------------------------------------------------- encoding


def point_frame(point: pb.Point) -> bytes:
    """A framed ``Response{point}`` from a point, without building the wrapper."""
    body = point.SerializeToString()
    size = len(body)
    if size < 0x80:
        return POINT_HEADERS[size] + body
    if size < 16000:
        return _PREFIX_CACHE[size + 4] + _POINT_TAG + _PREFIX_CACHE[size] + body
    inner = _POINT_TAG + encode_varint(size) + body
    return encode_varint(len(inner)) + inner


def response_frame(response: pb.Response) -> bytes:
    """A framed ``Response``; refuses an empty one (it crashes kapacitord)."""
    if response.WhichOneof("message") is None:
        raise ValueError("refusing to send an empty Response: kapacitord crashes on it")
    return encode_frame(response.SerializeToString())


def keepalive_frame(time: int) -> bytes:
    return response_frame(pb.Response(keepalive=pb.KeepaliveResponse(time=time)))


def error_frame(message: str) -> bytes:
    return response_frame(pb.Response(error=pb.ErrorResponse(error=message)))


def info_frame(info: pb.InfoResponse) -> bytes:
    return response_frame(pb.Response(info=info))


def init_frame(success: bool, error: str = "") -> bytes:
    return response_frame(pb.Response(init=pb.InitResponse(success=success, error=error)))


def restore_frame(success: bool, error: str = "") -> bytes:
    return response_frame(pb.Response(restore=pb.RestoreResponse(success=success, error=error)))


def snapshot_frame(snapshot: bytes) -> bytes:
    return response_frame(pb.Response(snapshot=pb.SnapshotResponse(snapshot=snapshot)))


def begin_frame(begin: pb.BeginBatch) -> bytes:
    return response_frame(pb.Response(begin=begin))


def end_frame(end: pb.EndBatch) -> bytes:
    return response_frame(pb.Response(end=end))


def request_frame(request: pb.Request) -> bytes:
    """A framed ``Request`` (the Kapacitor side's direction)."""
    return encode_frame(request.SerializeToString())


def point_request_frame(point: pb.Point) -> bytes:
    """A framed ``Request{point}``; identical bytes to :func:`point_frame`."""
    return point_frame(point)


def decode_response(frame: bytes) -> pb.Response:
    """Parse a frame from a UDF (the Kapacitor side's direction)."""
    try:
        response = pb.Response.FromString(frame)
    except DecodeError as exc:
        raise ProtocolError(f"undecodable response ({len(frame)} bytes): {exc}") from None
    if response.WhichOneof("message") is None:
        raise ProtocolError(f"empty response of {len(frame)} bytes (no message set)")
    return response
