"""The fuzz target of the wire layer: the frame decoder and the request parser.

What must hold for any bytes, split any way:

* only FrameError (the stream lost its alignment) or ProtocolError (a frame that
  is not a request) is ever raised; anything else is a bug;
* the frames do not depend on how the bytes were split into reads: one feed and
  many small feeds give the same frames, the same control positions, the same error;
* the decoder never buffers more than the message limit plus one read.

Shared by ``scripts/fuzz`` (atheris, coverage-guided) and ``tests/test_fuzz.py``
(hypothesis, in every test run), so both check the same properties.
"""

from __future__ import annotations

from udfd.errors import FrameError, ProtocolError
from udfd.protocol import wire
from udfd.protocol.framing import FrameDecoder


def decode_all(data: bytes, splits: list[int], limit: int) -> tuple[list[bytes], list[int], str]:
    """Frames, control positions (over all frames) and the error text, feeding ``data`` in
    pieces of the sizes in ``splits`` (cycled), then checking the end of input."""
    decoder = FrameDecoder(limit)
    frames: list[bytes] = []
    control: list[int] = []
    pos = 0
    i = 0
    try:
        while pos < len(data):
            size = max(1, splits[i % len(splits)]) if splits else len(data)
            i += 1
            piece = data[pos : pos + size]
            pos += size
            base = len(frames)
            try:
                got = decoder.feed(piece)
            except FrameError as exc:
                control += [base + c for c in decoder.control]
                frames += exc.frames
                return frames, control, str(exc).split(":")[0]
            control += [base + c for c in decoder.control]
            frames += got
            assert decoder.pending <= limit + 10 + size, "the decoder buffers beyond its bound"
        decoder.check_eof()
    except FrameError as exc:
        return frames, control, str(exc).split(":")[0]
    return frames, control, ""


def check(data: bytes, splits: list[int], limit: int) -> None:
    """The properties above, for one input; an AssertionError or any unexpected
    exception is a finding."""
    whole = decode_all(data, [], limit)
    pieces = decode_all(data, splits, limit)
    assert whole[0] == pieces[0], "frames depend on how the input was split"
    assert whole[1] == pieces[1], "control positions depend on the split"
    assert bool(whole[2]) == bool(pieces[2]), "an error depends on the split"
    for frame in whole[0]:
        try:
            kind, message = wire.decode_request(frame)
        except ProtocolError:
            continue
        assert kind in wire.KIND_NAMES, f"unknown kind {kind}"
        assert message is not None
