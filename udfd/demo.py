"""``udfd demo``: the examples' data, written to InfluxDB so a pipeline has something to show.

Two series, as the README's examples use them:

* ``adsl`` (tag ``line``): the modem state a DSL line reports, ``state`` =
  ``SHOWTIME`` most of the time and ``TRAINING`` for a few samples now and then,
  with the ``downstream_rate`` in kbit/s (0 while training). ``state_change``
  turns it into edges, ``moving_average`` smooths the rate.
* ``sensors`` (tag ``sensor``): ``temperature`` (°C), ``humidity`` (%) and
  ``pressure`` (hPa) around a daily cycle, with a rare spike for ``outliers``
  and the anomaly detectors to find.

The data is a pure function of the seed and the sample index, so a test can
write it and know exactly what arrived. It is written through ``influxdb-client``
to anything that speaks InfluxDB's v2 write API.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger("udfd.demo")

STATES = ("SHOWTIME", "TRAINING")


@dataclass(frozen=True)
class Sample:
    """One line-protocol record: measurement, tags, fields, time (ns)."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, float | str], ...]
    time_ns: int

    def line(self) -> str:
        tags = "".join(f",{k}={_escape(v)}" for k, v in self.tags)
        fields = ",".join(f"{k}={_value(v)}" for k, v in self.fields)
        return f"{self.measurement}{tags} {fields} {self.time_ns}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")


def _value(value: float | str) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(float(value))


def samples(
    index: int, time_ns: int, *, seed: int = 1, lines: int = 3, sensors: int = 3
) -> Iterator[Sample]:
    """Everything sampled at step ``index`` (a deterministic function of seed and index)."""
    for n in range(1, lines + 1):
        rng = random.Random(f"{seed}:adsl:{n}:{index // 10}")
        # a line trains for one 10-sample block in about eight
        training = rng.random() < 0.12 and index % 10 < rng.randint(2, 6)
        rate = 0.0 if training else 16_000.0 + random.Random(f"{seed}:r:{n}:{index}").gauss(0, 150)
        yield Sample(
            "adsl",
            (("line", f"line-{n}"),),
            (("state", STATES[training]), ("downstream_rate", round(rate, 1))),
            time_ns,
        )
    day = 2 * math.pi * (time_ns / 1e9 % 86_400) / 86_400
    for n in range(1, sensors + 1):
        rng = random.Random(f"{seed}:sensor:{n}:{index}")
        temperature = 21.0 + 3.0 * math.sin(day) + rng.gauss(0, 0.2)
        if rng.random() < 0.01:  # a rare spike
            temperature += rng.choice((-1, 1)) * rng.uniform(8, 15)
        yield Sample(
            "sensors",
            (("sensor", f"s{n}"),),
            (
                ("temperature", round(temperature, 3)),
                ("humidity", round(45.0 - 5.0 * math.sin(day) + rng.gauss(0, 1.0), 2)),
                ("pressure", round(1013.0 + rng.gauss(0, 0.8), 2)),
            ),
            time_ns,
        )


def run(
    url: str,
    token: str,
    org: str,
    bucket: str,
    *,
    interval: float = 1.0,
    count: int = 0,
    seed: int = 1,
    backfill: bool = False,
) -> int:
    """Write ``count`` steps (0: until interrupted); returns the number of records written.

    ``backfill`` writes the steps at once, ``interval`` apart in time and ending now,
    instead of one step per interval in real time.
    """
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    written = 0
    step_ns = int(interval * 1e9)
    with InfluxDBClient(url=url, token=token, org=org) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        if backfill:
            start = time.time_ns() - step_ns * max(count - 1, 0)
            batch: list[str] = []
            for i in range(count):
                batch.extend(s.line() for s in samples(i, start + i * step_ns, seed=seed))
                if len(batch) >= 5000:
                    write.write(bucket=bucket, record=batch, write_precision="ns")
                    written += len(batch)
                    batch = []
            if batch:
                write.write(bucket=bucket, record=batch, write_precision="ns")
                written += len(batch)
            return written
        i = 0
        while count == 0 or i < count:
            lines = [s.line() for s in samples(i, time.time_ns(), seed=seed)]
            write.write(bucket=bucket, record=lines, write_precision="ns")
            written += len(lines)
            if i == 0:
                log.info("writing the demo data to %s (bucket %s) every %gs", url, bucket, interval)
            i += 1
            if count == 0 or i < count:
                time.sleep(interval)
    return written
