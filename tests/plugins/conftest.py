"""Shared driver for the first-party handler tests: real socket, real engine, real client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from udfd.client import connect
from udfd.proto import udf_pb2 as pb
from udfd.site import Site

Message = pb.Point | pb.BeginBatch | pb.EndBatch
Batch = tuple[pb.BeginBatch, list[pb.Point], pb.EndBatch]


@dataclass
class Run:
    """What one Kapacitor-like connection saw."""

    init: pb.InitResponse
    output: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    snapshot: bytes = b""
    restore: pb.RestoreResponse | None = None

    @property
    def points(self) -> list[pb.Point]:
        return [m for m in self.output if isinstance(m, pb.Point)]


async def run_connection(
    site: Site,
    options: Mapping[str, Any],
    *,
    points: Iterable[pb.Point] = (),
    batches: Iterable[Batch] = (),
    restore: bytes | None = None,
    snapshot: bool = False,
) -> Run:
    """One task's life: Info, Init, optional Restore, data, optional Snapshot, stop."""
    async with connect(site.path) as client:
        await client.info()
        init = await client.init(options)
        run = Run(init=init)
        if not init.success:
            await client.finish()
            return run
        if restore is not None:
            run.restore = await client.restore(restore)
        await client.send_points(points)
        for begin, batch, end in batches:
            await client.send_batch(begin, batch, end)
        if snapshot:
            run.snapshot = await client.snapshot()
        run.output = list(await client.finish())
        run.errors = list(client.errors)
    return run


Driver = Callable[..., Awaitable[Run]]


@pytest.fixture
def drive() -> Driver:
    return run_connection


def batch_of(
    name: str,
    group: str,
    tags: Mapping[str, str],
    rows: Iterable[tuple[int, Mapping[str, Any]]],
) -> Batch:
    """A batch shaped as Kapacitor sends it: points carry only time, group, tags, fields."""
    from udfd import make_point

    points = [make_point("", t, f, tags, group=group) for t, f in rows]
    begin = pb.BeginBatch(name=name, group=group, tags=tags, size=len(points))
    tmax = max((p.time for p in points), default=0)
    end = pb.EndBatch(name=name, group=group, tags=tags, tmax=tmax)
    return begin, points, end


@pytest.fixture
def make_batch() -> Callable[..., Batch]:
    return batch_of


def check_framing(output: list[Message], requests: list[Batch]) -> list[list[pb.Point]]:
    """Assert Begin(size exact)/points/End per request, echoing it; return each batch's points."""
    result: list[list[pb.Point]] = []
    i = 0
    for begin, _, end in requests:
        out_begin = output[i]
        assert isinstance(out_begin, pb.BeginBatch), f"expected BeginBatch at {i}: {out_begin}"
        assert out_begin.name == begin.name
        assert dict(out_begin.tags) == dict(begin.tags)
        assert out_begin.size >= 0
        i += 1
        points: list[pb.Point] = []
        while isinstance(output[i], pb.Point):
            points.append(output[i])  # type: ignore[arg-type]
            i += 1
        assert out_begin.size == len(points)
        out_end = output[i]
        assert isinstance(out_end, pb.EndBatch), f"expected EndBatch at {i}: {out_end}"
        assert out_end.name == end.name
        assert out_end.tmax == end.tmax
        assert dict(out_end.tags) == dict(end.tags)
        assert out_end.group == end.group
        i += 1
        result.append(points)
    assert i == len(output), "output after the last batch"
    return result


@pytest.fixture
def framed() -> Callable[[list[Message], list[Batch]], list[list[pb.Point]]]:
    return check_framing
