"""threshold over a real socket: filtering, labelling, hysteresis and its snapshot."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from udfd_handlers.threshold import Threshold

from udfd import fields, make_point
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

pytestmark = pytest.mark.anyio

ROOM = [("temperature", 20.0, 25.0), ("humidity", 0.0, 25.0)]


def room(rows: list[tuple[float, float]], group: str = "room=a") -> list[pb.Point]:
    return [
        make_point(
            "climate",
            i,
            {"temperature": t, "humidity": h},
            {"room": group[5:]},
            group=group,
            dimensions=["room"],
        )
        for i, (t, h) in enumerate(rows)
    ]


def single(values: list[Any], group: str = "", field: str = "t") -> list[pb.Point]:
    return [make_point("m", i, {field: v}, group=group) for i, v in enumerate(values)]


async def test_info() -> None:
    from udfd.protocol.client import probe_info

    async with serve_handler(Threshold) as site:
        info = await probe_info(site.path)
    assert info.wants == info.provides == pb.STREAM
    assert list(info.options["range"].valueTypes) == [pb.STRING, pb.DOUBLE, pb.DOUBLE]
    assert list(info.options["names"].valueTypes) == [pb.STRING] * 3
    assert list(info.options["hysteresis"].valueTypes) == [pb.DOUBLE]


async def test_keep_inside_and_outside(drive: Any) -> None:
    data = [
        (22.0, 40.0),  # humidity over 25: out
        (22.0, 20.0),  # in
        (20.0, 25.0),  # bounds are inclusive: in
        (19.9, 10.0),  # too cold: out
        (25.1, 10.0),  # too warm: out
        (24.0, 0.0),  # in
    ]
    pts = room(data)
    async with serve_handler(Threshold) as site:
        default = await drive(site, {"range": ROOM}, points=pts)
        inside = await drive(site, {"range": ROOM, "keep": "inside"}, points=pts)
        outside = await drive(site, {"range": ROOM, "keep": "outside"}, points=pts)
    assert [p.time for p in default.points] == [1, 2, 5]
    assert [p.time for p in inside.points] == [1, 2, 5]
    assert [p.time for p in outside.points] == [0, 3, 4]
    # kept points are the input, identity and fields untouched
    for p in default.points:
        assert p == pts[p.time]


async def test_label_mode(drive: Any) -> None:
    values = [19.9, 20.0, 25.0, 25.01, 30, -5]
    async with serve_handler(Threshold) as site:
        run = await drive(
            site, {"range": ("t", 20.0, 25.0), "label": "state"}, points=single(values)
        )
        named = await drive(
            site,
            {"range": ("t", 20.0, 25.0), "label": "s", "names": ("cold", "ok", "hot")},
            points=single(values),
        )
        two = await drive(
            site,
            {"range": ROOM, "label": "{field}_state"},
            points=room([(19.0, 30.0), (22.0, 10.0)]),
        )
    assert [p.fieldsString["state"] for p in run.points] == [
        "low",
        "normal",
        "normal",
        "high",
        "high",
        "low",
    ]
    assert [p.fieldsString["s"] for p in named.points] == ["cold", "ok", "ok", "hot", "hot", "cold"]
    assert [fields(p) for p in two.points] == [
        {
            "temperature": 19.0,
            "humidity": 30.0,
            "temperature_state": "low",
            "humidity_state": "high",
        },
        {
            "temperature": 22.0,
            "humidity": 10.0,
            "temperature_state": "normal",
            "humidity_state": "normal",
        },
    ]
    assert [p.fieldsInt["t"] for p in run.points if p.fieldsInt] == [30, -5]


HYST_VALUES = [24.9, 25.1, 24.8, 24.5, 25.2, 24.6, 20.1, 19.9, 20.3, 20.5, 19.0, 26.0, 24.0]
# by hand, range 20..25: leaving "high" needs <= 24.5, leaving "low" needs >= 20.5
HYST_LABELS = [
    "normal",
    "high",
    "high",
    "normal",
    "high",
    "high",
    "normal",
    "low",
    "low",
    "normal",
    "low",
    "high",
    "normal",
]
PLAIN_LABELS = [
    "normal",
    "high",
    "normal",
    "normal",
    "high",
    "normal",
    "normal",
    "low",
    "normal",
    "normal",
    "low",
    "high",
    "normal",
]


async def test_hysteresis_labels(drive: Any) -> None:
    opts = {"range": ("t", 20.0, 25.0), "label": "state"}
    async with serve_handler(Threshold) as site:
        plain = await drive(site, opts, points=single(HYST_VALUES))
        hyst = await drive(site, {**opts, "hysteresis": 0.5}, points=single(HYST_VALUES))
        kept = await drive(
            site, {"range": ("t", 20.0, 25.0), "hysteresis": 0.5}, points=single(HYST_VALUES)
        )
    assert [p.fieldsString["state"] for p in plain.points] == PLAIN_LABELS
    assert [p.fieldsString["state"] for p in hyst.points] == HYST_LABELS
    assert [p.time for p in kept.points] == [i for i, s in enumerate(HYST_LABELS) if s == "normal"]


async def test_hysteresis_is_per_group_and_field(drive: Any) -> None:
    # group a climbs over 25 and stays near it; group b sits at 24.8 all along
    a = single([25.5, 24.8, 24.8], group="g=a")
    b = single([24.8, 24.8, 24.8], group="g=b")
    interleaved = [p for pair in zip(a, b, strict=True) for p in pair]
    async with serve_handler(Threshold) as site:
        run = await drive(
            site, {"range": ("t", 20.0, 25.0), "label": "s", "hysteresis": 0.5}, points=interleaved
        )
    assert [(p.group, p.fieldsString["s"]) for p in run.points] == [
        ("g=a", "high"),
        ("g=b", "normal"),
        ("g=a", "high"),
        ("g=b", "normal"),
        ("g=a", "high"),
        ("g=b", "normal"),
    ]


async def test_hysteresis_state_survives_restart(drive: Any) -> None:
    opts = {"range": ("t", 20.0, 25.0), "label": "state", "hysteresis": 0.5}
    pts = single(HYST_VALUES, group="g=a")
    split = 2  # after 25.1 went high; 24.8 must stay high
    async with serve_handler(Threshold) as site:
        first = await drive(site, opts, points=pts[:split], snapshot=True)
        second = await drive(site, opts, points=pts[split:], restore=first.snapshot)
        forgot = await drive(site, opts, points=pts[split:])
        # a snapshot taken with hysteresis restores into a task that dropped the option
        plain = await drive(
            site,
            {"range": ("t", 20.0, 25.0), "label": "state"},
            points=pts[split:],
            restore=first.snapshot,
        )
    assert second.restore is not None and second.restore.success
    labels = [p.fieldsString["state"] for p in first.points + second.points]
    assert labels == HYST_LABELS
    assert forgot.points[0].fieldsString["state"] == "normal"  # what a lost state does
    assert plain.restore is not None and plain.restore.success
    assert [p.fieldsString["state"] for p in plain.points] == PLAIN_LABELS[split:]


async def test_bad_points_dropped(drive: Any) -> None:
    pts = [
        make_point("climate", 0, {"temperature": 22.0, "humidity": 10.0}),
        make_point("climate", 1, {"temperature": 22.0}),
        make_point("climate", 2, {"temperature": "warm", "humidity": 10.0}),
        make_point("climate", 3, {"temperature": math.nan, "humidity": 10.0}),
        make_point("climate", 4, {"temperature": 21.0, "humidity": 11.0}),
    ]
    async with serve_handler(Threshold) as site:
        run = await drive(
            site, {"range": ROOM, "label": "{field}_s", "hysteresis": 0.5}, points=pts
        )
        dropped = site.stats.dropped
    assert run.errors == []
    assert [p.time for p in run.points] == [0, 4]
    assert dropped == 3


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({}, ["'range' is required", ".range(string, float, float)"]),
        ({"range": ("t", 20, 25)}, ["'range'", "got .range(string, int, int)"]),
        ({"range": ("t", 25.0, 20.0)}, [".range('t', 25.0, 20.0)", "low bound"]),
        ({"range": [("t", 0.0, 1.0), ("t", 2.0, 3.0)]}, [".range('t')", "more than once"]),
        ({"range": ("t", 20.0, 25.0), "hysteresis": 5.0}, [".hysteresis(5.0)", "width"]),
        ({"range": ("t", 20.0, 25.0), "hysteresis": -1.0}, ["'hysteresis'"]),
        ({"range": ("t", 20.0, 25.0), "keep": "middle"}, ["'keep'", "'inside' or 'outside'"]),
        ({"range": ("t", 20.0, 25.0), "keep": "inside", "label": "s"}, [".label()", ".keep()"]),
        ({"range": ("t", 20.0, 25.0), "label": "s", "names": ("a", "a", "c")}, [".names("]),
        ({"range": ROOM, "label": "state"}, [".label('state')", "{field}"]),
        ({"range": ("t", 20.0, 25.0), "label": "t"}, [".label()", "'t'"]),
    ],
)
async def test_option_errors(drive: Any, options: dict[str, Any], mentions: list[str]) -> None:
    async with serve_handler(Threshold) as site:
        run = await drive(site, options)
    assert not run.init.success
    for text in mentions:
        assert text in run.init.error, run.init.error


def reference_label(before: str | None, v: float, lo: float, hi: float, h: float) -> str:
    plain = "high" if v > hi else "low" if v < lo else "normal"
    if plain == "normal" and before == "high" and v > hi - h:
        return "high"
    if plain == "normal" and before == "low" and v < lo + h:
        return "low"
    return plain


async def test_large_interleaved_against_reference(drive: Any) -> None:
    rng = random.Random(42)
    groups = [f"room=r{i:02d}" for i in range(50)]
    level = dict.fromkeys(groups, (22.5, 12.5))
    data: list[tuple[str, float, float]] = []
    for _ in range(100_000):
        g = rng.choice(groups)
        t, h = level[g]
        # random walks that hover around the bounds a lot
        t = min(30.0, max(15.0, t + rng.gauss(0, 0.4)))
        h = min(40.0, max(-5.0, h + rng.gauss(0, 0.6)))
        level[g] = (t, h)
        data.append((g, t, h))
    pts = [
        make_point("climate", i, {"temperature": t, "humidity": h}, {"room": g[5:]}, group=g)
        for i, (g, t, h) in enumerate(data)
    ]
    hyst = 0.5
    async with serve_handler(Threshold) as site:
        labelled = await drive(
            site,
            {"range": ROOM, "label": "{field}", "hysteresis": hyst, "names": ("L", "N", "H")},
            points=pts,
        )
        # the label template "{field}" would overwrite the inputs: use a suffix instead
    assert not labelled.init.success
    async with serve_handler(Threshold) as site:
        labelled = await drive(
            site, {"range": ROOM, "label": "{field}_s", "hysteresis": hyst}, points=pts
        )
        outside = await drive(
            site, {"range": ROOM, "keep": "outside", "hysteresis": hyst}, points=pts
        )
        plain = await drive(site, {"range": ROOM, "label": "{field}_s"}, points=pts)
    state: dict[tuple[str, str], str | None] = {}
    want_labels = []
    want_outside = []
    for i, (g, t, h) in enumerate(data):
        row = {}
        for name, v, (_, lo, hi) in (("temperature", t, ROOM[0]), ("humidity", h, ROOM[1])):
            label = reference_label(state.get((g, name)), v, lo, hi, hyst)
            state[(g, name)] = label
            row[name] = label
        want_labels.append((row["temperature"], row["humidity"]))
        if row != {"temperature": "normal", "humidity": "normal"}:
            want_outside.append(i)
    got = [(p.fieldsString["temperature_s"], p.fieldsString["humidity_s"]) for p in labelled.points]
    assert got == want_labels
    assert [p.time for p in outside.points] == want_outside

    # hysteresis exists to reduce flapping: count label changes per group and field
    def flaps(run: Any) -> int:
        last: dict[tuple[str, str], str] = {}
        count = 0
        for p in run.points:
            for f in ("temperature_s", "humidity_s"):
                key = (p.group, f)
                if key in last and last[key] != p.fieldsString[f]:
                    count += 1
                last[key] = p.fieldsString[f]
        return count

    assert flaps(labelled) < flaps(plain) * 0.7


async def test_restore_rejects_malformed_state(drive: Any) -> None:
    bad = (
        b'{"format":"udfd-state","handler":"Threshold","version":1,"states":{"last":{"g":{"t":7}}}}'
    )
    async with serve_handler(Threshold) as site:
        run = await drive(site, {"range": ("t", 0.0, 1.0), "hysteresis": 0.1}, restore=bad)
    assert run.restore is not None and not run.restore.success
    assert "malformed group state" in run.restore.error
