"""The point fast paths produce exactly what the generic protobuf path produces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfd.errors import ProtocolError
from udfd.protocol import wire
from udfd.protocol.framing import encode_frame, split_frames
from udfd.protocol.proto import udf_pb2 as pb

names = st.text(max_size=20)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def points(draw: st.DrawFn) -> pb.Point:
    return pb.Point(
        time=draw(int64),
        name=draw(names),
        database=draw(names),
        retentionPolicy=draw(names),
        group=draw(names),
        dimensions=draw(st.lists(names, max_size=3)),
        tags=draw(st.dictionaries(names, names, max_size=4)),
        fieldsDouble=draw(st.dictionaries(names, st.floats(allow_nan=False), max_size=3)),
        fieldsInt=draw(st.dictionaries(names, int64, max_size=3)),
        fieldsString=draw(st.dictionaries(names, st.text(max_size=3000), max_size=3)),
        fieldsBool=draw(st.dictionaries(names, st.booleans(), max_size=3)),
        byName=draw(st.booleans()),
    )


@given(points())
@settings(max_examples=300)
def test_point_frame_is_a_framed_point_response(point: pb.Point) -> None:
    # map order is unspecified in protobuf, so compare decoded messages, not bytes
    (frame,) = split_frames(wire.point_frame(point))
    response = pb.Response.FromString(frame)
    assert response.WhichOneof("message") == "point"
    assert response.point == point
    # and the hand-built wrapper is the canonical header: tag 17, length, body
    assert frame[:2] == b"\x8a\x01"
    (body,) = split_frames(frame[2:])
    assert pb.Point.FromString(body) == point


@given(points())
@settings(max_examples=300)
def test_point_request_decodes_by_fast_path_like_full_parse(point: pb.Point) -> None:
    (frame,) = split_frames(encode_frame(pb.Request(point=point).SerializeToString()))
    kind, msg = wire.decode_request(frame)
    assert kind == wire.POINT
    assert msg == point


def test_every_request_kind_decodes() -> None:
    cases = {
        wire.INFO: pb.Request(info=pb.InfoRequest()),
        wire.INIT: pb.Request(init=pb.InitRequest(taskID="t")),
        wire.KEEPALIVE: pb.Request(keepalive=pb.KeepaliveRequest(time=7)),
        wire.SNAPSHOT: pb.Request(snapshot=pb.SnapshotRequest()),
        wire.RESTORE: pb.Request(restore=pb.RestoreRequest(snapshot=b"s")),
        wire.BEGIN: pb.Request(begin=pb.BeginBatch(name="b")),
        wire.POINT: pb.Request(point=pb.Point(name="p")),
        wire.END: pb.Request(end=pb.EndBatch(name="e")),
    }
    for kind, request in cases.items():
        got_kind, msg = wire.decode_request(request.SerializeToString())
        assert got_kind == kind
        assert msg == getattr(request, request.WhichOneof("message"))


def test_non_canonical_point_request_falls_back_to_full_parse() -> None:
    # a point field followed by an unknown field: the fast path's length check fails
    point = pb.Point(name="cpu", time=1)
    frame = pb.Request(point=point).SerializeToString() + b"\xf8\x07\x01"  # field 127 varint
    kind, msg = wire.decode_request(frame)
    assert (kind, msg) == (wire.POINT, point)


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xf8\x07\x01", b"\x8a\x01\x05abc", b"\x12\xff"],
    ids=["empty", "unknown-field-only", "truncated-point", "bad-length"],
)
def test_garbage_requests_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_request(frame)


def test_empty_response_is_refused() -> None:
    with pytest.raises(ValueError, match="empty Response"):
        wire.response_frame(pb.Response())
