"""Framing over bytes only: round trips under any split of the stream, and every way it breaks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfd.errors import FrameError
from udfd.protocol.framing import FrameDecoder, encode_frame, encode_varint, split_frames

messages = st.lists(st.binary(max_size=300), max_size=40)
big_messages = st.lists(st.binary(min_size=100, max_size=40_000), max_size=4)


def reference_varint(value: int) -> bytes:
    """The textbook definition, independent of encode_varint's lookup table."""
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_varint_matches_the_textbook_encoding(value: int) -> None:
    assert encode_varint(value) == reference_varint(value)


def test_known_varints() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint(2**32 - 1) == b"\xff\xff\xff\xff\x0f"
    with pytest.raises(ValueError, match="non-negative"):
        encode_varint(-1)


@given(st.one_of(messages, big_messages))
def test_round_trip_whole(msgs: list[bytes]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    assert split_frames(stream) == msgs


@given(messages)
def test_round_trip_byte_by_byte(msgs: list[bytes]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    decoder.check_eof()
    assert out == msgs


@given(st.one_of(messages, big_messages), st.data())
@settings(max_examples=200)
def test_round_trip_random_chunks(msgs: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert out == msgs
    assert decoder.pending == 0


@given(messages, st.binary(min_size=1, max_size=50))
def test_trailing_garbage_is_kept_then_reported(msgs: list[bytes], garbage: bytes) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(stream + garbage)
    except FrameError:
        return  # garbage that reads as an over-long or oversized prefix fails at once
    # every real message comes out first, whatever the garbage does
    assert frames[: len(msgs)] == msgs
    extra = frames[len(msgs) :]
    if decoder.pending:
        with pytest.raises(FrameError, match="stream ended inside a message"):
            decoder.check_eof()
    else:
        # the garbage happened to be whole frames: they are returned, not dropped
        assert b"".join(encode_frame(f) for f in extra) == garbage


def test_overlong_varint_is_an_error_not_a_wait() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="longer than 5 bytes"):
        decoder.feed(b"\x80\x80\x80\x80\x80\x01")
    # even when the sixth byte has not arrived yet
    with pytest.raises(FrameError, match="longer than 5 bytes"):
        FrameDecoder().feed(b"\xff\xff\xff\xff\xff")


def test_varint_above_uint32_is_an_error() -> None:
    with pytest.raises(FrameError):
        FrameDecoder(max_message_size=2**40).feed(b"\xff\xff\xff\xff\x7f")


def test_oversized_message_fails_before_it_arrives() -> None:
    decoder = FrameDecoder(max_message_size=1000)
    # only the prefix has arrived; the decoder must not wait for (or buffer) 1 MiB
    with pytest.raises(FrameError, match="over the limit of 1000 bytes"):
        decoder.feed(encode_varint(1 << 20))
    assert FrameDecoder(max_message_size=1000).feed(encode_frame(b"x" * 1000)) == [b"x" * 1000]


def test_truncated_stream_is_reported() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"abcdef")[:-2]) == []
    with pytest.raises(FrameError, match="5 bytes of an incomplete frame"):
        decoder.check_eof()


def test_truncated_prefix_waits_for_more() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"y" * 300)  # two-byte prefix
    assert decoder.feed(frame[:1]) == []
    assert decoder.feed(frame[1:]) == [b"y" * 300]


def test_empty_frames_are_frames() -> None:
    assert split_frames(b"\x00\x00\x01a") == [b"", b"", b"a"]


def test_the_decoder_points_at_the_frames_that_are_not_data() -> None:
    # the reader answers keepalives from these positions without a second look at each point
    point = b"\x8a\x01\x02\x08\x01"  # Request{point}: data (first byte 0x8a)
    keepalive = b"\x1a\x02\x08\x05"
    frames = [point, keepalive, point, point, b"", b"\x0a\x00", point]
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    assert decoder.feed(stream[:9]) == [point] and decoder.control == []
    rest = decoder.feed(stream[9:])
    assert rest == frames[1:]
    assert decoder.control == [0, 3, 4]  # keepalive, empty, Info: positions in this feed
    assert decoder.feed(b"") == [] and decoder.control == []


def test_after_a_frame_error_the_positions_describe_the_frames_it_carries() -> None:
    keepalive = b"\x1a\x02\x08\x05"
    point = b"\x8a\x01\x02\x08\x01"
    decoder = FrameDecoder()
    good = encode_frame(point) + encode_frame(keepalive)
    with pytest.raises(FrameError) as failed:
        decoder.feed(good + b"\xff\xff\xff\xff\xff\xff")  # an over-long varint
    assert failed.value.frames == [point, keepalive]
    assert decoder.control == [1]
