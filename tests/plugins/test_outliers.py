"""outliers over a real socket; quartiles checked against numpy.percentile (linear)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from udfd_handlers.outliers import Outliers, quantile

from udfd import fields
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

pytestmark = pytest.mark.anyio

NUMPY_REASON = "numpy (the reference for quartiles) is not installed; pip install -e '.[dev]'"


def rows(values: list[Any], start: int = 0) -> list[tuple[int, dict[str, Any]]]:
    return [(start + i, {"value": v}) for i, v in enumerate(values)]


def values_of(points: list[pb.Point]) -> list[float]:
    return [p.fieldsDouble.get("value", p.fieldsInt.get("value")) for p in points]  # type: ignore[misc]


async def test_info() -> None:
    from udfd.protocol.client import probe_info

    async with serve_handler(Outliers) as site:
        info = await probe_info(site.path)
    assert info.wants == info.provides == pb.BATCH
    assert list(info.options["scale"].valueTypes) == [pb.DOUBLE]
    assert list(info.options["mark"].valueTypes) == [pb.STRING]
    assert list(info.options["inliers"].valueTypes) == []


async def test_hand_computed_batch(drive: Any, make_batch: Any, framed: Any) -> None:
    # sorted 1..9, 100: Q1 at position 2.25 → 3.25, Q3 at 6.75 → 7.75, IQR 4.5,
    # fences -3.5 and 14.5: only 100 is out; with scale 0.1 fences are 2.8 and 8.2
    data = [5, 1, 100, 2, 9, 3, 8, 4, 7, 6]
    b = make_batch("cpu", "host=a", {"host": "a"}, rows([float(v) for v in data]))
    async with serve_handler(Outliers) as site:
        out = await drive(site, {"field": "value"}, batches=[b])
        tight = await drive(site, {"field": "value", "scale": 0.1}, batches=[b])
        inl = await drive(site, {"field": "value", "inliers": ()}, batches=[b])
        marked = await drive(site, {"field": "value", "mark": "outlier"}, batches=[b])
    assert out.errors == []
    assert values_of(framed(out.output, [b])[0]) == [100.0]
    assert values_of(framed(tight.output, [b])[0]) == [1.0, 100.0, 2.0, 9.0]
    assert values_of(framed(inl.output, [b])[0]) == [5.0, 1.0, 2.0, 9.0, 3.0, 8.0, 4.0, 7.0, 6.0]
    (all_points,) = framed(marked.output, [b])
    assert [(p.time, p.fieldsBool["outlier"]) for p in all_points] == [
        (i, v == 100) for i, v in enumerate(data)
    ]
    # points keep their time, tags, group and fields
    for src, got in zip(b[1], all_points, strict=True):
        assert (got.time, dict(got.tags), got.group) == (src.time, dict(src.tags), src.group)
        assert fields(got) == {**fields(src), "outlier": got.fieldsBool["outlier"]}


async def test_framing_echoes_request(drive: Any, make_batch: Any, framed: Any) -> None:
    b = make_batch("disk", "host=x,path=/", {"host": "x", "path": "/"}, rows([1.0, 2.0, 50.0]))
    b[2].tmax = 123_456_789  # tmax is the query's, not a point's
    async with serve_handler(Outliers) as site:
        run = await drive(site, {"field": "value", "mark": "o"}, batches=[b])
    begin, *_, end = run.output
    assert isinstance(begin, pb.BeginBatch) and isinstance(end, pb.EndBatch)
    assert (begin.name, begin.group, dict(begin.tags), begin.size) == (
        "disk",
        "host=x,path=/",
        {"host": "x", "path": "/"},
        3,
    )
    assert (end.name, end.group, dict(end.tags), end.tmax) == (
        "disk",
        "host=x,path=/",
        {"host": "x", "path": "/"},
        123_456_789,
    )
    framed(run.output, [b])


async def test_small_batches(drive: Any, make_batch: Any, framed: Any) -> None:
    empty = make_batch("m", "g", {}, [])
    one = make_batch("m", "g", {}, rows([42.0]))
    two = make_batch("m", "g", {}, rows([1.0, 1000.0]))
    batches = [empty, one, two]
    async with serve_handler(Outliers) as site:
        default = await drive(site, {"field": "value"}, batches=batches)
        marked = await drive(site, {"field": "value", "mark": "o"}, batches=batches)
        tight = await drive(site, {"field": "value", "scale": 0.25}, batches=batches)
    assert framed(default.output, batches) == [[], [], []]
    assert isinstance(default.output[0], pb.BeginBatch) and default.output[0].size == 0
    assert [[p.fieldsBool["o"] for p in b] for b in framed(marked.output, batches)] == [
        [],
        [False],
        [False, False],
    ]
    # two points a < b: fences a + (0.25 - 0.5k)(b - a) and a + (0.75 + 0.5k)(b - a),
    # so for k < 0.5 both points lie outside
    assert [values_of(b) for b in framed(tight.output, batches)] == [[], [], [1.0, 1000.0]]


async def test_bad_points_are_dropped_alone(drive: Any, make_batch: Any, framed: Any) -> None:
    good = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 60.0]
    b = make_batch("m", "g", {}, rows(good))
    b[1].insert(3, pb.Point(time=99, group="g", fieldsString={"value": "n/a"}))
    b[1].insert(5, pb.Point(time=98, group="g", fieldsDouble={"other": 1.0}))
    b[1].insert(6, pb.Point(time=97, group="g", fieldsDouble={"value": math.nan}))
    async with serve_handler(Outliers) as site:
        run = await drive(site, {"field": "value", "mark": "o"}, batches=[b])
        dropped = site.stats.dropped
    assert run.errors == []
    (points,) = framed(run.output, [b])
    assert values_of(points) == good
    assert [p.fieldsBool["o"] for p in points] == [v == 60.0 for v in good]
    assert dropped == 3


async def test_ints_are_ranked_too(drive: Any, make_batch: Any, framed: Any) -> None:
    b = make_batch("m", "g", {}, rows([10, 11, 12, 13, -500]))
    async with serve_handler(Outliers) as site:
        run = await drive(site, {"field": "value"}, batches=[b])
    assert [p.fieldsInt["value"] for p in framed(run.output, [b])[0]] == [-500]


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({}, ["'field' is required"]),
        ({"field": "v", "scale": 2}, ["'scale'", "expects .scale(float)", "got .scale(int)"]),
        ({"field": "v", "scale": -1.0}, ["'scale'", "greater than or equal to 0"]),
        ({"field": "v", "mark": "o", "inliers": ()}, [".mark()", ".inliers()"]),
        ({"field": "v", "mark": "v"}, [".mark('v')", "overwrite"]),
    ],
)
async def test_option_errors(drive: Any, options: dict[str, Any], mentions: list[str]) -> None:
    async with serve_handler(Outliers) as site:
        run = await drive(site, options)
    assert not run.init.success
    for text in mentions:
        assert text in run.init.error, run.init.error


async def test_nothing_to_snapshot(drive: Any, make_batch: Any) -> None:
    async with serve_handler(Outliers) as site:
        run = await drive(
            site, {"field": "value"}, batches=[make_batch("m", "g", {}, rows([1.0]))], snapshot=True
        )
    assert run.snapshot == b""  # Kapacitor then sends no Restore


def test_quantile_matches_numpy_on_odd_and_even_sizes() -> None:
    np = pytest.importorskip("numpy", reason=NUMPY_REASON)
    rng = random.Random(5)
    for n in range(1, 60):
        for _ in range(20):
            data = sorted(
                rng.choice([rng.gauss(0, 1), rng.uniform(-1e6, 1e6), rng.randint(-3, 3)])
                for _ in range(n)
            )
            for q in (0.25, 0.5, 0.75):
                want = float(np.percentile(np.array(data, dtype=float), q * 100))
                assert quantile([float(x) for x in data], q) == want, (n, q, data)


async def test_many_batches_against_numpy(drive: Any, make_batch: Any, framed: Any) -> None:
    np = pytest.importorskip("numpy", reason=NUMPY_REASON)
    rng = random.Random(1234)
    batches = []
    t = 0
    for i in range(1500):
        n = rng.choice([0, 1, 2, 3, 4, rng.randint(5, 150)])
        values: list[float] = []
        for _ in range(n):
            v = rng.gauss(100, 10)
            if rng.random() < 0.05:
                v *= rng.choice([-3, 5, 20])
            if rng.random() < 0.05:
                v = round(v)  # ties
            values.append(v)
        g = f"host=h{i % 50:02d}"
        batches.append(make_batch("cpu", g, {"host": g[5:]}, rows(values, t)))
        t += n
    scale = 1.5
    async with serve_handler(Outliers) as site:
        out = await drive(site, {"field": "value", "scale": scale}, batches=batches)
        marked = await drive(site, {"field": "value", "scale": scale, "mark": "o"}, batches=batches)
    got_out = framed(out.output, batches)
    got_marked = framed(marked.output, batches)
    found = 0
    for b, got, mk in zip(batches, got_out, got_marked, strict=True):
        vals = np.array([float(fields(p)["value"]) for p in b[1]], dtype=float)
        if len(vals) == 0:
            assert got == [] and mk == []
            continue
        q1, q3 = np.percentile(vals, [25, 75])
        lo, hi = q1 - scale * (q3 - q1), q3 + scale * (q3 - q1)
        want = [p.time for p, v in zip(b[1], vals, strict=True) if v < lo or v > hi]
        assert [p.time for p in got] == want
        assert [p.time for p in mk if p.fieldsBool["o"]] == want
        assert len(mk) == len(b[1])
        found += len(want)
    assert found > 100
