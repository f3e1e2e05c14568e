"""The engine features the model handlers stand on, over a real socket: ``points()`` gets
runs of points in order, ``context.drop`` drops one of them, a snapshot sees every point
before it; ``context.shared`` loads once per process; ``ConfigOnly`` options stay out of
TICKscript's reach."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, ClassVar

import pytest
from pydantic import Field

from udfd import (
    ConfigOnly,
    Handler,
    Options,
    Output,
    Point,
    PointError,
    TaskError,
    get_number,
    set_field,
)
from udfd.engine.limits import Limits
from udfd.errors import HandlerDefinitionError
from udfd.handler import MAX_POINTS_CALL, BatchHandler, inspect_handler
from udfd.protocol.client import connect
from udfd.shared import SharedResources
from udfd.testing import run_task, serve_handler

pytestmark = pytest.mark.anyio


class Doubler(Handler):
    """Records the size of each call; drops points without a value."""

    calls: ClassVar[list[int]] = []

    def points(self, points: list[Point]) -> Output:
        Doubler.calls.append(len(points))
        out = []
        for p in points:
            try:
                value = get_number(p, "value")
            except PointError as exc:
                self.context.drop(p, exc)
                continue
            set_field(p, "value", value * 2)
            out.append(p)
        return out

    def snapshot(self) -> bytes:
        return str(sum(Doubler.calls)).encode()


def point(i: int, **fields: Any) -> Point:
    from udfd import make_point

    return make_point("m", i, fields or {"value": float(i)})


async def test_runs_of_points_in_order_with_drops_counted() -> None:
    Doubler.calls.clear()
    sent = [point(i) if i % 10 else point(i, other=1.0) for i in range(10_000)]
    async with serve_handler(Doubler) as site:
        run = await run_task(site.path, points=sent)
    assert run.errors == []
    expected = [i for i in range(10_000) if i % 10]
    assert [p.time for p in run.points] == expected
    assert [p.fieldsDouble["value"] for p in run.points] == [2.0 * i for i in expected]
    assert site.stats.dropped == 1000 and site.stats.points_in == 10_000
    assert sum(Doubler.calls) == 10_000
    assert max(Doubler.calls) <= MAX_POINTS_CALL
    assert len(Doubler.calls) < 10_000 / 10  # runs, not one call per point


async def test_a_snapshot_sees_every_point_sent_before_it() -> None:
    Doubler.calls.clear()
    async with serve_handler(Doubler) as site, connect(site.path) as client:
        await client.info()
        assert (await client.init({})).success
        await client.send_points([point(i) for i in range(777)])
        assert await client.snapshot() == b"777"
        await client.finish()


class Failing(Handler):
    def points(self, points: list[Point]) -> Output:
        raise RuntimeError("model exploded")


async def test_an_exception_in_points_follows_the_error_policy() -> None:
    async with serve_handler(Failing, error_policy="drop") as site:
        run = await run_task(site.path, points=[point(i) for i in range(50)])
    assert run.points == [] and run.errors == []
    assert site.stats.dropped == 50  # every point of the failed run is counted
    async with serve_handler(Failing) as site:
        run = await run_task(site.path, points=[point(i) for i in range(5)])
    assert any("model exploded" in e for e in run.errors)


def test_points_is_refused_where_it_cannot_work() -> None:
    class AsyncPoints(Handler):
        async def points(self, points: list[Point]) -> Output:  # type: ignore[override]
            return points

    class BatchPoints(BatchHandler):
        def points(self, points: list[Point]) -> Output:
            return points

    with pytest.raises(HandlerDefinitionError, match="plain function"):
        inspect_handler(AsyncPoints)
    with pytest.raises(HandlerDefinitionError, match="stream handlers"):
        inspect_handler(BatchPoints)
    assert inspect_handler(Doubler).vectorised and not inspect_handler(Failing.__base__).vectorised


def test_shared_loads_once_under_concurrent_callers() -> None:
    shared = SharedResources()
    loads: list[int] = []

    def load() -> object:
        loads.append(1)
        time.sleep(0.2)  # slow: the other callers arrive while it runs
        return object()

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(shared.get("k", load))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len({id(r) for r in results}) == 1
    assert shared.loads == 1 and shared.hits == 7


def test_a_failed_load_is_not_cached() -> None:
    shared = SharedResources()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("file not there yet")
        return "model"

    with pytest.raises(OSError, match="not there yet"):
        shared.get("k", flaky)
    assert shared.get("k", flaky) == "model" and len(attempts) == 2


class Trusting(Handler["TrustingOptions"]):
    def point(self, point: Point) -> Output:
        set_field(point, "dirs", ",".join(self.options.trusted_dirs))
        return point


class TrustingOptions(Options):
    size: int = 1
    trusted_dirs: Annotated[list[str], ConfigOnly] = Field(default_factory=list)


Trusting.options_model = TrustingOptions


async def test_config_only_options_are_not_in_info_and_cannot_be_set_by_a_task() -> None:
    async with serve_handler(Trusting, defaults={"trusted_dirs": ["/srv/models"]}) as site:
        async with connect(site.path) as client:
            info = await client.info()
            assert set(info.options) == {"size"}
            await client.finish()
        refused = await run_task(site.path, {"trusted_dirs": "/tmp"})
        run = await run_task(site.path, {"size": 2}, points=[point(1)])
    assert not refused.init.success and "unknown option 'trusted_dirs'" in refused.init.error
    assert run.points[0].fieldsString["dirs"] == "/srv/models"


class DropsThenFails(Handler):
    def points(self, points: list[Point]) -> Output:
        for p in points[:3]:
            self.context.drop(p, PointError("not this one"))
        raise RuntimeError("and then the model failed")


class StopsTheTask(Handler):
    def points(self, points: list[Point]) -> Output:
        raise TaskError("sensor table is gone")


async def test_a_lost_run_counts_each_of_its_points_once() -> None:
    async with (
        serve_handler(DropsThenFails, error_policy="drop") as site,
        connect(site.path) as client,
    ):
        await client.info()
        assert (await client.init({})).success
        await client.send_points([point(i) for i in range(10)])
        await client.keepalive()  # after the run: the ten points are handled
        await client.finish()
    assert site.stats.points_in == 10 and site.stats.dropped == 10
    async with serve_handler(StopsTheTask, error_policy="drop") as site:
        run = await run_task(site.path, points=[point(i) for i in range(10)])
    assert any("sensor table is gone" in e for e in run.errors)
    assert site.stats.dropped == 0  # the task stopped: nothing was dropped and carried on


class LongLoop(Handler):
    """One call of ~1.5 s in short steps, each reported with context.progressed()."""

    def points(self, points: list[Point]) -> Output:
        for _ in range(30):
            time.sleep(0.05)
            self.context.progressed()
        return points


async def test_a_long_call_that_reports_progress_is_not_ended() -> None:
    limits = Limits(handler_timeout=0.5, slow_call=0.3)
    async with serve_handler(LongLoop, limits=limits) as site:
        run = await run_task(site.path, points=[point(1)])
    assert run.errors == [] and [p.time for p in run.points] == [1]
    assert site.stats.handler_timeouts == 0


def test_a_new_version_under_one_name_retires_the_old_entry() -> None:
    shared = SharedResources()
    first = shared.get(("model", "v1"), lambda: "one", replaces="path")
    second = shared.get(("model", "v2"), lambda: "two", replaces="path")
    other = shared.get(("model", "x"), lambda: "other", replaces="elsewhere")
    assert (first, second, other) == ("one", "two", "other")
    assert sorted(str(e.key) for e in shared.entries()) == ["('model', 'v2')", "('model', 'x')"]
