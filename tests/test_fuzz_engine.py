"""The connection engine under arbitrary message sequences (hypothesis), over a real socket.

Any mix of Info, Init (good, bad, twice), keepalives, Snapshot, Restore with garbage,
Begin/Point/End in any order, raw garbage bytes and an end of input anywhere must give:
no hang, no crash, only well-formed responses, a connection that either goes on or ends
with an ErrorResponse, nothing logged as an internal error, and a neighbour connection on
the same function that still answers its keepalives.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import udfd
from udfd.protocol import wire
from udfd.protocol.client import connect
from udfd.protocol.framing import FrameDecoder, encode_frame
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

pytestmark = pytest.mark.anyio


class Counting(udfd.Handler):
    """Keeps per-group counts (so Snapshot and Restore have something to do)."""

    def init(self) -> None:
        self.counts: udfd.GroupState[int] = udfd.GroupState(int)

    def point(self, point: pb.Point) -> udfd.Output:
        self.counts[point.group] += 1
        return point


class Framed(udfd.BatchHandler):
    pass


def request(**kwargs: Any) -> bytes:
    return wire.request_frame(pb.Request(**kwargs))


def point_frame(group: str) -> bytes:
    return wire.point_request_frame(udfd.make_point("m", 1, {"v": 1.0}, group=group))


OPS = st.one_of(
    st.just(request(info=pb.InfoRequest())),
    st.just(request(init=pb.InitRequest(taskID="t", nodeID="n"))),
    st.just(
        request(
            init=pb.InitRequest(
                options=[pb.Option(name="nope", values=[pb.OptionValue(intValue=1)])]
            )
        )
    ),
    st.integers(0, 2**62).map(lambda t: request(keepalive=pb.KeepaliveRequest(time=t))),
    st.just(request(snapshot=pb.SnapshotRequest())),
    st.binary(max_size=40).map(lambda b: request(restore=pb.RestoreRequest(snapshot=b))),
    st.sampled_from(["", "g1", "g2"]).map(
        lambda g: request(begin=pb.BeginBatch(name="m", group=g, size=1))
    ),
    st.sampled_from(["", "g1", "g2"]).map(point_frame),
    st.just(request(end=pb.EndBatch(name="m", tmax=1))),
    st.binary(min_size=1, max_size=12),  # garbage: misaligns the stream, or not
    st.binary(max_size=12).map(encode_frame),  # a frame that is not a request
)


def responses(data: bytes) -> list[pb.Response]:
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    decoder.check_eof()  # udfd never sends half a frame
    out = []
    for frame in frames:
        response = pb.Response.FromString(frame)
        assert response.WhichOneof("message") is not None, "an empty Response"
        out.append(response)
    return out


async def drive(path: Any, ops: list[bytes], close_write: bool) -> list[pb.Response]:
    stream = await anyio.connect_unix(path)
    received = b""
    async with stream:
        try:
            await stream.send(b"".join(ops))
            if close_write:
                await stream.send_eof()
        except (anyio.BrokenResourceError, OSError):
            pass  # udfd ended the connection first: what it said is still readable
        # no hang: after an end of input udfd answers and closes (10 s is generous); a
        # connection left open is read until it has been quiet for 0.3 s
        idle = 10.0 if close_write else 0.3
        with anyio.fail_after(20):
            while True:
                with anyio.move_on_after(idle) as quiet:
                    try:
                        chunk = await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
                if quiet.cancelled_caught:
                    assert not close_write, "udfd did not close after the end of input"
                    break
                received += chunk
    return responses(received)


@pytest.mark.parametrize("handler", [Counting, Framed], ids=["stream", "batch"])
@settings(
    max_examples=int(os.environ.get("UDFD_FUZZ_EXAMPLES", "120")),  # more: a longer run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPS, max_size=14), close_write=st.booleans())
async def test_any_message_sequence_ends_cleanly_and_spares_the_neighbour(
    handler: type[udfd.Handler[Any]],
    ops: list[bytes],
    close_write: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    caplog.clear()
    async with serve_handler(handler) as site, connect(site.path) as neighbour:
        await neighbour.info()
        assert (await neighbour.init({})).success
        if close_write or ops:
            got = await drive(site.path, ops, close_write)
        else:
            got = []
        errors = [r for r in got if r.WhichOneof("message") == "error"]
        assert len(errors) <= 1, "more than one ErrorResponse"
        if errors:
            assert errors[0].error.error, "an ErrorResponse without a reason"
            assert got[-1] is errors[0], "a response after the ErrorResponse"
        await neighbour.keepalive()  # the function still serves others
        await neighbour.finish()
    assert "internal error" not in caplog.text
    for record in caplog.records:  # every error is a connection ended, with its reason
        if record.levelno >= logging.ERROR:
            assert record.getMessage().startswith("ending the connection: "), record.getMessage()
            assert record.exc_info is None, "a traceback for a peer's mistake"
