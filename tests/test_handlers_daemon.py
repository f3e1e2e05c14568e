"""The first-party handlers served by the real daemon, over real sockets.

tests/plugins serve each handler in-process; here ``udfd serve`` runs as a
subprocess with the handlers configured by entry-point name, as users configure
them, and udfd's Kapacitor-side client drives the sockets: the ADSL golden data,
snapshots restored into new connections and into a restarted daemon, option
errors, many interleaved groups, batch framing and threshold hysteresis.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest
from daemon_harness import DaemonProcess
from golden import ADSL, ADSL_CHANGES

import udfd
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import Batch, TaskRun, check_batch_framing, make_batch, run_task

pytestmark = pytest.mark.anyio

Factory = Callable[..., DaemonProcess]

# moving_average has configured option defaults; the TICKscript's options override them
CONFIG = """
    [functions.state_change]
    handler = "state_change"
    [functions.moving_average]
    handler = "moving_average"
    [functions.moving_average.options]
    field = "value"
    size = 4
    [functions.outliers]
    handler = "outliers"
    [functions.threshold]
    handler = "threshold"
"""


def start(daemon: Factory) -> DaemonProcess:
    d = daemon(CONFIG)
    assert "ready: 4 function(s) ready, 0 failed" in d.wait_for("ready:"), d.log
    return d


async def session(
    d: DaemonProcess, function: str, options: Mapping[str, Any], **kwargs: Any
) -> TaskRun:
    """One task run on a function of the daemon; restores succeed and no error arrives."""
    run = await run_task(d.socket(function), options, **kwargs)
    if run.restore is not None:
        assert run.restore.success, run.restore.error
    assert run.errors == []
    return run


# ---------------------------------------------------------------- state_change

DEBOUNCED = {"previous": "prev", "duration": "lasted", "durationUnit": timedelta(seconds=1)}


def adsl(rows: Sequence[tuple[int, str]] = ADSL) -> list[pb.Point]:
    """The router's polls as Kapacitor sends them after ``|from().groupBy('host')``."""
    return [
        udfd.make_point(
            "adsl_connection",
            t,
            {"value": v},
            {"host": "router1"},
            group="host=router1",
            dimensions=["host"],
        )
        for t, v in rows
    ]


def changes(points: list[pb.Point]) -> list[tuple[int, str]]:
    for p in points:
        assert p.name == "adsl_connection" and dict(p.tags) == {"host": "router1"}
        assert p.group == "host=router1" and list(p.dimensions) == ["host"]
    return [(p.time, p.fieldsString["value"]) for p in points]


def with_history(points: list[pb.Point]) -> list[tuple[int, str, str, int]]:
    return [
        (p.time, p.fieldsString["value"], p.fieldsString["prev"], p.fieldsInt["lasted"])
        for p in points
    ]


async def test_adsl_golden_changes_through_the_daemon(daemon: Factory) -> None:
    d = start(daemon)
    run = await session(d, "state_change", {"field": "value"}, points=adsl())
    assert run.init.success, run.init.error
    assert changes(run.points) == ADSL_CHANGES
    assert all(set(p.fieldsString) == {"value"} for p in run.points)  # nothing added

    debounced = await session(d, "state_change", {**DEBOUNCED, "stable": 2}, points=adsl())
    assert changes(debounced.points)[0] == (1514979231065000000, "SHOWTIME")
    assert with_history(debounced.points[1:]) == [
        (1514979681040000000, "TRAINING", "SHOWTIME", 449),
        (1514980041020000000, "SHOWTIME", "TRAINING", 359),
        (1514980221010000000, "TRAINING", "SHOWTIME", 179),
    ]
    assert d.stop() == 0


# the first task run ends in the middle of a TRAINING run: its last state continues
SPLIT = 10
assert ADSL[SPLIT - 1][1] == ADSL[SPLIT][1] == "TRAINING"


async def test_state_change_restored_into_a_new_connection(daemon: Factory) -> None:
    d = start(daemon)
    first = await session(d, "state_change", DEBOUNCED, points=adsl(ADSL[:SPLIT]), snapshot=True)
    assert changes(first.points) == ADSL_CHANGES[:4]
    assert first.snapshot

    second = await session(
        d, "state_change", DEBOUNCED, points=adsl(ADSL[SPLIT:]), restore=first.snapshot
    )
    # no spurious "first state" for the TRAINING that simply goes on; the duration
    # counts from when TRAINING began in the first run
    assert with_history(second.points) == [
        (1514980041020000000, "SHOWTIME", "TRAINING", 359),
        (1514980221010000000, "TRAINING", "SHOWTIME", 179),
    ]

    # without the restore the same data does report the ongoing state: restore mattered
    fresh = await session(d, "state_change", DEBOUNCED, points=adsl(ADSL[SPLIT:]))
    assert changes(fresh.points)[0] == ADSL[SPLIT]
    assert d.stop() == 0


# ---------------------------------------------------------------- moving_average


def mean_reference(points: Iterable[pb.Point], size: int) -> list[float]:
    """Per group, the correctly rounded mean of the last ``size`` values (exact fractions)."""
    windows: dict[str, deque[Fraction]] = defaultdict(lambda: deque(maxlen=size))
    out = []
    for p in points:
        value = p.fieldsDouble["value"] if "value" in p.fieldsDouble else p.fieldsInt["value"]
        window = windows[p.group]
        window.append(Fraction(value))
        out.append(float(sum(window) / len(window)))
    return out


def readings(seed: int, n: int, groups: int, start: int = 0) -> list[pb.Point]:
    """Interleaved series of ``groups`` hosts in random order, floats and some ints."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        host = f"h{rng.randrange(groups)}"
        value: float | int = (
            rng.randrange(-50, 50) if rng.random() < 0.2 else rng.uniform(-1e3, 1e3)
        )
        out.append(
            udfd.make_point(
                "cpu", start + i, {"value": value}, {"host": host}, group=f"host={host}"
            )
        )
    return out


async def test_configured_defaults_apply_and_tickscript_overrides_them(daemon: Factory) -> None:
    d = start(daemon)
    data = readings(1, 40, 1)
    configured = await session(d, "moving_average", {}, points=data)
    assert configured.init.success, configured.init.error
    assert [p.fieldsDouble["avg"] for p in configured.points] == mean_reference(data, 4)

    overridden = await session(d, "moving_average", {"size": 2, "as": "mean"}, points=data)
    assert [p.fieldsDouble["mean"] for p in overridden.points] == mean_reference(data, 2)
    assert all(set(p.fieldsDouble) == {"mean"} for p in overridden.points)
    assert d.stop() == 0


async def test_many_groups_interleaved_on_one_connection(daemon: Factory) -> None:
    d = start(daemon)
    data = readings(7, 6000, 40)
    run = await session(d, "moving_average", {"field": "value", "size": 7}, points=data)
    out = run.points
    assert len(out) == len(data)
    assert [(p.time, p.group, dict(p.tags), p.name) for p in out] == [
        (p.time, p.group, dict(p.tags), p.name) for p in data
    ]
    assert [p.fieldsDouble["avg"] for p in out] == mean_reference(data, 7)
    assert d.stop() == 0


async def test_moving_average_windows_continue_after_restore(daemon: Factory) -> None:
    d = start(daemon)
    before, after = readings(3, 500, 9), readings(4, 500, 9, start=500)
    first = await session(d, "moving_average", {"size": 6}, points=before, snapshot=True)
    second = await session(d, "moving_average", {"size": 6}, points=after, restore=first.snapshot)
    got = [p.fieldsDouble["avg"] for p in first.points + second.points]
    assert got == mean_reference(before + after, 6)
    # the same second run without the restore starts every window afresh
    fresh = await session(d, "moving_average", {"size": 6}, points=after)
    assert [p.fieldsDouble["avg"] for p in fresh.points] != got[len(before) :]
    assert d.stop() == 0


# ---------------------------------------------------------------- restart


async def test_snapshots_restore_into_a_restarted_daemon(daemon: Factory) -> None:
    """Kapacitor keeps the snapshots while udfd restarts (an upgrade, a crash, a reboot)."""
    first_daemon = start(daemon)
    sc = await session(
        first_daemon, "state_change", DEBOUNCED, points=adsl(ADSL[:SPLIT]), snapshot=True
    )
    before, after = readings(5, 300, 5), readings(6, 300, 5, start=300)
    ma = await session(first_daemon, "moving_average", {}, points=before, snapshot=True)
    hot = [temperature(1, 26.0)]  # the room is "high" when udfd goes down
    th_options = {"range": [("temperature", 20.0, 25.0)], "label": "state", "hysteresis": 0.5}
    th = await session(first_daemon, "threshold", th_options, points=hot, snapshot=True)
    assert [p.fieldsString["state"] for p in th.points] == ["high"]
    assert first_daemon.stop() == 0
    assert list(first_daemon.sockets.iterdir()) == []

    second_daemon = start(daemon)  # same config, same sockets, a new process
    assert second_daemon.proc.pid != first_daemon.proc.pid
    sc2 = await session(
        second_daemon, "state_change", DEBOUNCED, points=adsl(ADSL[SPLIT:]), restore=sc.snapshot
    )
    assert with_history(sc2.points) == [
        (1514980041020000000, "SHOWTIME", "TRAINING", 359),
        (1514980221010000000, "TRAINING", "SHOWTIME", 179),
    ]
    ma2 = await session(second_daemon, "moving_average", {}, points=after, restore=ma.snapshot)
    got = [p.fieldsDouble["avg"] for p in ma.points + ma2.points]
    assert got == mean_reference(before + after, 4)
    # 24.8 is inside the range but not back by the hysteresis: still "high"
    th2 = await session(
        second_daemon,
        "threshold",
        th_options,
        points=[temperature(2, 24.8), temperature(3, 24.5)],
        restore=th.snapshot,
    )
    assert [p.fieldsString["state"] for p in th2.points] == ["high", "normal"]
    assert second_daemon.stop() == 0


# ---------------------------------------------------------------- option errors

OPTION_ERRORS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("outliers", {}, ["option 'field' is required"]),
    (
        "outliers",
        {"field": "ms", "scale": 2},
        ["option 'scale' expects .scale(float)", "got .scale(int)"],
    ),
    ("outliers", {"field": "ms", "scale": -1.0}, ["option 'scale'", "-1.0"]),
    ("outliers", {"field": "ms", "mark": "o", "inliers": ()}, [".mark()", ".inliers()"]),
    ("moving_average", {"size": 0}, ["option 'size'", "(got 0)"]),
    ("moving_average", {"window": 3}, ["unknown option 'window'"]),
    ("moving_average", {"size": 3.0}, ["option 'size' expects .size(int)", "got .size(float)"]),
    ("threshold", {}, ["option 'range' is required"]),
    ("threshold", {"range": [("t", 25.0, 20.0)]}, [".range('t', 25.0, 20.0)", "low bound"]),
    ("threshold", {"range": [("t", 20.0, 25.0)], "hysteresis": 5.0}, [".hysteresis(5.0)"]),
    ("threshold", {"range": [("t", 20.0, 25.0)], "keep": "middle"}, ["option 'keep'", "'middle'"]),
    ("state_change", {"durationUnit": timedelta(seconds=1)}, [".durationUnit()", ".duration("]),
    ("state_change", {"stable": 0}, ["option 'stable'", "(got 0)"]),
]


GOOD_OPTIONS: dict[str, dict[str, Any]] = {
    "outliers": {"field": "ms"},
    "moving_average": {},
    "threshold": {"range": [("t", 20.0, 25.0)]},
    "state_change": {},
}


@pytest.mark.parametrize(
    ("function", "options", "expected"),
    OPTION_ERRORS,
    ids=[f"{f}-{'-'.join(o) or 'none'}" for f, o, _ in OPTION_ERRORS],
)
async def test_option_errors_fail_init_naming_the_option(
    daemon: Factory, function: str, options: dict[str, Any], expected: list[str]
) -> None:
    d = start(daemon)
    run = await session(d, function, options)
    assert not run.init.success
    assert run.init.error.startswith(f"{function}: "), run.init.error
    for text in expected:
        assert text in run.init.error, run.init.error
    # the function still serves the next task
    good = GOOD_OPTIONS[function]
    assert (await session(d, function, good)).init.success
    assert d.stop() == 0


# ---------------------------------------------------------------- outliers


def batch(name: str, host: str, rows: Sequence[tuple[int, Any]], tmax: int) -> Batch:
    """A batch as Kapacitor's query node sends it, values in field ``ms``."""
    return make_batch(
        name,
        [(t, {"ms": v}) for t, v in rows],
        tags={"host": host},
        group=f"host={host}",
        tmax=tmax,
    )


framed = check_batch_framing


def tukey(values: Sequence[float], scale: float) -> list[bool]:
    """Reference: type-7 quartiles (statistics' 'inclusive' method, numpy's default)."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    low, high = q1 - scale * (q3 - q1), q3 + scale * (q3 - q1)
    return [v < low or v > high for v in values]


T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


async def test_outliers_batch_framing_and_results(daemon: Factory) -> None:
    d = start(daemon)
    latency = [12.0, 11.5, 13.2, 250.0, 12.8, 11.9, 0.4, 12.4]  # the README's batch
    rng = random.Random(11)
    # fences 43 and 259 with scale 1.5; 265 and 20 are inside with 3.0 (-38 and 340)
    wide = [rng.randrange(100, 200) for _ in range(60)] + [1000, -500, 400, 265, 20]
    rng.shuffle(wide)
    with_bad: list[Any] = [10, 11, "n/a", 12, 13, 14, 200]
    requests = [
        batch("latency", "web1", [(T0 + i * S, v) for i, v in enumerate(latency)], T0 + 10 * S),
        batch("latency", "web2", [], T0 + 10 * S),  # an empty query result
        batch("latency", "web2", [(T0, 5.0)], T0 + 20 * S),
        batch("latency", "web3", [(T0 + i, v) for i, v in enumerate(wide)], T0 + 30 * S),
        batch("latency", "web1", [(T0 + i, v) for i, v in enumerate(with_bad)], T0 + 40 * S),
    ]
    del requests[4][1][3].fieldsInt["ms"]  # and one point without the field at all
    run = await session(d, "outliers", {"field": "ms", "scale": 1.5}, batches=requests)
    out = framed(run.output, requests)

    assert [(p.time, p.fieldsDouble["ms"]) for p in out[0]] == [
        (T0 + 3 * S, 250.0),
        (T0 + 6 * S, 0.4),
    ]
    assert all(dict(p.tags) == {"host": "web1"} and p.group == "host=web1" for p in out[0])
    assert out[1] == [] and out[2] == []
    expected = [v for v, flag in zip(wide, tukey(wide, 1.5), strict=True) if flag]
    assert sorted(expected) == [-500, 20, 265, 400, 1000]
    assert [p.fieldsInt["ms"] for p in out[3]] == expected
    # the string and the missing value are dropped; the rest of their batch still counts
    assert [p.fieldsInt["ms"] for p in out[4]] == [200]

    marked = await session(d, "outliers", {"field": "ms", "mark": "outlier"}, batches=requests[:1])
    (points,) = framed(marked.output, requests[:1])
    assert [p.fieldsBool["outlier"] for p in points] == [v in (250.0, 0.4) for v in latency]
    assert d.stop() == 0


# ---------------------------------------------------------------- threshold


def temperature(i: int, value: float, room: str = "lab") -> pb.Point:
    return udfd.make_point(
        "climate", T0 + i * S, {"temperature": value}, {"room": room}, group=f"room={room}"
    )


# a hand-computed walk around the range 20..25 with hysteresis 0.5: leaving "high"
# needs <= 24.5, leaving "low" needs >= 20.5; bounds themselves are inside
WALK = [
    (22.0, "normal", "normal"),
    (25.2, "high", "high"),
    (24.8, "high", "normal"),  # inside, but not back by 0.5
    (24.5, "normal", "normal"),  # back by exactly the margin
    (25.0, "normal", "normal"),  # the bound is inside
    (25.1, "high", "high"),
    (24.6, "high", "normal"),
    (19.9, "low", "low"),
    (20.3, "low", "normal"),
    (20.5, "normal", "normal"),
    (20.0, "normal", "normal"),
    (19.99, "low", "low"),
    (30, "high", "high"),  # an int value
]


async def test_threshold_labels_and_filters_with_hysteresis(daemon: Factory) -> None:
    d = start(daemon)
    walk = [temperature(i, v) for i, (v, _, _) in enumerate(WALK)]
    # another room interleaved: 24.8 right after the lab went high is "normal" there
    other = temperature(100, 24.8, room="office")
    data = walk[:2] + [other] + walk[2:]
    ranges = {"range": [("temperature", 20.0, 25.0)]}

    labelled = await session(
        d, "threshold", {**ranges, "label": "state", "hysteresis": 0.5}, points=data
    )
    states = {(p.group, p.time): p.fieldsString["state"] for p in labelled.points}
    assert len(labelled.points) == len(data)
    assert [states["room=lab", p.time] for p in walk] == [h for _, h, _ in WALK]
    assert states["room=office", other.time] == "normal"

    plain = await session(d, "threshold", {**ranges, "label": "state"}, points=walk)
    assert [p.fieldsString["state"] for p in plain.points] == [n for _, _, n in WALK]

    named = await session(
        d,
        "threshold",
        {**ranges, "label": "{field}_is", "names": ("cold", "ok", "hot"), "hysteresis": 0.5},
        points=walk,
    )
    rename = {"low": "cold", "normal": "ok", "high": "hot"}
    assert [p.fieldsString["temperature_is"] for p in named.points] == [
        rename[h] for _, h, _ in WALK
    ]

    def kept(points: list[pb.Point]) -> list[float]:
        return [p.fieldsDouble.get("temperature", p.fieldsInt.get("temperature")) for p in points]

    inside = await session(d, "threshold", {**ranges, "hysteresis": 0.5}, points=walk)
    assert kept(inside.points) == [v for v, h, _ in WALK if h == "normal"]
    outside = await session(
        d, "threshold", {**ranges, "hysteresis": 0.5, "keep": "outside"}, points=walk
    )
    assert kept(outside.points) == [v for v, h, _ in WALK if h != "normal"]
    assert d.stop() == 0


async def test_threshold_readme_example_two_ranges(daemon: Factory) -> None:
    d = start(daemon)
    rows = [(22.0, 40.0), (24.9, 20.0), (25.2, 21.0), (24.8, 22.0), (24.4, 26.0), (19.5, 24.0)]
    data = [
        udfd.make_point(
            "climate",
            T0 + i * 60 * S,
            {"temperature": t, "humidity": h},
            {"room": "lab"},
            group="room=lab",
        )
        for i, (t, h) in enumerate(rows)
    ]
    ranges = {"range": [("temperature", 20.0, 25.0), ("humidity", 0.0, 25.0)]}
    kept = await session(d, "threshold", ranges, points=data)
    assert [(p.time, p.fieldsDouble["temperature"]) for p in kept.points] == [
        (T0 + 60 * S, 24.9),
        (T0 + 180 * S, 24.8),
    ]
    labelled = await session(
        d, "threshold", {**ranges, "label": "{field}_state", "hysteresis": 0.5}, points=data
    )
    assert [
        (p.fieldsString["temperature_state"], p.fieldsString["humidity_state"])
        for p in labelled.points
    ] == [
        ("normal", "high"),
        ("normal", "normal"),
        ("high", "normal"),
        ("high", "normal"),
        ("normal", "high"),
        ("low", "normal"),
    ]
    assert d.stop() == 0
