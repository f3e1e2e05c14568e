"""The Kapacitor-side client is as strict as kapacitord: a UDF that breaks the protocol fails.

Most tests here run a *deliberately broken UDF*: a tiny unix-socket server (``broken_udf``)
that answers the client's requests with raw bytes each test scripts. It is a broken peer on
a real socket, not a mock of the protocol: the client reads its bytes exactly as it reads
udfd's. The last tests check that real udfd handlers, served by ``udfd.testing``, still pass.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import udfd
from udfd.engine.limits import Limits
from udfd.errors import ProtocolError
from udfd.protocol import wire
from udfd.protocol.client import UdfError, UdfProtocolError, connect
from udfd.protocol.framing import FrameDecoder, encode_frame, encode_varint
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import check_batch_framing, make_batch, run_task, serve_handler

pytestmark = pytest.mark.anyio

# ---------------------------------------------------------------- the broken peer

INFO_OK = wire.info_frame(pb.InfoResponse(wants=pb.STREAM, provides=pb.STREAM))
INIT_OK = wire.init_frame(True)
EMPTY = encode_frame(b"")  # a Response with no message set: kapacitord crashes on it
POINT = wire.point_frame(udfd.make_point("cpu", 1, {"value": 1.0}))


def begin(size: int = 0, name: str = "cpu") -> bytes:
    return wire.begin_frame(pb.BeginBatch(name=name, size=size))


def end(name: str = "cpu") -> bytes:
    return wire.end_frame(pb.EndBatch(name=name, tmax=1))


def correct_reply(kind: str, message: Any) -> bytes:
    """What a well-behaved stream UDF answers (nothing for data: it is a sink)."""
    if kind == "info":
        return INFO_OK
    if kind == "init":
        return INIT_OK
    if kind == "snapshot":
        return wire.snapshot_frame(b"")
    if kind == "restore":
        return wire.restore_frame(True)
    if kind == "keepalive":
        return wire.keepalive_frame(message.time)
    return b""


@dataclass
class BrokenUdf:
    path: Path
    #: kinds of request answered so far, each appended once its reply is fully written
    replied: list[str] = field(default_factory=list)
    #: connections being served
    open: int = 0


@asynccontextmanager
async def broken_udf(
    directory: Path, script: Mapping[str, bytes] | None = None, *, at_eof: bytes = b""
) -> AsyncIterator[BrokenUdf]:
    """Serve a deliberately broken UDF on ``directory/broken.sock``.

    ``script`` maps a request kind ("info", "init", "point", ...) to the raw bytes written
    back *instead of* the correct answer, every time such a request arrives; ``at_eof`` is
    written when the client half-closes, just before the server closes.
    """
    script = dict(script or {})
    fake = BrokenUdf(directory / "broken.sock")

    async def serve(stream: anyio.abc.SocketStream) -> None:
        fake.open += 1
        async with stream:
            decoder = FrameDecoder()
            try:
                while True:
                    try:
                        data = await stream.receive()
                    except anyio.EndOfStream:
                        break
                    for frame in decoder.feed(data):
                        kind_id, message = wire.decode_request(frame)
                        kind = wire.KIND_NAMES[kind_id]
                        reply = script[kind] if kind in script else correct_reply(kind, message)
                        if reply:
                            await stream.send(reply)
                        fake.replied.append(kind)
                if at_eof:
                    await stream.send(at_eof)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the client hung up on us: expected after a violation
            finally:
                fake.open -= 1

    listener = await anyio.create_unix_listener(fake.path)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield fake
        finally:
            # Let each connection end on the client's close rather than cancelling it inside
            # receive(): anyio's raw socket streams can fail with InvalidStateError when a
            # receive is cancelled just as its socket becomes readable.
            with anyio.move_on_after(2):
                await until(lambda: fake.open == 0)
            tg.cancel_scope.cancel()


async def until(condition: Callable[[], bool]) -> None:
    """Poll for a state the test cannot wait on directly (at most 5 s)."""
    for _ in range(1000):
        if condition():
            return
        await anyio.sleep(0.005)
    raise AssertionError("condition not reached within 5 s")


def points(n: int) -> list[pb.Point]:
    return [udfd.make_point("cpu", t, {"value": float(t)}, {"host": "a"}) for t in range(n)]


# ---------------------------------------------------------------- each violation fails

VIOLATIONS = [
    # (id, script, at_eof, kind, what the message says)
    ("empty-response", {"init": INIT_OK + EMPTY}, b"", "empty_response", "empty Response"),
    (
        "response-with-only-an-unknown-field",
        {"init": INIT_OK + encode_frame(b"\x38\x01")},  # field 7: no oneof set
        b"",
        "empty_response",
        "no message set",
    ),
    ("empty-response-instead-of-info", {"info": EMPTY}, b"", "empty_response", "empty Response"),
    (
        "info-nobody-asked-for",
        {"init": INIT_OK + INFO_OK},
        b"",
        "unsolicited_response",
        "unsolicited InfoResponse: no InfoRequest was outstanding",
    ),
    (
        "init-answered-twice",
        {"init": INIT_OK + INIT_OK},
        b"",
        "unsolicited_response",
        "unsolicited InitResponse",
    ),
    (
        "init-before-init-request",
        {"info": INIT_OK + INFO_OK},
        b"",
        "unsolicited_response",
        "unsolicited InitResponse",
    ),
    (
        "snapshot-nobody-asked-for",
        {"init": INIT_OK + wire.snapshot_frame(b"state")},
        b"",
        "unsolicited_response",
        "unsolicited SnapshotResponse: no SnapshotRequest was outstanding",
    ),
    (
        "restore-nobody-asked-for",
        {"point": wire.restore_frame(True)},
        b"",
        "unsolicited_response",
        "unsolicited RestoreResponse",
    ),
    (
        "end-batch-without-begin",
        {"init": INIT_OK + POINT + end()},
        b"",
        "batch_framing",
        "EndBatch (name 'cpu', group '') without a BeginBatch",
    ),
    (
        "second-end-batch",
        {"init": INIT_OK + begin(0) + POINT + end() + end()},
        b"",
        "batch_framing",
        "without a BeginBatch",
    ),
    (
        "begin-batch-inside-a-batch",
        {"init": INIT_OK + begin(0) + POINT + begin(0, name="mem")},
        b"",
        "batch_framing",
        "BeginBatch (name 'mem', group '') inside an open batch (name 'cpu', group '', "
        "1 point(s) so far)",
    ),
    (
        "negative-batch-size",
        {"init": INIT_OK + begin(-1) + end()},
        b"",
        "batch_framing",
        "negative size -1",
    ),
    (
        "batch-shorter-than-announced",
        {"init": INIT_OK + begin(2) + POINT + end()},
        b"",
        "batch_framing",
        "announced size 2 but 1 point(s) came before its EndBatch",
    ),
    (
        "batch-longer-than-announced",
        {"init": INIT_OK + begin(1) + POINT + POINT + end()},
        b"",
        "batch_framing",
        "announced size 1 but 2 point(s)",
    ),
    (
        "output-ends-inside-a-batch",
        {},
        begin(3) + POINT,
        "batch_framing",
        "output ended inside an open batch (name 'cpu', group '', 1 point(s), no EndBatch)",
    ),
    (
        "undecodable-frame",
        {"init": INIT_OK + encode_frame(b"\x8a\x01\x7fshort")},
        b"",
        "bad_frame",
        "does not decode as a Response",
    ),
    (
        "overlong-varint",
        {"init": INIT_OK + b"\xff" * 6},
        b"",
        "bad_frame",
        "longer than 5 bytes",
    ),
    (
        "oversized-length",
        {"init": INIT_OK + encode_varint(64 * 1024 * 1024)},
        b"",
        "bad_frame",
        "over the limit",
    ),
    ("truncated-frame-at-eof", {}, POINT[:5], "bad_frame", "stream ended inside a message"),
    ("truncated-varint-at-eof", {}, b"\x80", "bad_frame", "stream ended inside a message"),
]


@pytest.mark.parametrize(
    ("script", "at_eof", "kind", "expected"),
    [v[1:] for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
async def test_run_task_fails_against_a_udf_that_breaks_the_protocol(
    workdir: Path, script: dict[str, bytes], at_eof: bytes, kind: str, expected: str
) -> None:
    async with broken_udf(workdir, script, at_eof=at_eof) as fake:
        with pytest.raises(UdfProtocolError) as caught:
            await run_task(fake.path, points=points(2))
    assert caught.value.kind == kind
    assert str(caught.value).startswith("UDF protocol violation: ")
    assert expected in str(caught.value)


async def test_a_protocol_error_is_a_udf_error_and_a_protocol_error(workdir: Path) -> None:
    async with broken_udf(workdir, {"init": INIT_OK + EMPTY}) as fake:
        with pytest.raises(UdfError) as as_udf_error:
            await run_task(fake.path)
        with pytest.raises(ProtocolError):
            await run_task(fake.path)
        with pytest.raises(udfd.UdfdError):
            await run_task(fake.path)
    assert isinstance(as_udf_error.value, UdfProtocolError)


# ---------------------------------------------------------------- how a violation surfaces


async def test_the_pending_request_raises_at_once(workdir: Path) -> None:
    async with broken_udf(workdir, {"info": EMPTY}) as fake, connect(fake.path) as client:
        with anyio.fail_after(2), pytest.raises(UdfProtocolError) as caught:
            await client.info()  # raised by the violation, not by the 10 s reply timeout
    assert client.protocol_error is caught.value
    assert caught.value.kind == "empty_response"
    assert caught.value.response is not None
    assert caught.value.response.WhichOneof("message") is None
    assert caught.value.index == 0


async def test_every_later_call_raises_the_first_violation(workdir: Path) -> None:
    bad = INFO_OK + POINT + end() + EMPTY  # two violations: the first one is reported
    async with broken_udf(workdir, {"info": bad}) as fake, connect(fake.path) as client:
        await client.send(pb.Request(info=pb.InfoRequest()))
        await until(lambda: client.protocol_error is not None)
        first = client.protocol_error
        assert first is not None and first.kind == "batch_framing"
        assert first.index == 2  # InfoResponse and a point came before it
        assert first.response is not None and first.response.end.name == "cpu"
        for call in (
            client.info,
            client.init,
            client.snapshot,
            lambda: client.restore(b"x"),
            client.keepalive,
            lambda: client.send_points(points(1)),
            lambda: client.wait_output(5),
            client.wait_error,
            client.wait_closed,
            client.finish,
        ):
            with pytest.raises(UdfProtocolError) as caught:
                await call()
            assert caught.value is first
    assert [type(m) for m in client.output] == [pb.Point]  # what came before it is kept


async def test_leaving_the_block_raises_a_violation_no_call_raised(workdir: Path) -> None:

    async def use_without_noticing(path: Path) -> None:
        async with connect(path) as client:
            await client.send(pb.Request(info=pb.InfoRequest()))
            await until(lambda: client.protocol_error is not None)

    async with broken_udf(workdir, {"info": INFO_OK + EMPTY}) as fake:
        with pytest.raises(UdfProtocolError, match="empty Response"):
            await use_without_noticing(fake.path)


async def test_finish_raises_even_when_the_output_looks_empty(workdir: Path) -> None:
    """The case that let tests expecting no output pass against a broken UDF."""
    async with broken_udf(workdir, {"point": EMPTY}) as fake, connect(fake.path) as client:
        await client.info()
        assert (await client.init()).success
        await client.send_points(points(3))
        with pytest.raises(UdfProtocolError, match="empty Response"):
            await client.finish()
    assert client.output == []


async def test_output_after_a_violation_is_drained_so_the_udf_never_blocks(
    workdir: Path,
) -> None:
    flood = EMPTY + wire.keepalive_frame(1) * 400_000  # 2 MB, far more than socket buffers
    async with broken_udf(workdir, {"info": flood}) as fake, connect(fake.path) as client:
        with pytest.raises(UdfProtocolError):
            await client.info()
        await until(lambda: "info" in fake.replied)  # the whole flood was written
        assert client.unsolicited_keepalives == 0  # discarded, not interpreted
        with pytest.raises(UdfProtocolError):
            await client.finish()


# ---------------------------------------------------------------- what is not a violation


async def test_correct_output_from_the_same_peer_passes(workdir: Path) -> None:
    """The control for the tests above: the broken peer with correct bytes is accepted."""
    output = (
        POINT  # stream points outside batches are fine
        + begin(2)
        + POINT
        + POINT
        + end()
        + begin(0)  # size 0: unknown
        + POINT
        + end()
        + begin(0)  # an empty batch
        + end()
        + POINT
    )
    async with broken_udf(workdir, {"init": INIT_OK + output}) as fake:
        async with connect(fake.path) as client:
            await client.info()
            assert (await client.init()).success
            assert (await client.restore(b"state")).success
            assert await client.snapshot() == b""
            await client.send_points(points(2))
            out = await client.finish()
        run = await run_task(fake.path, points=points(2), restore=b"x", snapshot=True)
    assert client.protocol_error is None
    kinds = [type(m).__name__ for m in out]
    assert kinds == ["Point", "BeginBatch", "Point", "Point", "EndBatch"] + [
        "BeginBatch",
        "Point",
        "EndBatch",
        "BeginBatch",
        "EndBatch",
        "Point",
    ]
    assert [type(m) for m in run.output] == [type(m) for m in out]


async def test_unsolicited_keepalive_responses_are_accepted_and_counted(workdir: Path) -> None:
    heartbeats = wire.keepalive_frame(0) + wire.keepalive_frame(12345) * 2
    async with broken_udf(workdir, {"init": INIT_OK + heartbeats}) as fake:
        async with connect(fake.path) as client:
            await client.info()
            assert (await client.init()).success
            await until(lambda: client.unsolicited_keepalives == 3)
            await client.keepalive()  # a solicited one is matched, not counted
            await client.send_points(points(1))
            assert await client.finish() == []
    assert client.unsolicited_keepalives == 3
    assert len(client.keepalive_stats.samples) == 1


async def test_a_keepalive_answered_twice_counts_the_second_as_unsolicited(
    workdir: Path,
) -> None:
    async with broken_udf(workdir) as fake, connect(fake.path) as client:
        await client.info()
        await client.send(pb.Request(keepalive=pb.KeepaliveRequest(time=7)))
        await client.send_raw(wire.request_frame(pb.Request(keepalive=pb.KeepaliveRequest(time=7))))
        await until(lambda: client.unsolicited_keepalives == 1)
        await client.finish()
    assert len(client.keepalive_stats.samples) == 1


async def test_an_error_response_is_recorded_not_a_violation(workdir: Path) -> None:
    async with broken_udf(workdir, at_eof=wire.error_frame("boom")) as fake:
        run = await run_task(fake.path, points=points(1))
    assert run.errors == ["boom"]


async def test_a_batch_left_open_by_a_failing_udf_is_not_a_violation(workdir: Path) -> None:
    """Kapacitor stops the task at the ErrorResponse; the unfinished batch harms nothing."""
    async with broken_udf(workdir, at_eof=begin(3) + POINT + wire.error_frame("boom")) as fake:
        run = await run_task(fake.path, points=points(1))
    assert run.errors == ["boom"]
    assert [type(m) for m in run.output] == [pb.BeginBatch, pb.Point]


async def test_solicited_management_responses_are_matched_in_order(workdir: Path) -> None:
    async with broken_udf(workdir, {"snapshot": wire.snapshot_frame(b"s")}) as fake:
        async with connect(fake.path) as client:
            await client.info()
            await client.init()
            # two requests in flight at once, two answers: neither is unsolicited
            await client.send(pb.Request(snapshot=pb.SnapshotRequest()))
            assert await client.snapshot() == b"s"
            assert await client.snapshot() == b"s"
            await client.finish()


async def test_a_management_response_to_raw_bytes_counts_as_unsolicited(workdir: Path) -> None:
    """Requests sent with send_raw are unknown to the client (documented): use send()."""
    raw_info = wire.request_frame(pb.Request(info=pb.InfoRequest()))
    async with broken_udf(workdir) as fake, connect(fake.path) as client:
        await client.send_raw(raw_info)
        with pytest.raises(UdfProtocolError, match="unsolicited InfoResponse"):
            await client.finish()


# ---------------------------------------------------------------- real udfd handlers still pass


class Mirror(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        return point


class BatchMirror(udfd.BatchHandler[udfd.NoOptions]):
    def process_batch(
        self, points: list[udfd.Point], begin: udfd.BeginBatch, end: udfd.EndBatch
    ) -> Iterable[udfd.Point]:
        return points


class Slow(udfd.Handler[udfd.NoOptions]):
    """Busy on every point for a while, so udfd keeps Kapacitor's timer fed with heartbeats."""

    threaded = True

    def point(self, point: udfd.Point) -> udfd.Output:
        time.sleep(0.2)
        return point


async def test_a_correct_stream_handler_still_passes() -> None:
    async with serve_handler(Mirror) as site:
        run = await run_task(site.path, points=points(5), snapshot=True)
    assert run.init.success and run.errors == []
    assert [p.time for p in run.points] == [0, 1, 2, 3, 4]


async def test_a_correct_batch_handler_still_passes() -> None:
    batches = [
        make_batch("cpu", [(1, {"value": 1.0}), (2, {"value": 2.0})], tags={"host": "a"}),
        make_batch("cpu", [], tags={"host": "b"}),
    ]
    async with serve_handler(BatchMirror) as site:
        run = await run_task(site.path, batches=batches)
    assert run.errors == []
    assert [len(b) for b in check_batch_framing(run.output, batches)] == [2, 0]


async def test_udfd_heartbeats_are_accepted_as_unsolicited_keepalives() -> None:
    async with (
        serve_handler(Slow, limits=Limits(heartbeat=0.05)) as site,
        connect(site.path) as client,
    ):
        await client.info()
        assert (await client.init()).success
        await client.send_points(points(4))
        await client.keepalive()  # answered by udfd's reader while the handler is busy
        out = await client.finish()
    assert len(out) == 4
    assert client.protocol_error is None
    assert 1 <= client.unsolicited_keepalives <= site.stats.heartbeats
