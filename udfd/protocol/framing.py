"""Varint length-prefixed framing of Kapacitor's UDF byte stream, with no I/O.

Everything here is pure: bytes in, frames out. The connection feeds whatever it
read from the socket into a :class:`FrameDecoder` and gets back complete frames;
splitting a large chunk in one pass (rather than a read per varint) is what keeps
per-point overhead low.

A frame's length prefix is a 32-bit unsigned varint (Kapacitor decodes it so), so
a prefix longer than five bytes is a protocol error, and so is a length above the
configured maximum: both are detected before any allocation of that size.
"""

from __future__ import annotations

from udfd.errors import FrameError

#: Default largest message accepted in either direction. Kapacitor's own messages
#: are a few hundred bytes; batches travel as one message per point.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024

#: A uint32 varint is at most five bytes long.
MAX_VARINT_LEN = 5

# One- and two-byte prefixes cover every message under 16 KiB: precompute them
# so encoding a frame is a table lookup, not a Python loop.
_PREFIX_CACHE: tuple[bytes, ...] = tuple(
    bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(1 << 14)
)


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned varint."""
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    if value < 1 << 14:
        return _PREFIX_CACHE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_frame(message: bytes) -> bytes:
    """Prefix one serialized message with its length."""
    size = len(message)
    prefix = _PREFIX_CACHE[size] if size < 1 << 14 else encode_varint(size)
    return prefix + message


class FrameDecoder:
    """Incremental splitter of a length-prefixed byte stream.

    Feed it chunks of any size, in any split; it returns every complete frame and
    keeps the remainder. Its memory is bounded by ``max_message_size`` plus one
    chunk: an announced length over the limit fails at once instead of waiting
    for (and buffering) that many bytes.
    """

    __slots__ = ("_buffer", "_max", "control")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self._max = max_message_size
        self._buffer = b""
        #: positions, in what the last :meth:`feed` returned (or its FrameError carried),
        #: of the frames that are not data (whose first byte is below 0x80: Info,
        #: keepalive, Init...). The reader answers Info and keepalives at once, and
        #: finds them here instead of looking at every point a second time.
        self.control: list[int] = []

    @property
    def max_message_size(self) -> int:
        return self._max

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def take_remainder(self) -> bytes:
        """The bytes of an incomplete frame, handed over with the socket (and forgotten)."""
        rest, self._buffer = self._buffer, b""
        return rest

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete, in order.

        Raises :class:`FrameError` on an over-long varint or an oversized frame,
        carrying the complete frames that came before it; the decoder is unusable
        afterwards (the stream has lost its alignment).
        """
        buf = self._buffer + data if self._buffer else bytes(data)
        frames: list[bytes] = []
        append = frames.append
        self.control = control = []
        end = len(buf)
        pos = 0
        limit = self._max
        while pos < end:
            first = buf[pos]
            if first < 0x80:
                # the common case: a message under 128 bytes (over the limit only if the
                # limit itself is under 128, which the fuzzer found unchecked here)
                size = first
                start = pos + 1
                if size > limit:
                    raise FrameError(
                        f"message of {size} bytes announced, over the limit of {limit} bytes",
                        frames,
                    )
            else:
                try:
                    size, start = _decode_long_prefix(buf, pos, end)
                except FrameError as exc:
                    raise FrameError(str(exc), frames) from None
                if start < 0:
                    break  # the prefix itself is incomplete
                if size > limit:
                    raise FrameError(
                        f"message of {size} bytes announced, over the limit of {limit} bytes",
                        frames,
                    )
            stop = start + size
            if stop > end:
                break
            if not size or buf[start] < 0x80:
                control.append(len(frames))
            append(buf[start:stop])
            pos = stop
        self._buffer = buf[pos:] if pos < end else b""
        return frames

    def check_eof(self) -> None:
        """Raise if the stream ended inside a frame (a truncated message)."""
        if self._buffer:
            raise FrameError(
                f"stream ended inside a message: {len(self._buffer)} bytes of an incomplete frame"
            )


def _decode_long_prefix(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a multi-byte varint at ``pos``; return (value, start of payload).

    Returns ``start = -1`` when the buffer ends inside the varint.
    """
    result = 0
    shift = 0
    i = pos
    while True:
        if i >= end:
            return 0, -1
        byte = buf[i]
        result |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            if i - pos > MAX_VARINT_LEN or result > 0xFFFFFFFF:
                break
            return result, i
        shift += 7
        if i - pos >= MAX_VARINT_LEN:
            break
    raise FrameError(
        "length prefix is longer than 5 bytes or above 2**32-1: "
        "the peer is not speaking the UDF protocol"
    )


def split_frames(data: bytes, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> list[bytes]:
    """Split a complete byte string into frames; trailing partial data is an error."""
    decoder = FrameDecoder(max_message_size)
    frames = decoder.feed(data)
    decoder.check_eof()
    return frames
