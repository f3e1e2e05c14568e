"""moving_average over a real socket, against exact rational arithmetic (fractions)."""

from __future__ import annotations

import math
import random
from collections import deque
from fractions import Fraction
from typing import Any

import pytest
from udfd_handlers.moving_average import MovingAverage

from udfd import fields, make_point
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

pytestmark = pytest.mark.anyio


def series(values: list[Any], group: str = "host=a", name: str = "cpu") -> list[pb.Point]:
    return [
        make_point(
            name,
            i,
            {"value": v, "other": "x"},
            {"host": group[5:]},
            group=group,
            dimensions=["host"],
        )
        for i, v in enumerate(values)
    ]


def exact_means(values: list[int | float], size: int) -> list[float]:
    """Correctly rounded mean of each window, by exact rational arithmetic."""
    window: deque[Fraction] = deque()
    total = Fraction(0)
    out = []
    for v in values:
        f = Fraction(v)
        window.append(f)
        total += f
        if len(window) > size:
            total -= window.popleft()
        out.append(float(total / len(window)))
    return out


def mean_of(values: list[int | float]) -> float:
    """IEEE semantics for non-finite values, exact rational mean otherwise."""
    if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
        return math.nan
    if math.inf in values or -math.inf in values:
        return math.inf if math.inf in values else -math.inf
    return float(sum(map(Fraction, values)) / len(values))


def averages(run: Any, name: str = "avg") -> list[float]:
    return [p.fieldsDouble[name] for p in run.points]


async def test_info() -> None:
    from udfd.protocol.client import probe_info

    async with serve_handler(MovingAverage) as site:
        info = await probe_info(site.path)
    assert info.wants == info.provides == pb.STREAM
    assert list(info.options["size"].valueTypes) == [pb.INT]
    assert list(info.options["as"].valueTypes) == [pb.STRING]
    assert list(info.options["fullOnly"].valueTypes) == []


async def test_cumulative_until_full_then_sliding(drive: Any) -> None:
    pts = series([1, 2, 3, 4, 5])
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": 3}, points=pts)
        full = await drive(site, {"field": "value", "size": 3, "fullOnly": ()}, points=pts)
        named = await drive(site, {"field": "value", "size": 2, "as": "mean"}, points=pts)
    assert averages(run) == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert [p.time for p in full.points] == [2, 3, 4]
    assert averages(full) == [2.0, 3.0, 4.0]
    assert averages(named, "mean") == [1.0, 1.5, 2.5, 3.5, 4.5]
    # only the average, with the input's time and identity
    for src, out in zip(pts, run.points, strict=True):
        assert fields(out) == {"avg": out.fieldsDouble["avg"]}
        assert (out.time, out.name, out.group, list(out.dimensions), dict(out.tags)) == (
            src.time,
            src.name,
            src.group,
            list(src.dimensions),
            dict(src.tags),
        )


async def test_ints_and_floats_mix(drive: Any) -> None:
    values: list[Any] = [2**62, 1, 0.5, -(2**62), 3]
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": 4}, points=series(values))
    assert averages(run) == exact_means(values, 4)


async def test_no_drift_after_a_huge_value_passes(drive: Any) -> None:
    # A running float sum loses the 1s next to 1e17 and keeps the loss for ever.
    values: list[float] = [1e17] + [1.0] * 20 + [-3e16, 0.1, 0.2, 0.3] * 5
    size = 3
    naive, window = 0.0, deque[float]()
    naive_out = []
    for v in values:
        window.append(v)
        naive += v
        if len(window) > size:
            naive -= window.popleft()
        naive_out.append(naive / len(window))
    reference = exact_means(values, size)
    assert naive_out != reference  # the data does expose drift
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": size}, points=series(values))
    assert averages(run) == reference
    assert averages(run)[5] == 1.0


async def test_long_run_single_group_is_exact(drive: Any) -> None:
    rng = random.Random(7)
    values: list[float] = []
    for i in range(200_000):
        v = 1e9 + rng.uniform(-1, 1)
        if i % 997 == 0:
            v = rng.choice([1e16, -1e16, 1e-9])
        values.append(v)
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": 50}, points=series(values))
    assert run.errors == []
    got = averages(run)
    assert got == exact_means(values, 50)
    # and fsum-based means (double rounding) are within one ulp
    assert all(
        abs(g - math.fsum(values[max(0, i - 49) : i + 1]) / min(i + 1, 50)) <= math.ulp(g)
        for i, g in enumerate(got[:2000])
    )


async def test_many_groups_interleaved_against_reference(drive: Any) -> None:
    rng = random.Random(99)
    groups = [f"host=h{i:02d}" for i in range(50)]
    rows: list[tuple[str, int | float]] = []
    for _ in range(100_000):
        g = rng.choice(groups)
        v: int | float = rng.randint(-1000, 1000) if rng.random() < 0.3 else rng.gauss(50, 20)
        rows.append((g, v))
    pts = [
        make_point("cpu", t, {"value": v}, {"host": g[5:]}, group=g, dimensions=["host"])
        for t, (g, v) in enumerate(rows)
    ]
    size = 7
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": size}, points=pts)
        full = await drive(site, {"field": "value", "size": size, "fullOnly": ()}, points=pts)
    # naive reference: one list per group, mean of its last `size` values
    history: dict[str, list[int | float]] = {g: [] for g in groups}
    want: list[tuple[int, str, float]] = []
    want_full: list[int] = []
    for t, (g, v) in enumerate(rows):
        history[g].append(v)
        last = history[g][-size:]
        want.append((t, g, float(sum(map(Fraction, last)) / len(last))))
        if len(last) == size:
            want_full.append(t)
    assert [(p.time, p.group, p.fieldsDouble["avg"]) for p in run.points] == want
    assert [p.time for p in full.points] == want_full


async def test_non_finite_values_only_while_in_the_window(drive: Any) -> None:
    inf, nan = math.inf, math.nan
    values = [1.0, inf, 2.0, 3.0, nan, 4.0, 5.0, -inf, inf, 6.0, 7.0, 8.0]
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": 2}, points=series(values))
    got = averages(run)
    want = [1.0, inf, inf, 2.5, nan, nan, 4.5, -inf, nan, inf, 6.5, 7.5]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (math.isnan(g) and math.isnan(w)) or g == w, (got, want)


async def test_bad_points_dropped(drive: Any) -> None:
    pts = [
        make_point("m", 0, {"value": 1.0}),
        make_point("m", 1, {"value": "high"}),
        make_point("m", 2, {"value": True}),
        make_point("m", 3, {"x": 1.0}),
        make_point("m", 4, {"value": 3.0}),
    ]
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": 5}, points=pts)
        dropped = site.stats.dropped
    assert run.errors == []
    assert [(p.time, p.fieldsDouble["avg"]) for p in run.points] == [(0, 1.0), (4, 2.0)]
    assert dropped == 3


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({"field": "value"}, ["'size' is required", ".size(int)"]),
        ({"size": 3}, ["'field' is required"]),
        ({"field": "value", "size": 0}, ["'size'", "greater than or equal to 1"]),
        ({"field": "value", "size": 3.0}, ["'size'", "expects .size(int)", "got .size(float)"]),
        ({"field": "value", "size": 3, "as": ""}, ["'as'"]),
    ],
)
async def test_option_errors(drive: Any, options: dict[str, Any], mentions: list[str]) -> None:
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, options)
    assert not run.init.success
    for text in mentions:
        assert text in run.init.error, run.init.error


async def test_snapshot_restore_continues_the_windows(drive: Any) -> None:
    rng = random.Random(3)
    groups = ["host=a", "host=b", "host=c"]
    rows = [
        (rng.choice(groups), rng.choice([rng.random(), rng.randint(0, 9), math.inf]))
        for _ in range(300)
    ]
    pts = [make_point("m", t, {"value": v}, group=g) for t, (g, v) in enumerate(rows)]
    opts = {"field": "value", "size": 10}
    async with serve_handler(MovingAverage) as site:
        whole = await drive(site, opts, points=pts)
        first = await drive(site, opts, points=pts[:150], snapshot=True)
        second = await drive(site, opts, points=pts[150:], restore=first.snapshot)
        smaller = await drive(
            site, {"field": "value", "size": 2}, points=pts[150:], restore=first.snapshot
        )
    assert second.restore is not None and second.restore.success
    assert [p.fieldsDouble["avg"] for p in first.points + second.points] == [
        p.fieldsDouble["avg"] for p in whole.points
    ]
    assert any(math.isinf(p.fieldsDouble["avg"]) for p in second.points)
    # a smaller window after restart keeps the most recent values of each group
    assert smaller.restore is not None and smaller.restore.success
    history: dict[str, list[Any]] = {g: [v for gg, v in rows[:150] if gg == g] for g in groups}
    want = []
    for g, v in rows[150:]:
        history[g].append(v)
        want.append(mean_of(history[g][-2:]))
    assert [p.fieldsDouble["avg"] for p in smaller.points] == want


async def test_restore_rejects_malformed_window(drive: Any) -> None:
    bad = (
        b'{"format":"udfd-state","handler":"MovingAverage","version":1,'
        b'"states":{"windows":{"g":["x"]}}}'
    )
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": 2}, restore=bad)
    assert run.restore is not None and not run.restore.success
    assert "not a list of numbers" in run.restore.error


async def test_extreme_magnitudes_are_exact(drive: Any) -> None:
    # subnormals need 1074 bits below the binary point, 1e308 over 1000 above it
    values: list[int | float] = [5e-324, 1.0, 1e308, -1e308, 2.5e-310, 3, 1e-300, 7.0]
    values += [1.5, 2.25, 2**62, 0.1, -(2**63)] * 10
    async with serve_handler(MovingAverage) as site:
        run = await drive(site, {"field": "value", "size": 3}, points=series(values))
    assert run.errors == []
    assert averages(run) == exact_means(values, 3)


def test_the_unit_comes_back_down_after_a_tiny_value_leaves() -> None:
    # the sum's integer grows with the finest unit in the window; it must not stay
    # at 2**-1074 for ever because one subnormal once passed through
    from udfd_handlers.moving_average import Window

    window = Window(4)
    for v in [1.5, 5e-324, 2.0, 3.0]:
        window.push(v)
    assert window.scale == 1074
    for v in [0.25, 4.0, 8.5, 1.0, 2.0, 3.0, 0.5, 0.75]:
        window.push(v)
    assert window.scale <= 64
    assert window.mean() == float(sum(map(Fraction, list(window.values))) / 4)
