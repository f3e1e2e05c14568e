"""state_change / state_change_batch over a real socket, against hand-derived and naive references."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Any

import pytest
from golden import ADSL, ADSL_CHANGES
from udfd_handlers.state_change import StateChange, StateChangeBatch

from udfd import fields, make_point
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

pytestmark = pytest.mark.anyio


def adsl_points(rows: list[tuple[int, str]] = ADSL) -> list[pb.Point]:
    return [
        make_point(
            "adsl_connection",
            t,
            {"value": v},
            {"host": "router1"},
            group="adsl_connection\nhost=router1",
            dimensions=["host"],
        )
        for t, v in rows
    ]


def times_values(points: list[pb.Point]) -> list[tuple[int, Any]]:
    return [(p.time, p.fieldsString["value"]) for p in points]


async def test_info_declares_edges_and_options() -> None:
    from udfd.protocol.client import probe_info

    async with serve_handler(StateChange) as site:
        info = await probe_info(site.path)
    assert info.wants == pb.STREAM and info.provides == pb.STREAM
    assert {"field", "previous", "duration", "skipFirst", "stable", "stableFor"} <= set(
        info.options
    )
    assert list(info.options["stableFor"].valueTypes) == [pb.DURATION]
    assert list(info.options["skipFirst"].valueTypes) == []
    async with serve_handler(StateChangeBatch) as site:
        info = await probe_info(site.path)
    assert info.wants == pb.BATCH and info.provides == pb.BATCH


async def test_golden_adsl(drive: Any) -> None:
    sent = adsl_points()
    async with serve_handler(StateChange) as site:
        run = await drive(site, {"field": "value"}, points=sent)
    assert run.init.success, run.init.error
    assert run.errors == []
    assert times_values(run.points) == ADSL_CHANGES
    # the emitted points are the input points, identity and all, untouched
    by_time = {p.time: p for p in sent}
    for out in run.points:
        assert out == by_time[out.time]
        assert out.name == "adsl_connection"
        assert list(out.dimensions) == ["host"]
        assert dict(out.tags) == {"host": "router1"}


async def test_default_field_is_value(drive: Any) -> None:
    async with serve_handler(StateChange) as site:
        run = await drive(site, {}, points=adsl_points())
    assert times_values(run.points) == ADSL_CHANGES


async def test_skip_first(drive: Any) -> None:
    async with serve_handler(StateChange) as site:
        run = await drive(site, {"skipFirst": ()}, points=adsl_points())
    assert times_values(run.points) == ADSL_CHANGES[1:]


async def test_previous_and_duration(drive: Any) -> None:
    async with serve_handler(StateChange) as site:
        ns = await drive(site, {"previous": "prev", "duration": "lasted"}, points=adsl_points())
        sec = await drive(
            site,
            {"previous": "prev", "duration": "lasted", "durationUnit": timedelta(seconds=1)},
            points=adsl_points(),
        )
    first = ns.points[0]
    assert "prev" not in fields(first) and "lasted" not in fields(first)
    for i in range(1, len(ADSL_CHANGES)):
        t, value = ADSL_CHANGES[i]
        t_prev, v_prev = ADSL_CHANGES[i - 1]
        assert fields(ns.points[i]) == {"value": value, "prev": v_prev, "lasted": t - t_prev}
        assert fields(sec.points[i])["lasted"] == (t - t_prev) // 10**9
    # ~90 s apart, 5 ms jitter: whole seconds truncate
    assert fields(sec.points[1])["lasted"] == 90
    assert fields(sec.points[3])["lasted"] == 449


async def test_debounce_by_count(drive: Any) -> None:
    # S T S S S S S T T T T S S T T T T, stable(3):
    # the first state S is confirmed by its 3rd point in a row (index 4) and reported
    # as the point where that run began (index 2); T (7..10) is reported at index 7;
    # the S run at 11..12 is too short; T at 13 is the current state again.
    async with serve_handler(StateChange) as site:
        run = await drive(site, {"stable": 3}, points=adsl_points())
        skip = await drive(site, {"stable": 3, "skipFirst": ()}, points=adsl_points())
        prev = await drive(site, {"stable": 3, "duration": "lasted"}, points=adsl_points())
    assert times_values(run.points) == [ADSL[2], ADSL[7]]
    assert times_values(skip.points) == [ADSL[7]]
    # the state S began at ADSL[2] (the short T blip at 1 never counted)
    assert fields(prev.points[1])["lasted"] == ADSL[7][0] - ADSL[2][0]


async def test_debounce_by_duration(drive: Any) -> None:
    minute = 60 * 10**9
    rows = [
        (0, "ok"),
        (1 * minute, "bad"),  # lasts 1 min only: never reported
        (2 * minute, "ok"),
        (3 * minute, "bad"),
        (4 * minute, "bad"),
        (5 * minute, "bad"),  # seen for 2 min now
        (6 * minute, "ok"),
    ]
    pts = [make_point("m", t, {"value": v}, {"h": "a"}, group="h=a") for t, v in rows]
    async with serve_handler(StateChange) as site:
        two = await drive(site, {"stableFor": timedelta(minutes=2)}, points=pts)
        both = await drive(site, {"stableFor": timedelta(minutes=2), "stable": 4}, points=pts)
    # each state is interrupted within 2 min until "bad" runs from 3 to 5 min: it is
    # confirmed at 5 min and reported as the point at 3 min; "ok" at 6 is too recent
    assert [(p.time, p.fieldsString["value"]) for p in two.points] == [(3 * minute, "bad")]
    # stable(4) additionally needs four points in a row: never reached
    assert both.points == []


async def test_type_aware_comparison(drive: Any) -> None:
    values: list[Any] = [1, 1, 1.0, 1.0, "1", True, 1, math.nan, math.nan, 0.0, -0.0]
    pts = [make_point("m", i, {"value": v}) for i, v in enumerate(values)]
    async with serve_handler(StateChange) as site:
        run = await drive(site, {}, points=pts)
    # int 1 → float 1.0 → string "1" → bool true → int 1 are all changes; NaN is one
    # state; 0.0 and -0.0 are equal
    assert [p.time for p in run.points] == [0, 2, 4, 5, 6, 7, 9]
    assert run.points[3].fieldsBool["value"] is True


async def test_string_normalisation(drive: Any) -> None:
    values = ["Up", "UP", " up ", "up", "Down"]
    pts = [make_point("m", i, {"value": v}) for i, v in enumerate(values)]
    async with serve_handler(StateChange) as site:
        plain = await drive(site, {}, points=pts)
        case = await drive(site, {"ignoreCase": ()}, points=pts)
        trim = await drive(site, {"trim": ()}, points=pts)
        both = await drive(site, {"normalize": ()}, points=pts)
    assert [p.time for p in plain.points] == [0, 1, 2, 3, 4]
    assert [p.time for p in case.points] == [0, 2, 3, 4]
    assert [p.time for p in trim.points] == [0, 1, 2, 4]
    assert [p.time for p in both.points] == [0, 4]
    # values are emitted as they came, not normalised
    assert both.points[0].fieldsString["value"] == "Up"


async def test_several_fields_with_previous_template(drive: Any) -> None:
    rows = [(0, 1, "a"), (1, 1, "a"), (2, 2, "a"), (3, 2, "b"), (4, 2, "b")]
    pts = [make_point("m", t, {"x": x, "y": y}) for t, x, y in rows]
    async with serve_handler(StateChange) as site:
        run = await drive(
            site, {"field": ["x", "y"], "previous": "{field}_was", "duration": "d"}, points=pts
        )
    assert [fields(p) for p in run.points] == [
        {"x": 1, "y": "a"},
        {"x": 2, "y": "a", "x_was": 1, "y_was": "a", "d": 2},
        {"x": 2, "y": "b", "x_was": 2, "y_was": "a", "d": 1},
    ]


async def test_missing_field_is_dropped_and_counted(drive: Any) -> None:
    pts = [
        make_point("m", 0, {"value": "a"}),
        make_point("m", 1, {"other": "b"}),
        make_point("m", 2, {"value": "b"}),
    ]
    async with serve_handler(StateChange) as site:
        run = await drive(site, {}, points=pts)
        dropped = site.stats.dropped
    assert run.errors == []
    assert [p.time for p in run.points] == [0, 2]
    assert dropped == 1


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({"stable": 0}, ["'stable'", "greater than or equal to 1"]),
        ({"stable": 2.0}, ["'stable'", "int"]),
        ({"stableFor": timedelta(seconds=-1)}, ["'stableFor'"]),
        ({"field": ["a", "b"], "previous": "prev"}, [".previous('prev')", "{field}"]),
        ({"field": ["a", "a"]}, [".field('a')", "more than once"]),
        ({"previous": "value"}, [".previous()", "'value'"]),
        ({"durationUnit": timedelta(seconds=1)}, [".durationUnit()", ".duration(name)"]),
        ({"duration": "value"}, [".duration('value')"]),
        ({"nope": 1}, ["unknown option 'nope'"]),
    ],
)
async def test_option_errors(drive: Any, options: dict[str, Any], mentions: list[str]) -> None:
    async with serve_handler(StateChange) as site:
        run = await drive(site, options)
    assert not run.init.success
    for text in mentions:
        assert text in run.init.error, run.init.error


async def test_snapshot_restore_continues_without_spurious_change(drive: Any) -> None:
    pts = adsl_points()
    split = 9  # in the middle of the TRAINING run 7..10
    async with serve_handler(StateChange) as site:
        first = await drive(site, {}, points=pts[:split], snapshot=True)
        assert first.snapshot
        second = await drive(site, {}, points=pts[split:], restore=first.snapshot)
        fresh = await drive(site, {}, points=pts[split:])
    assert second.restore is not None and second.restore.success, second.restore
    assert times_values(first.points + second.points) == ADSL_CHANGES
    # the same connection without the restore reports its first point: a spurious change
    assert times_values(fresh.points)[0] == ADSL[split]


async def test_snapshot_keeps_a_pending_debounce_candidate(drive: Any) -> None:
    pts = adsl_points()
    split = 9  # TRAINING seen at 7 and 8: a candidate two points old
    opts = {"stable": 3, "previous": "prev", "duration": "lasted"}
    async with serve_handler(StateChange) as site:
        whole = await drive(site, opts, points=pts)
        first = await drive(site, opts, points=pts[:split], snapshot=True)
        second = await drive(site, opts, points=pts[split:], restore=first.snapshot)
    assert times_values(first.points) == [ADSL[2]]
    # confirmed by point 9 on the new connection, reported as point 7 as it came in
    assert times_values(second.points) == [ADSL[7]]
    assert fields(second.points[0]) == {
        "value": "TRAINING",
        "prev": "SHOWTIME",
        "lasted": ADSL[7][0] - ADSL[2][0],
    }
    assert [fields(p) for p in first.points + second.points] == [fields(p) for p in whole.points]


async def test_restore_rejects_foreign_bytes(drive: Any) -> None:
    async with serve_handler(StateChange) as site:
        run = await drive(site, {}, restore=b"not a snapshot")
    assert run.restore is not None and not run.restore.success
    assert "snapshot" in run.restore.error


# ---------------------------------------------------------------- large, interleaved


def same_state(a: Any, b: Any) -> bool:
    """Equal type and equal value; NaN equals NaN."""
    return type(a) is type(b) and (a == b or (a != a and b != b))


def reference_changes(rows: list[tuple[str, int, Any]], stable: int = 1) -> list[tuple[str, int]]:
    """Naive: per group, split the values into runs of the same state; a run that
    reaches ``stable`` points and differs from the last reported state is reported
    at the time the run began."""
    by_group: dict[str, list[tuple[int, Any]]] = {}
    for group, t, v in rows:
        by_group.setdefault(group, []).append((t, v))
    reported: list[tuple[str, int]] = []
    for group, seq in by_group.items():
        current: Any = object()  # nothing reported yet: differs from every value
        start = 0
        for i, (_, value) in enumerate(seq):
            if i == 0 or not same_state(value, seq[i - 1][1]):
                start = i
            if not same_state(value, current) and i - start + 1 == stable:
                reported.append((group, seq[start][0]))
                current = value
    return reported


async def test_many_groups_large_input_against_reference(drive: Any) -> None:
    rng = random.Random(20240611)
    groups = [f"host=h{i:02d}" for i in range(50)]
    alphabet: list[Any] = ["SHOWTIME", "TRAINING", "IDLE", 1, 1.0, True]
    last: dict[str, Any] = {}
    rows: list[tuple[str, int, Any]] = []
    for t in range(120_000):
        g = rng.choice(groups)
        # mostly repeat the group's last value, so changes are rare but many
        v = last[g] if g in last and rng.random() < 0.7 else rng.choice(alphabet)
        last[g] = v
        rows.append((g, 1_000_000_000 + t, v))
    pts = [
        make_point("adsl", t, {"value": v}, {"host": g[5:]}, group=g, dimensions=["host"])
        for g, t, v in rows
    ]
    async with serve_handler(StateChange) as site:
        plain = await drive(site, {}, points=pts)
        debounced = await drive(site, {"stable": 3}, points=pts)
    for run, stable in ((plain, 1), (debounced, 3)):
        assert run.errors == []
        got = sorted((p.group, p.time) for p in run.points)
        want = sorted(reference_changes(rows, stable))
        assert len(want) > 1000
        assert got == want
    # without debouncing, output follows input order (debounced points are emitted
    # when confirmed, so they may come after later points of other groups)
    assert [p.time for p in plain.points] == sorted(p.time for p in plain.points)
    for p in plain.points[:100]:
        assert p.tags["host"] == p.group[5:]
        assert list(p.dimensions) == ["host"]


# ---------------------------------------------------------------- batches


async def test_batches_restart_detection_and_are_framed(
    drive: Any, make_batch: Any, framed: Any
) -> None:
    half = len(ADSL) // 2
    tags = {"host": "router1"}
    b1 = make_batch(
        "adsl_connection", "host=router1", tags, [(t, {"value": v}) for t, v in ADSL[:half]]
    )
    b2 = make_batch(
        "adsl_connection", "host=router1", tags, [(t, {"value": v}) for t, v in ADSL[half:]]
    )
    empty = make_batch("adsl_connection", "host=router1", tags, [])
    async with serve_handler(StateChangeBatch) as site:
        run = await drive(site, {}, batches=[b1, empty, b2])
    assert run.errors == []
    out = framed(run.output, [b1, empty, b2])
    assert times_values(out[0]) == [c for c in ADSL_CHANGES if c[0] < ADSL[half][0]]
    assert out[1] == []
    # the second batch starts afresh: its first point is reported again
    assert times_values(out[2]) == [ADSL[half]] + [c for c in ADSL_CHANGES if c[0] > ADSL[half][0]]
    assert all(dict(p.tags) == tags for p in out[0] + out[2])


async def test_batch_drops_only_the_bad_point(drive: Any, make_batch: Any, framed: Any) -> None:
    b = make_batch("m", "", {}, [(0, {"value": "a"}), (1, {"x": "?"}), (2, {"value": "b"})])
    async with serve_handler(StateChangeBatch) as site:
        run = await drive(site, {}, batches=[b])
        dropped = site.stats.dropped
    (points,) = framed(run.output, [b])
    assert [p.time for p in points] == [0, 2]
    assert dropped == 1


async def test_restore_with_other_fields_starts_afresh(drive: Any) -> None:
    pts = adsl_points()
    async with serve_handler(StateChange) as site:
        first = await drive(site, {}, points=pts[:5], snapshot=True)
        other = await drive(
            site,
            {"field": ["value", "x"]},
            points=[make_point("m", 1, {"value": "A", "x": 1})],
            restore=first.snapshot,
        )
    assert other.restore is not None and other.restore.success
    assert other.errors == []
    assert [p.time for p in other.points] == [1]  # a new state: reported as a first point


async def test_restore_rejects_malformed_group_state(drive: Any) -> None:
    bad = (
        b'{"format":"udfd-state","handler":"StateChange","version":1,"states":{"tracks":'
        b'{"g":{"fields":["value"],"values":[{"no":"dict"}],"since":0}}}}'
    )
    async with serve_handler(StateChange) as site:
        run = await drive(site, {}, restore=bad)
    assert run.restore is not None and not run.restore.success
    assert "malformed group state" in run.restore.error


async def test_configured_default_field_may_be_a_string(drive: Any) -> None:
    # udfd.toml: [functions.adsl_state.options] field = "state"
    pts = [make_point("m", i, {"state": v}) for i, v in enumerate(["a", "a", "b"])]
    async with serve_handler(StateChange, defaults={"field": "state"}) as site:
        run = await drive(site, {}, points=pts)
        overridden = await drive(site, {"field": "value"}, points=pts)
    assert run.init.success, run.init.error
    assert [p.time for p in run.points] == [0, 2]
    assert overridden.init.success
    assert [p.time for p in overridden.points] == []  # no 'value' field: all dropped
