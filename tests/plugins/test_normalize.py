"""normalize over a real socket: the ADSL golden data mapped to numbers, unit conversion,
renames, originals kept, unknown states, batches, and readable option errors."""

from __future__ import annotations

from typing import Any

import pytest
from golden import ADSL
from udfd_ml.normalize import Normalize, NormalizeBatch

from udfd import fields, make_point
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

pytestmark = pytest.mark.anyio

TABLE = [("SHOWTIME", 1.0), ("TRAINING", 0.0)]


def adsl_points() -> list[pb.Point]:
    return [
        make_point(
            "adsl_connection",
            t,
            {"state": state, "rate": 16000},
            {"host": "router1"},
            group="adsl_connection\nhost=router1",
            dimensions=["host"],
        )
        for t, state in ADSL
    ]


def identity(point: pb.Point) -> tuple[Any, ...]:
    return (point.name, point.group, dict(point.tags), list(point.dimensions), point.time)


async def test_golden_adsl_states_become_numbers(drive: Any) -> None:
    sent = adsl_points()
    async with serve_handler(Normalize) as site:
        run = await drive(site, {"field": "state", "map": TABLE}, points=sent)
    assert run.errors == []
    assert [p.fieldsDouble["state"] for p in run.points] == [
        1.0 if state == "SHOWTIME" else 0.0 for _, state in ADSL
    ]
    for out, before in zip(run.points, sent, strict=True):
        assert identity(out) == identity(before)  # regrouping by Kapacitor stays right
        assert "state" not in out.fieldsString and out.fieldsInt["rate"] == 16000


async def test_unknown_states_drop_keep_or_default(drive: Any) -> None:
    odd = make_point("adsl", 1, {"state": "IDLE"}, {"host": "r"})
    good = make_point("adsl", 2, {"state": "SHOWTIME"}, {"host": "r"})
    async with serve_handler(Normalize) as site:
        dropped = await drive(site, {"field": "state", "map": TABLE}, points=[odd, good])
        kept = await drive(
            site, {"field": "state", "map": TABLE, "unknown": "keep"}, points=[odd, good]
        )
        default = await drive(
            site, {"field": "state", "map": TABLE, "default": -1.0}, points=[odd, good]
        )
    assert [p.time for p in dropped.points] == [2] and dropped.errors == []
    assert site.stats.dropped == 1  # counted, not silent
    assert fields(kept.points[0]) == {"state": "IDLE"} and kept.points[1].fieldsDouble["state"] == 1
    assert [p.fieldsDouble["state"] for p in default.points] == [-1.0, 1.0]


async def test_unit_conversion_rename_and_originals(drive: Any) -> None:
    point = make_point("room", 5, {"temp_f": 212, "label": "kitchen"}, {"room": "k"}, group="g")
    options = {
        "scale": [("temp_f", 5 / 9, -160 / 9)],  # Fahrenheit to Celsius
        "rename": [("temp_f", "temperature")],
        "keepOriginal": (),
    }
    async with serve_handler(Normalize) as site:
        run = await drive(site, options, points=[point])
    (out,) = run.points
    assert fields(out) == {
        "temperature": pytest.approx(100.0),
        "temp_f_raw": 212,
        "label": "kitchen",
    }
    assert identity(out) == identity(point)


async def test_batches_are_normalized_and_framed(drive: Any, make_batch: Any) -> None:
    batch = make_batch("adsl", "host=r", {"host": "r"}, [(t, {"state": s}) for t, s in ADSL[:5]])
    async with serve_handler(NormalizeBatch) as site:
        run = await drive(site, {"field": "state", "map": TABLE}, batches=[batch])
    assert run.errors == []
    begin, *points, end = run.output
    assert isinstance(begin, pb.BeginBatch) and begin.size == 5 and isinstance(end, pb.EndBatch)
    assert [p.fieldsDouble["state"] for p in points] == [
        1.0 if s == "SHOWTIME" else 0.0 for _, s in ADSL[:5]
    ]


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({"map": TABLE}, [".map() needs .field(name)"]),
        ({"field": "state"}, ["no .map() table"]),
        ({}, ["nothing to do"]),
        ({"field": "state", "map": TABLE, "unknown": "default"}, [".default(number)"]),
        ({"field": "state", "map": TABLE, "unknown": "keep", "default": 0.0}, ["contradict"]),
        ({"field": "state", "map": [("A", 1.0), ("A", 2.0)]}, ["same state twice"]),
        ({"rename": [("a", "x"), ("b", "x")]}, ["same new name"]),
        ({"scale": [("t", 1.0, 0.0)], "keepOriginal": (), "originalAs": "raw"}, ["{field}"]),
    ],
)
async def test_option_errors(drive: Any, options: dict[str, Any], mentions: list[str]) -> None:
    async with serve_handler(Normalize) as site:
        run = await drive(site, options)
    assert not run.init.success
    for text in mentions:
        assert text in run.init.error, run.init.error


async def test_a_table_from_the_config_as_a_toml_table() -> None:
    from udfd_ml.normalize import NormalizeOptions

    options = NormalizeOptions.model_validate({"field": "state", "map": {"SHOWTIME": 1}})
    assert options.map == [("SHOWTIME", 1.0)]


async def test_golden_adsl_through_the_daemon_with_the_table_in_the_config(workdir: Any) -> None:
    """The same golden data through a real `udfd serve`, the table in the config."""
    from udfd.testing import DaemonProcess, run_task

    config = (
        '[functions.adsl_numeric]\nhandler = "normalize"\n'
        "[functions.adsl_numeric.options]\n"
        'field = "state"\nmap = { SHOWTIME = 1.0, TRAINING = 0.0 }\n'
    )
    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", config)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed", timeout=90)
        sent = adsl_points()
        run = await run_task(daemon.socket("adsl_numeric"), {}, points=sent)
    finally:
        daemon.close()
    assert run.init.success, run.init.error
    assert [(p.time, p.fieldsDouble["state"]) for p in run.points] == [
        (t, 1.0 if state == "SHOWTIME" else 0.0) for t, state in ADSL
    ]
    for out, before in zip(run.points, sent, strict=True):
        assert identity(out) == identity(before)
