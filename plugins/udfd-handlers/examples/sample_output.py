"""Print what each handler emits for a small input: the samples in README.md come from here.

Run: ``python plugins/udfd-handlers/examples/sample_output.py``. Each handler is
served on a real unix socket by udfd's engine and driven by udfd's Kapacitor-side
client, exactly as in the tests; output is printed as InfluxDB line protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import anyio
from udfd import Handler, fields, make_point
from udfd.protocol.client import connect
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

from udfd_handlers.moving_average import MovingAverage
from udfd_handlers.outliers import Outliers
from udfd_handlers.state_change import StateChange
from udfd_handlers.threshold import Threshold


def line(point: pb.Point, name: str = "") -> str:
    """One point as line protocol (batch points carry no name: pass the batch's)."""
    tags = "".join(f",{k}={v}" for k, v in sorted(point.tags.items()))
    parts = []
    for key, value in fields(point).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = f"{value}i"
        elif isinstance(value, str):
            text = f'"{value}"'
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return f"{point.name or name}{tags} {','.join(parts)} {point.time}"


async def show(
    title: str,
    handler: type[Handler[Any]],
    options: Mapping[str, Any],
    points: Iterable[pb.Point] = (),
    batch: tuple[pb.BeginBatch, list[pb.Point], pb.EndBatch] | None = None,
) -> None:
    print(f"# {title}")
    async with serve_handler(handler) as site, connect(site.path) as client:
        await client.info()
        init = await client.init(options)
        assert init.success, init.error
        await client.send_points(points)
        if batch is not None:
            await client.send_batch(*batch)
        out = await client.finish()
    name = batch[0].name if batch else ""
    for msg in out:
        if isinstance(msg, pb.BeginBatch):
            print(f"-- BeginBatch name={msg.name} group={msg.group!r} size={msg.size}")
        elif isinstance(msg, pb.EndBatch):
            print(f"-- EndBatch name={msg.name} tmax={msg.tmax}")
        else:
            print(line(msg, name))
    print()


ADSL = [
    (1514979051065000000, "SHOWTIME"),
    (1514979141070000000, "TRAINING"),
    (1514979231065000000, "SHOWTIME"),
    (1514979321060000000, "SHOWTIME"),
    (1514979411055000000, "SHOWTIME"),
    (1514979501050000000, "SHOWTIME"),
    (1514979591045000000, "SHOWTIME"),
    (1514979681040000000, "TRAINING"),
    (1514979771035000000, "TRAINING"),
    (1514979861030000000, "TRAINING"),
    (1514979951025000000, "TRAINING"),
    (1514980041020000000, "SHOWTIME"),
    (1514980131015000000, "SHOWTIME"),
    (1514980221010000000, "TRAINING"),
    (1514980311005000000, "TRAINING"),
    (1514980401000000000, "TRAINING"),
    (1514980491000000000, "TRAINING"),
]


async def main() -> None:
    adsl = [
        make_point(
            "adsl_connection",
            t,
            {"value": v},
            {"host": "router1"},
            group="host=router1",
            dimensions=["host"],
        )
        for t, v in ADSL
    ]
    await show("state_change: .field('value')", StateChange, {"field": "value"}, adsl)
    await show(
        "state_change: .previous('prev').duration('lasted').durationUnit(1s).stable(2)",
        StateChange,
        {
            "previous": "prev",
            "duration": "lasted",
            "durationUnit": timedelta(seconds=1),
            "stable": 2,
        },
        adsl,
    )

    cpu = [
        make_point(
            "cpu",
            1_700_000_000_000_000_000 + i * 10**10,
            {"usage": v},
            {"host": "web1"},
            group="host=web1",
            dimensions=["host"],
        )
        for i, v in enumerate([10, 12.5, 11.0, 30.0, 12.0, 11.5])
    ]
    await show(
        "moving_average: .field('usage').size(3).as('usage_avg')",
        MovingAverage,
        {"field": "usage", "size": 3, "as": "usage_avg"},
        cpu,
    )
    await show(
        "moving_average: ... .fullOnly()",
        MovingAverage,
        {"field": "usage", "size": 3, "as": "usage_avg", "fullOnly": ()},
        cpu,
    )

    t0 = 1_700_000_000_000_000_000
    latencies = [12.0, 11.5, 13.2, 250.0, 12.8, 11.9, 0.4, 12.4]
    tags = {"host": "web1"}
    rows = [
        make_point("", t0 + i * 10**9, {"ms": v}, tags, group="host=web1")
        for i, v in enumerate(latencies)
    ]
    batch = (
        pb.BeginBatch(name="latency", group="host=web1", tags=tags, size=len(rows)),
        rows,
        pb.EndBatch(name="latency", group="host=web1", tags=tags, tmax=t0 + 10 * 10**9),
    )
    await show("outliers: .field('ms')", Outliers, {"field": "ms"}, batch=batch)
    rows2 = [pb.Point() for _ in rows]
    for copy, src in zip(rows2, rows, strict=True):
        copy.CopyFrom(src)
    await show(
        "outliers: .field('ms').mark('outlier')",
        Outliers,
        {"field": "ms", "mark": "outlier"},
        batch=(batch[0], rows2, batch[2]),
    )

    climate = [
        make_point(
            "climate",
            t0 + i * 60 * 10**9,
            {"temperature": t, "humidity": h},
            {"room": "lab"},
            group="room=lab",
            dimensions=["room"],
        )
        for i, (t, h) in enumerate(
            [(22.0, 40.0), (24.9, 20.0), (25.2, 21.0), (24.8, 22.0), (24.4, 26.0), (19.5, 24.0)]
        )
    ]
    ranges = [("temperature", 20.0, 25.0), ("humidity", 0.0, 25.0)]
    await show(
        "threshold: .range('temperature', 20.0, 25.0).range('humidity', 0.0, 25.0)",
        Threshold,
        {"range": ranges},
        climate,
    )
    await show(
        "threshold: ... .label('{field}_state').hysteresis(0.5)",
        Threshold,
        {"range": ranges, "label": "{field}_state", "hysteresis": 0.5},
        climate,
    )


if __name__ == "__main__":
    anyio.run(main)
