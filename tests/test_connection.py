"""The connection engine over real unix sockets, driven by udfd's Kapacitor-side client."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pydantic
import pytest
from pydantic import Field

import udfd
from udfd.engine.limits import Limits
from udfd.protocol import wire
from udfd.protocol.client import UdfClient, UdfError, connect, probe_info
from udfd.protocol.framing import encode_frame, encode_varint
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import run_task, serve_handler

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- handlers


class Mirror(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        return point


class AllOptions(udfd.Options):
    field: str
    size: int = Field(ge=1)
    scale: float = 1.5
    enabled: bool = False
    period: timedelta = timedelta(minutes=1)
    names: list[str] = Field(default_factory=list)
    range_: list[tuple[str, float, float]] = Field(default_factory=list, alias="range")
    pair: tuple[str, int] | None = None
    verbose: udfd.Flag = False
    as_: str = Field("avg", alias="as")


class EchoOptions(udfd.Handler[AllOptions]):
    """Emits its validated options as JSON on every point."""

    def point(self, point: udfd.Point) -> udfd.Output:
        dumped = self.options.model_dump(mode="json", by_alias=True)
        return udfd.derive(point, {"options": json.dumps(dumped, sort_keys=True)})


class Counter(udfd.Handler[udfd.NoOptions]):
    """Counts points per group; emits the running count. State snapshots by default."""

    def init(self) -> None:
        self.counts: udfd.GroupState[int] = udfd.GroupState(int)

    def point(self, point: udfd.Point) -> udfd.Output:
        self.counts[point.group] += 1
        return udfd.derive(point, {"count": self.counts[point.group]})


class BatchMirror(udfd.BatchHandler[udfd.NoOptions]):
    def process_batch(
        self, points: list[udfd.Point], begin: udfd.BeginBatch, end: udfd.EndBatch
    ) -> Iterable[udfd.Point]:
        return [p for p in points if udfd.get_number(p, "value") >= 0]


RELEASE = threading.Event()
ENTERED = threading.Event()


class Sleepy(udfd.Handler[udfd.NoOptions]):
    """Blocks its worker thread on the first point until the test releases it."""

    threaded = True

    def point(self, point: udfd.Point) -> udfd.Output:
        ENTERED.set()
        RELEASE.wait(30)
        return point


class Fails(udfd.Handler[udfd.NoOptions]):
    """Raises on points whose value is negative; drops points without a value."""

    def point(self, point: udfd.Point) -> udfd.Output:
        value = udfd.get_number(point, "value")  # MissingField -> dropped
        if value < 0:
            raise RuntimeError(f"negative value {value}")
        return point


class AsyncMirror(udfd.Handler[udfd.NoOptions]):
    async def point(self, point: udfd.Point) -> udfd.Output:
        await anyio.lowlevel.checkpoint()
        return point


class BadOutput(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> Any:
        kind = point.fieldsString["kind"]
        if kind == "begin":
            return udfd.BeginBatch(name="x")
        if kind == "str":
            return "not a point"
        if kind == "response":
            return pb.Response(info=pb.InfoResponse())
        if kind == "dict":
            return {"value": 1.0}
        if kind == "list-of-dict":
            return [point, {"value": 1.0}]
        return point


class BadBatchOutput(udfd.Handler[udfd.NoOptions]):
    wants = udfd.Edge.BATCH
    provides = udfd.Edge.BATCH

    def point(self, point: udfd.Point) -> Any:
        kind = point.fieldsString["kind"]
        if kind == "negative":
            return [udfd.BeginBatch(size=-1), point]
        if kind == "end-first":
            return udfd.EndBatch()
        return point  # a point outside any output batch


class Ticker(udfd.Handler[udfd.NoOptions]):
    """Emits from a background thread, outside any callback, via request_flush."""

    def init(self) -> None:
        self.pending: list[udfd.Point] = []
        self.lock = threading.Lock()

    def point(self, point: udfd.Point) -> udfd.Output:
        def later() -> None:
            with self.lock:
                self.pending.append(udfd.derive(point, {"late": True}))
            self.context.request_flush()

        threading.Thread(target=later).start()
        return None

    def flush(self) -> udfd.Output:
        with self.lock:
            out, self.pending = self.pending, []
        return out


def points(n: int, *, group: str = "", start: int = 0) -> list[udfd.Point]:
    return [
        udfd.make_point(
            "cpu",
            1_700_000_000_000_000_000 + i,
            {"value": float(i)},
            {"host": group or "a"},
            group=group,
            dimensions=["host"] if group else None,
        )
        for i in range(start, start + n)
    ]


async def started(client: UdfClient, options: Any = ()) -> UdfClient:
    info = await client.info()
    assert info is not None
    response = await client.init(options)
    assert response.success, response.error
    return client


# ---------------------------------------------------------------- Info and Init


async def test_info_is_derived_from_the_declaration() -> None:
    async with serve_handler(EchoOptions) as site, connect(site.path) as client:
        info = await client.info()
    assert info.wants == pb.STREAM and info.provides == pb.STREAM
    types = {name: list(o.valueTypes) for name, o in info.options.items()}
    assert types == {
        "field": [pb.STRING],
        "size": [pb.INT],
        "scale": [pb.DOUBLE],
        "enabled": [pb.BOOL],
        "period": [pb.DURATION],
        "names": [pb.STRING],
        "range": [pb.STRING, pb.DOUBLE, pb.DOUBLE],
        "pair": [pb.STRING, pb.INT],
        "verbose": [],
        "as": [pb.STRING],
    }


async def test_startup_info_connection_closes_promptly() -> None:
    async with serve_handler(Mirror) as site:
        with anyio.fail_after(5):
            info = await probe_info(site.path)
        assert info.provides == pb.STREAM
        assert site.stats.connections_total == 1


async def test_init_with_every_option_type() -> None:
    options = {
        "field": "usage",
        "size": 10,
        "scale": 2.5,
        "enabled": True,
        "period": timedelta(seconds=90, microseconds=5),
        "names": ["a", "b", "c"],
        "range": [("temp", 20.0, 25.0), ("hum", 0.0, 25.0)],
        "pair": ("x", 3),
        "verbose": (),
        "as": "mean",
    }
    async with serve_handler(EchoOptions) as site, connect(site.path) as client:
        await started(client, options)
        await client.send_points(points(1))
        out = await client.finish()
    got = json.loads(out[0].fieldsString["options"])
    assert got == {
        "field": "usage",
        "size": 10,
        "scale": 2.5,
        "enabled": True,
        "period": "PT1M30.000005S",
        "names": ["a", "b", "c"],
        "range": [["temp", 20.0, 25.0], ["hum", 0.0, 25.0]],
        "pair": ["x", 3],
        "verbose": True,
        "as": "mean",
    }


async def test_configured_defaults_apply_under_init_options() -> None:
    async with (
        serve_handler(EchoOptions, defaults={"field": "dflt", "size": 3, "as": "x"}) as site,
        connect(site.path) as client,
    ):
        await started(client, {"size": 7})
        await client.send_points(points(1))
        out = await client.finish()
    got = json.loads(out[0].fieldsString["options"])
    assert (got["field"], got["size"], got["as"]) == ("dflt", 7, "x")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"size": 3}, "option 'field' is required: .field(string)"),
        (
            {"field": "f", "size": "3"},
            "option 'size' expects .size(int) but got .size(string)",
        ),
        (
            {"field": "f", "size": 0},
            "option 'size': Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"field": "f", "size": 1, "scale": 2},
            "option 'scale' expects .scale(float) but got .scale(int)",
        ),
        ({"field": "f", "size": 1, "nope": 1}, "unknown option 'nope'"),
        ({"field": ["a", "b"], "size": 1}, "option 'field' given more than once"),
        (
            {"field": "f", "size": 1, "range": ("t", 1.0)},
            "expects .range(string, float, float) but got .range(string, float)",
        ),
        ({"field": "f", "size": 1, "verbose": True}, "option 'verbose' expects .verbose()"),
    ],
)
async def test_invalid_options_fail_init_readably(options: dict[str, Any], expected: str) -> None:
    async with serve_handler(EchoOptions, name="echo") as site, connect(site.path) as client:
        await client.info()
        response = await client.init(options)
        assert not response.success
        assert expected in response.error
        assert response.error.startswith("echo: ")
        # the connection survives a failed Init: Kapacitor closes it, we don't crash
        await client.finish()
    assert client.errors == []


async def test_init_failure_in_handler_code_is_answered() -> None:
    class Broken(udfd.Handler[udfd.NoOptions]):
        def init(self) -> None:
            raise ValueError("model file missing")

    async with serve_handler(Broken, name="broken") as site, connect(site.path) as client:
        response = await client.init()
    assert not response.success
    assert response.error == "broken: init failed: ValueError: model file missing"


async def test_second_init_is_refused() -> None:
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await started(client)
        again = await client.init()
    assert not again.success
    assert "Init received twice" in again.error


# ---------------------------------------------------------------- data


async def test_stream_round_trip_keeps_identity_and_order() -> None:
    sent = points(5000, group="host=a") + points(5000, group="host=b")
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(sent)
        out = await client.finish()
    assert out == sent
    assert site.stats.points_in == site.stats.points_out == len(sent)


async def test_points_of_every_size_around_the_varint_boundaries() -> None:
    # body sizes from ~20 to ~20k bytes cross the 1/2/3-byte length prefixes
    sent = [
        udfd.make_point("m", i, {"s": "x" * size})
        for i, size in enumerate([*range(90, 140), *range(16_300, 16_420, 7), 0, 1])
    ]
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(sent)
        assert await client.finish() == sent


async def test_async_callbacks_are_awaited() -> None:
    sent = points(300)
    async with serve_handler(AsyncMirror) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(sent)
        assert await client.finish() == sent


async def test_batch_round_trip_frames_output_as_kapacitor_requires() -> None:
    batch_points = [
        pb.Point(time=i, group="host=a", tags={"host": "a"}, fieldsDouble={"value": v})
        for i, v in enumerate([1.0, -2.0, 3.0, -4.0, 5.0])
    ]
    begin = pb.BeginBatch(name="cpu", group="host=a", tags={"host": "a"}, size=5)
    end = pb.EndBatch(name="cpu", group="host=a", tmax=99, tags={"host": "a"})
    async with serve_handler(BatchMirror) as site, connect(site.path) as client:
        info = await client.info()
        assert (info.wants, info.provides) == (pb.BATCH, pb.BATCH)
        await started(client)
        await client.send_batch(begin, batch_points, end)
        await client.send_batch(begin, [], end)
        out = await client.finish()
    first = out[:5]
    assert isinstance(first[0], pb.BeginBatch) and first[0].size == 3
    assert (first[0].name, dict(first[0].tags)) == ("cpu", {"host": "a"})
    assert [p.fieldsDouble["value"] for p in first[1:4]] == [1.0, 3.0, 5.0]
    assert isinstance(first[4], pb.EndBatch)
    assert (first[4].name, first[4].tmax, dict(first[4].tags)) == ("cpu", 99, {"host": "a"})
    # an empty batch is still framed
    assert [type(m) for m in out[5:]] == [pb.BeginBatch, pb.EndBatch]
    assert out[5].size == 0


async def test_eof_mid_batch_closes_cleanly() -> None:
    begin = pb.BeginBatch(name="cpu", size=2)
    async with serve_handler(BatchMirror) as site, connect(site.path) as client:
        await started(client)
        await client.send(pb.Request(begin=begin))
        await client.send_points([pb.Point(time=1, fieldsDouble={"value": 1.0})])
        with anyio.fail_after(5):
            out = await client.finish()
    assert out == []  # the unfinished batch is not half-sent
    assert client.errors == []


async def test_snapshot_then_restore_into_a_fresh_connection() -> None:
    async with serve_handler(Counter) as site:
        async with connect(site.path) as first:
            await started(first)
            await first.send_points(points(3, group="g1") + points(2, group="g2"))
            await first.wait_output(5)
            snapshot = await first.snapshot()
            await first.finish()
        assert json.loads(snapshot)["states"]["counts"] == {"g1": 3, "g2": 2}
        async with connect(site.path) as second:
            await started(second)
            restored = await second.restore(snapshot)
            assert restored.success, restored.error
            await second.send_points(points(1, group="g1") + points(1, group="g3"))
            out = await second.finish()
    assert [p.fieldsInt["count"] for p in out] == [4, 1]


async def test_stateless_handler_snapshots_zero_bytes() -> None:
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await started(client)
        assert await client.snapshot() == b""


async def test_bad_snapshot_fails_restore_readably() -> None:
    async with serve_handler(Counter, name="count") as site, connect(site.path) as client:
        await started(client)
        response = await client.restore(b"\x00not json")
        assert not response.success
        assert response.error.startswith("count: restore failed: snapshot is not udfd state JSON")
        # the task is not broken by a refused restore
        await client.send_points(points(1))
        assert len(await client.finish()) == 1


async def test_keepalive_answered_while_handler_blocks_a_worker_thread() -> None:
    RELEASE.clear()
    ENTERED.clear()
    async with serve_handler(Sleepy) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(points(3))
        await anyio.to_thread.run_sync(ENTERED.wait, 10)
        latencies = [await client.keepalive() for _ in range(20)]
        # answered while the handler is still blocked: no output has come back
        assert client.output == []
        RELEASE.set()
        out = await client.finish()
    assert len(out) == 3
    latencies.sort()
    print(
        f"\nkeepalive while the handler blocks: p50 {latencies[10] * 1e3:.2f} ms, "
        f"max {latencies[-1] * 1e3:.2f} ms"
    )


async def test_request_flush_delivers_output_produced_outside_callbacks() -> None:
    async with serve_handler(Ticker) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(points(3))
        # nothing else is sent: only request_flush can bring these out
        out = await client.wait_output(3)
        assert all(p.fieldsBool["late"] for p in out)
        await client.finish()


# ---------------------------------------------------------------- errors


async def test_handler_exception_sends_error_after_earlier_output() -> None:
    sent = points(3) + [udfd.make_point("cpu", 5, {"value": -1.0})] + points(3, start=10)
    async with serve_handler(Fails, name="fails") as site, connect(site.path) as client:
        await started(client, ())
        await client.send_points(sent)
        error = await client.wait_error()
        await client.wait_closed()
    assert error == "fails: RuntimeError: negative value -1.0"
    assert len(client.output) == 3  # output before the failure is not lost
    assert site.stats.handler_errors == 1
    assert "negative value" in site.stats.last_error


async def test_drop_policy_logs_and_continues() -> None:
    sent = points(3) + [udfd.make_point("cpu", 5, {"value": -1.0})] + points(3, start=10)
    async with serve_handler(Fails, error_policy="drop") as site, connect(site.path) as client:
        await started(client)
        await client.send_points(sent)
        out = await client.finish()
    assert len(out) == 6 and client.errors == []
    assert site.stats.dropped == 1 and site.stats.handler_errors == 1


async def test_point_errors_are_dropped_and_counted_not_fatal() -> None:
    sent = [*points(2), udfd.make_point("cpu", 3, {"other": 1.0}), *points(2, start=5)]
    async with serve_handler(Fails) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(sent)
        out = await client.finish()
    assert len(out) == 4 and client.errors == []
    assert site.stats.dropped == 1 and site.stats.handler_errors == 0


async def test_one_failing_connection_leaves_the_others_running() -> None:
    async with serve_handler(Fails) as site:
        async with connect(site.path) as good, connect(site.path) as bad:
            await started(good)
            await started(bad)
            await bad.send_points([udfd.make_point("cpu", 1, {"value": -5.0})])
            await bad.wait_error()
            await good.send_points(points(100))
            assert len(await good.finish()) == 100
            assert good.errors == []


async def test_framing_violations_end_the_connection_even_under_drop() -> None:
    async with serve_handler(BadOutput, error_policy="drop") as site, connect(site.path) as client:
        await started(client)
        await client.send_points([udfd.make_point("cpu", 1, {"kind": "begin"})])
        error = await client.wait_error()
    assert "invalid handler output" in error
    assert "BeginBatch from a handler that provides a stream" in error
    assert client.output == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("dict", "point() returned a dict; return a Point, a list of messages or None"),
        ("str", "point() returned a str; return a Point"),
        ("response", "point() returned a Response; return a Point"),
        ("list-of-dict", "point() returned a list containing a dict; return a Point"),
    ],
)
async def test_output_that_is_no_message_says_what_it_was(kind: str, expected: str) -> None:
    async with serve_handler(BadOutput) as site, connect(site.path) as client:
        await started(client)
        await client.send_points([udfd.make_point("cpu", 1, {"kind": kind})])
        error = await client.wait_error()
    assert "invalid handler output" in error and expected in error
    assert client.output == []


@pytest.mark.parametrize("kind", ["dict", "str", "response", "list-of-dict"])
async def test_output_that_is_no_message_is_dropped_under_drop(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = [udfd.make_point("cpu", t, {"kind": "ok"}) for t in (1, 3)]
    bad = udfd.make_point("cpu", 2, {"kind": kind})
    async with serve_handler(BadOutput, error_policy="drop") as site, connect(site.path) as client:
        await started(client)
        await client.send_points([good[0], bad, good[1]])
        out = await client.finish()
    assert client.errors == [] and out == good  # nothing of the bad output, the rest intact
    assert site.stats.dropped == 1
    assert any("point() returned" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("negative", "BeginBatch with negative size -1"),
        ("end-first", "EndBatch without BeginBatch"),
        ("point", "point outside BeginBatch/EndBatch"),
    ],
)
async def test_batch_output_violations_are_handler_errors(kind: str, expected: str) -> None:
    async with serve_handler(BadBatchOutput) as site, connect(site.path) as client:
        await started(client)
        await client.send_batch(
            pb.BeginBatch(name="b"), [udfd.make_point("", 1, {"kind": kind})], pb.EndBatch()
        )
        error = await client.wait_error()
    assert expected in error
    assert client.output == []  # nothing half-framed reached Kapacitor


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encode_varint(64 * 1024 * 1024), "over the limit of 4194304 bytes"),
        (b"\xff\xff\xff\xff\xff\xff", "longer than 5 bytes"),
        (encode_frame(b"\xf8\x07\x01"), "carries no known message"),
        (encode_frame(b"\x8a\x01\x7fshort"), "undecodable"),
    ],
    ids=["oversized", "overlong-varint", "garbage", "truncated-message"],
)
async def test_bad_frames_end_the_connection_with_a_clear_error(data: bytes, expected: str) -> None:
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(points(2))
        await client.send_raw(data)
        error = await client.wait_error()
        await client.wait_closed()
    assert error.startswith("udfd: protocol error:") and expected in error
    assert len(client.output) == 2  # valid data before the bad frame is not lost
    assert site.stats.protocol_errors == 1


async def test_stream_ending_inside_a_frame_is_reported() -> None:
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await started(client)
        await client.send_raw(encode_frame(b"\x8a\x01" + b"x" * 40)[:20])
        await client.close_write()
        error = await client.wait_error()
    assert "stream ended inside a message" in error


async def test_data_before_init_is_a_protocol_error() -> None:
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await client.send_points(points(1))
        error = await client.wait_error()
    assert "point before a successful Init" in error


async def test_failed_plugin_answers_info_and_fails_init_with_the_reason() -> None:
    async with (
        serve_handler(Mirror, name="m", init_error="m: module 'x' failed to import") as site,
        connect(site.path) as client,
    ):
        assert (await client.info()).provides == pb.STREAM
        response = await client.init()
    assert not response.success and response.error == "m: module 'x' failed to import"


# ---------------------------------------------------------------- flow control


async def test_memory_stays_bounded_while_the_handler_is_blocked() -> None:
    RELEASE.clear()
    ENTERED.clear()
    limits = Limits(read_size=16 * 1024, queue_chunks=2)
    total = points(40_000)
    async with serve_handler(Sleepy, limits=limits) as site, connect(site.path) as client:
        await started(client)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.send_points, total)
            await anyio.to_thread.run_sync(ENTERED.wait, 10)
            # give the reader every chance to over-read, then measure
            for _ in range(50):
                await anyio.sleep(0.01)
            read_while_blocked = site.stats.bytes_in
            RELEASE.set()
        out = await client.finish()
    assert len(out) == len(total)
    sent_bytes = sum(len(wire.point_frame(p)) for p in total)
    # queued chunks + the chunk in the runner + the one the reader holds + handshake
    bound = (limits.queue_chunks + 3) * limits.read_size
    print(f"\nread while blocked: {read_while_blocked} of {sent_bytes} bytes (bound {bound})")
    assert read_while_blocked <= bound < sent_bytes


async def test_many_concurrent_connections() -> None:
    async def one(index: int) -> None:
        sent = points(2000, group=f"c{index}")
        async with connect(site.path) as client:
            await started(client)
            await client.send_points(sent)
            assert await client.finish() == sent

    async with serve_handler(Mirror) as site:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert site.stats.connections_total == 40
        assert site.stats.points_out == 80_000


# ---------------------------------------------------------------- failure isolation


class Exits(udfd.Handler[udfd.NoOptions]):
    """Code ported from a standalone script: calls sys.exit on bad input."""

    def point(self, point: udfd.Point) -> udfd.Output:
        if point.fieldsDouble["value"] < 0:
            raise SystemExit("bad input")
        return point


async def test_sys_exit_in_a_handler_ends_only_its_connection() -> None:
    async with serve_handler(Exits, name="exits", error_policy="drop") as site:
        async with connect(site.path) as bad, connect(site.path) as good:
            await started(bad)
            await started(good)
            await bad.send_points([*points(2), udfd.make_point("cpu", 9, {"value": -1.0})])
            # even under the drop policy: SystemExit is not a data problem
            assert await bad.wait_error() == "exits: SystemExit: bad input"
            assert len(bad.output) == 2
            await good.send_points(points(10))
            assert len(await good.finish()) == 10


class FlushesOnTheLoop(udfd.Handler[udfd.NoOptions]):
    """Calls request_flush from a callback on the event loop thread itself."""

    def init(self) -> None:
        self.pending: list[udfd.Point] = []

    def point(self, point: udfd.Point) -> udfd.Output:
        self.pending.append(udfd.derive(point, {"flushed": True}))
        self.context.request_flush()
        return None

    def flush(self) -> udfd.Output:
        out, self.pending = self.pending, []
        return out


async def test_request_flush_on_the_event_loop_thread_does_not_block_it() -> None:
    async with serve_handler(FlushesOnTheLoop) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(points(4))
        assert len(await client.wait_output(4)) == 4
        await client.keepalive()  # the loop is alive
        await client.finish()


class GeneratorFailsMidBatch(udfd.Handler[udfd.NoOptions]):
    wants = udfd.Edge.BATCH
    provides = udfd.Edge.BATCH

    def init(self) -> None:
        self.points: list[udfd.Point] = []

    def point(self, point: udfd.Point) -> udfd.Output:
        self.points.append(point)
        return None

    def end_batch(self, end: udfd.EndBatch) -> Iterable[Any]:
        batch, self.points = self.points, []
        yield udfd.BeginBatch(name=end.name, size=10**12)  # a wild size
        for p in batch:
            if p.fieldsDouble["value"] < 0:
                raise ValueError("cannot handle negative values")
            yield p
        yield end


async def test_a_failure_halfway_through_output_sends_nothing_half_framed() -> None:
    def batch(values: list[float]) -> tuple[pb.BeginBatch, list[pb.Point], pb.EndBatch]:
        pts = [pb.Point(time=i, fieldsDouble={"value": v}) for i, v in enumerate(values)]
        return pb.BeginBatch(name="b", size=len(pts)), pts, pb.EndBatch(name="b", tmax=9)

    async with (
        serve_handler(GeneratorFailsMidBatch, error_policy="drop") as site,
        connect(site.path) as client,
    ):
        await started(client)
        await client.send_batch(*batch([1.0, -1.0, 2.0]))
        await client.send_batch(*batch([3.0, 4.0]))
        out = await client.finish()
    assert client.errors == []
    # the failed batch left no trace; the next one is whole, with its exact size
    assert [type(m) for m in out] == [pb.BeginBatch, pb.Point, pb.Point, pb.EndBatch]
    assert out[0].size == 2
    assert site.stats.dropped == 1


class ValidatorBreaks(udfd.Options):
    mode: str = "a"

    @pydantic.field_validator("mode")
    @classmethod
    def _lookup(cls, value: str) -> str:
        return {"a": "alpha"}[value]  # KeyError for anything else: not a ValueError


class UsesValidator(udfd.Handler[ValidatorBreaks]):
    pass


async def test_init_is_answered_when_an_options_validator_raises_anything() -> None:
    async with serve_handler(UsesValidator, name="v") as site, connect(site.path) as client:
        response = await client.init({"mode": "zzz"})
    assert not response.success
    assert response.error.startswith("v: ")
    assert "zzz" in response.error


@pytest.mark.parametrize(
    "bad_frame",
    [b"\x8a\x01\x02\xff\xff", b"\x1a\x05\x08\xff\xff"],
    ids=["undecodable-point-on-the-fast-path", "undecodable-keepalive"],
)
async def test_frames_before_an_undecodable_one_in_the_same_read_are_kept(
    bad_frame: bytes,
) -> None:
    good = b"".join(wire.point_frame(p) for p in points(5))
    async with serve_handler(Mirror) as site, connect(site.path) as client:
        await started(client)
        await client.send_raw(good + encode_frame(bad_frame))  # one write, one read
        error = await client.wait_error()
        await client.wait_closed()
    assert error.startswith("udfd: protocol error:")
    assert len(client.output) == 5
    assert site.stats.protocol_errors == 1


async def test_a_peer_that_never_reads_cannot_grow_our_memory() -> None:
    """Info requests answered inline still stop the reader when output piles up."""
    info_frame = wire.request_frame(pb.Request(info=pb.InfoRequest()))
    flood = info_frame * 2_000_000  # 4 MB of requests, ~100 MB of answers
    async with serve_handler(EchoOptions) as site:
        stream = await anyio.connect_unix(site.path)
        async with stream:
            with anyio.move_on_after(3):
                await stream.send(flood)  # stalls: udfd stops reading, never reads ahead
            read = site.stats.bytes_in
    print(f"\nread {read} of {len(flood)} bytes before the reader stopped")
    assert read < len(flood) // 4


GATE = threading.Event()


class Gated(udfd.Handler[udfd.NoOptions]):
    """Threaded; every point waits until the test opens the gate."""

    threaded = True

    def point(self, point: udfd.Point) -> udfd.Output:
        GATE.wait(30)
        return point


async def test_keepalive_is_not_queued_behind_a_backlog() -> None:
    GATE.clear()
    async with serve_handler(Gated) as site, connect(site.path) as client:
        await started(client)
        await client.send_points(points(1500))  # queued: the handler cannot take any yet
        latency = await client.keepalive()
        # answered while all 1500 points were still waiting for the handler
        assert client.output == []
        GATE.set()
        assert len(await client.finish()) == 1500
    print(f"\nkeepalive behind a backlog of 1500 points: {latency * 1e3:.1f} ms")


class BeginsEarly(udfd.Handler[udfd.NoOptions]):
    """Emits its BeginBatch from begin_batch; end_batch fails on a marked batch."""

    wants = udfd.Edge.BATCH
    provides = udfd.Edge.BATCH

    def begin_batch(self, begin: udfd.BeginBatch) -> udfd.Output:
        return udfd.BeginBatch(name=begin.name)

    def point(self, point: udfd.Point) -> udfd.Output:
        return point

    def end_batch(self, end: udfd.EndBatch) -> udfd.Output:
        if end.name == "bad":
            raise RuntimeError("cannot finish this batch")
        return end


async def test_a_dropped_end_batch_failure_does_not_break_the_next_batch() -> None:
    pts = [pb.Point(time=i, fieldsDouble={"value": 1.0}) for i in range(3)]
    async with (
        serve_handler(BeginsEarly, error_policy="drop") as site,
        connect(site.path) as client,
    ):
        await started(client)
        await client.send_batch(pb.BeginBatch(name="bad"), pts, pb.EndBatch(name="bad"))
        await client.send_batch(pb.BeginBatch(name="good"), pts, pb.EndBatch(name="good"))
        out = await client.finish()
    assert client.errors == []
    assert [type(m) for m in out] == [pb.BeginBatch, pb.Point, pb.Point, pb.Point, pb.EndBatch]
    assert out[0].name == "good"
    assert out[0].size == 3
    assert site.stats.dropped == 1


async def test_an_undecodable_point_ends_the_connection_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Kapacitor is told, and so is udfd's own log: no error ends a connection silently
    body = b"\x8a\x01\x04\xff\xff\xff\xff"  # Request{point} whose point is not protobuf
    async with serve_handler(BadOutput) as site, connect(site.path) as client:
        await started(client)
        await client.send_raw(bytes([len(body)]) + body)
        error = await client.wait_error()
    assert "protocol error" in error
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("protocol error" in m and "corrupt" in m for m in logged), logged


class BrokenSnapshot(udfd.Handler):
    def point(self, point: pb.Point) -> udfd.Output:
        return point

    def snapshot(self) -> bytes:
        raise RuntimeError("state is inconsistent")


@pytest.mark.parametrize("policy", ["error", "drop"])
async def test_a_failing_snapshot_ends_the_task_instead_of_answering_empty(policy: str) -> None:
    # an empty SnapshotResponse would be stored by Kapacitor over its last good snapshot
    async with (
        serve_handler(BrokenSnapshot, error_policy=policy) as site,
        connect(site.path) as client,
    ):
        await started(client)
        await client.send_points(points(3))
        with pytest.raises(UdfError, match="snapshot failed: RuntimeError: state is inconsistent"):
            await client.snapshot()
    assert site.stats.handler_errors == 1


class PickyBatches(udfd.BatchHandler):
    def begin_batch(self, begin: pb.BeginBatch) -> udfd.Output:
        if begin.group == "bad":
            raise RuntimeError("cannot open this batch")
        return super().begin_batch(begin)


async def test_a_failing_begin_batch_under_drop_drops_that_batch_only() -> None:
    from udfd.testing import check_batch_framing, make_batch

    batches = [
        make_batch("m", [(i, {"v": float(i)}) for i in range(4)], group=group)
        for group in ("good", "bad", "good")
    ]
    async with serve_handler(PickyBatches, error_policy="drop") as site:
        run = await run_task(site.path, batches=batches)
    assert run.errors == []  # the connection went on
    got = check_batch_framing(run.output, [batches[0], batches[2]])
    assert [len(b) for b in got] == [4, 4]
    assert site.stats.points_in == 12 and site.stats.dropped == 1 + 4  # begin, then its points


class RecordsClose(udfd.Handler):
    closed: ClassVar[list[str]] = []

    def point(self, point: pb.Point) -> udfd.Output:
        return point

    def close(self) -> udfd.Output:
        RecordsClose.closed.append(self.context.task_id)
        return udfd.make_point("farewell", 0, {"n": 1.0})


async def test_a_connection_reset_is_not_a_clean_end_of_input(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket as socket_module

    RecordsClose.closed.clear()
    async with serve_handler(RecordsClose) as site:
        with socket_module.socket(socket_module.AF_UNIX) as raw:
            raw.connect(str(site.path))
            init = pb.Request(init=pb.InitRequest(taskID="reset-task"))
            raw.sendall(wire.request_frame(init))
            raw.sendall(b"".join(wire.point_request_frame(p) for p in points(50)))
            await anyio.sleep(0.3)  # udfd answers; the answers wait unread in our buffer
        # closed with unread data: the kernel resets the connection (ECONNRESET at udfd)
        for _ in range(100):
            if "connection lost while reading" in caplog.text:
                break
            await anyio.sleep(0.05)
        clean = await run_task(site.path, points=points(2))
    assert "connection lost while reading: ECONNRESET" in caplog.text
    assert RecordsClose.closed[0] == "reset-task"  # close() still ran, quietly
    assert clean.points[-1].name == "farewell"  # a clean end still sends close()'s output


class Interrupted(udfd.Handler):
    def point(self, point: pb.Point) -> udfd.Output:
        raise KeyboardInterrupt


async def test_a_keyboardinterrupt_raised_by_a_handler_ends_only_its_connection() -> None:
    # handler code never runs on the main thread, where a real Ctrl-C arrives: a
    # KeyboardInterrupt in a callback is the handler's own raise. It is not dropped like a
    # point (not even under drop), and it does not stop the daemon: it ends this connection.
    async with serve_handler(Interrupted, error_policy="drop") as site:
        run = await run_task(site.path, points=points(3))
        neighbour = await run_task(site.path)  # the function still serves
    assert any("KeyboardInterrupt" in e for e in run.errors)
    assert neighbour.init.success and site.stats.dropped == 0
