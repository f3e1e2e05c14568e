"""``udfd demo`` against a real server of InfluxDB's v2 write API.

The server is VictoriaMetrics from Debian's packages (``scripts/test`` installs
it), started on loopback here. It stores numeric fields as ``measurement_field``
series and string fields as 0, so the ADSL state itself is checked in the
generated line protocol, and everything numeric is checked in what the server
stored.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from udfd.demo import samples

UDFD = Path(sys.executable).parent / "udfd"
LINE = r"^(adsl|sensors),(line|sensor)=\S+ \w+=\S+(,\w+=\S+)* \d{19}$"


def test_the_data_is_deterministic_and_shows_both_states() -> None:
    first = [s.line() for i in range(300) for s in samples(i, 10**18 + i)]
    assert first == [s.line() for i in range(300) for s in samples(i, 10**18 + i)]
    import re

    assert all(re.match(LINE, line) for line in first), first[:3]
    adsl = [s for i in range(300) for s in samples(i, i) if s.measurement == "adsl"]
    states = [dict(s.fields)["state"] for s in adsl]
    assert {"SHOWTIME", "TRAINING"} <= set(states)
    assert states.count("SHOWTIME") > states.count("TRAINING")
    for s in adsl:  # no rate while training
        fields = dict(s.fields)
        assert (fields["downstream_rate"] == 0.0) is (fields["state"] == "TRAINING")


@pytest.fixture
def victoria() -> Iterator[str]:
    data = Path(tempfile.mkdtemp(prefix="uvm-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            "victoria-metrics",
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data}",
            "-search.latencyOffset=0s",  # by default the newest 30 s are not queryable
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "no victoria-metrics"
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def export(url: str, match: str) -> dict[tuple[str, str], list[float]]:
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10).close()
    # the whole time range: by default the newest samples may fall outside it
    query = {"match[]": match, "start": "0", "end": str(int(time.time()) + 3600)}
    body = urllib.parse.urlencode(query).encode()
    with urllib.request.urlopen(f"{url}/api/v1/export", data=body, timeout=10) as r:
        rows = [json.loads(line) for line in r.read().decode().splitlines() if line]
    out = {}
    for row in rows:
        metric = row["metric"]
        tag = metric.get("line") or metric.get("sensor")
        out[(metric["__name__"], tag)] = row["values"]
    return out


def test_demo_writes_what_it_generates(victoria: str) -> None:
    done = subprocess.run(
        [str(UDFD), "demo", "--url", victoria, "--count", "40", "--backfill", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "240 records written" in done.stdout  # 40 steps x (3 lines + 3 sensors)
    want: dict[tuple[str, str], list[float]] = {}
    for i in range(40):
        for s in samples(i, 0, seed=7):
            tag = s.tags[0][1]
            for field, value in s.fields:
                if isinstance(value, float):
                    want.setdefault((f"{s.measurement}_{field}", tag), []).append(value)
    # temperature and humidity follow the time of day, so only they depend on when the
    # test runs: they are checked by count and range, everything else exactly
    by_time = {"sensors_temperature", "sensors_humidity"}
    # the newest rows become searchable a moment after the write returns
    deadline = time.monotonic() + 20
    while True:
        stored = export(victoria, '{__name__=~"adsl_.*|sensors_.*"}')
        complete = all(len(stored.get(k, [])) >= len(v) for k, v in want.items())
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(want) <= set(stored), sorted(set(want) - set(stored))
    for key, values in want.items():
        if key[0] in by_time:
            assert len(stored[key]) == len(values), key
            low, high = (-10.0, 50.0) if key[0] == "sensors_temperature" else (0.0, 100.0)
            assert all(low < v < high for v in stored[key]), key
        else:
            assert stored[key] == values, key
    assert len(want) == 12  # 3 lines x rate; 3 sensors x (temperature, humidity, pressure)


def test_demo_says_plainly_when_the_server_is_not_there() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [str(UDFD), "demo", "--url", f"http://127.0.0.1:{port}", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"writing to http://127.0.0.1:{port} failed" in done.stderr
