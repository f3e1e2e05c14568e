"""``udfd train`` as users run it: from line-protocol and CSV files, from a real InfluxDB 1.x
(Debian's package, on loopback) over InfluxQL, and the Flux path as far as it can be run
here; then the printed config served by a real daemon, which flags what it should."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from influxdb1 import InfluxDB1
from sensors import FEATURES, normal_rows, points, recall_precision, with_anomalies

from udfd.history.flux import flux_query, flux_rows
from udfd.history.influxql import influxql_rows
from udfd.history.rows import HistoryError
from udfd.testing import DaemonProcess, run_task

pytestmark = pytest.mark.anyio
START = 1_700_000_000_000_000_000


def line_protocol(rows: np.ndarray, sensor: str, measurement: str = "sensors") -> list[str]:
    return [
        f"{measurement},sensor={sensor} "
        + ",".join(f"{f}={v!r}" for f, v in zip(FEATURES, map(float, row), strict=True))
        + f" {START + i * 1_000_000_000}"
        for i, row in enumerate(rows)
    ]


def train(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "udfd", "train", *args], capture_output=True, text=True, timeout=300
    )


def printed_config(stdout: str) -> str:
    return stdout.split("# udfd config (udfd.toml): then `udfd reload`\n")[1].split(
        "\n# TICKscript"
    )[0]


@pytest.fixture
def influxdb() -> Iterator[InfluxDB1]:
    server = InfluxDB1()
    try:
        yield server
    finally:
        server.stop()


async def test_train_from_line_protocol_then_serve_what_it_printed(workdir: Path) -> None:
    history = workdir / "history.lp"
    lines = line_protocol(normal_rows(2000, 1), "s1") + line_protocol(normal_rows(2000, 2), "s2")
    lines += ["# a comment", "", 'other,host=x value=1i,text="a b" 1']
    history.write_text("\n".join(lines) + "\n")
    model = workdir / "models" / "sensors.onnx"
    done = train(
        "isolation_forest",
        "--input",
        str(history),
        "--fields",
        ",".join(FEATURES),
        "--measurement",
        "sensors",
        "--contamination",
        "0.005",
        "--output",
        str(model),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print("\n" + out)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert f"sha256: {digest}" in out
    assert (workdir / "models" / "sensors.onnx.sha256").read_text() == f"{digest}  sensors.onnx\n"
    assert "4,000 used of 4,001 read (skipped: 1 other measurement)" in out
    assert re.search(r"check +ONNX scores = scikit-learn's within [0-9.e-]+ on 4,000 rows", out)
    assert "@sensors()" in out and ".measurement('sensors')" in out
    assert "fitting: 100 trees" in done.stderr  # progress, on stderr
    config = printed_config(out)
    options = tomllib.loads(config)["functions"]["sensors"]["options"]
    assert options == {"model": str(model), "sha256": digest, "field": FEATURES}
    # the loop closes: the printed config, served, flags faulty readings
    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", config)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed", timeout=90)
        rows, truth = with_anomalies(2000, 40, seed=9)
        run = await run_task(daemon.socket("sensors"), {}, points=points(rows))
    finally:
        daemon.close()
    assert run.init.success, run.init.error
    recall, precision = recall_precision(
        [p.fieldsBool["anomaly"] for p in run.points], truth.tolist()
    )
    print(f"served from the printed config: recall {recall:.3f}, precision {precision:.3f}")
    assert recall >= 0.9 and precision >= 0.6


async def test_train_a_classifier_from_csv(workdir: Path) -> None:
    rows = normal_rows(3000, 3)
    rows[:, 0] += np.random.default_rng(3).normal(0, 2.0, len(rows))
    labels = np.where(rows[:, 0] < 20.0, "cold", np.where(rows[:, 0] > 22.5, "hot", "ok"))
    csv = workdir / "rooms.csv"
    text = ["time,measurement,temperature,humidity,pressure,comfort"]
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        a, b, c = map(float, row)
        text.append(f"{START + i},rooms,{a!r},{b!r},{c!r},{label}")
    text.append(f"{START},rooms,21.0,,1013.0,ok")  # a missing feature: skipped
    csv.write_text("\n".join(text) + "\n")
    common = [
        "--input",
        str(csv),
        "--fields",
        ",".join(FEATURES),
        "--label",
        "comfort",
        "--trees",
        "30",
    ]
    onnx = train("classifier", *common, "--output", str(workdir / "rooms.onnx"))
    assert onnx.returncode == 0, onnx.stderr
    print("\n" + onnx.stdout)
    assert "3,000 used of 3,001 read (skipped: 1 missing a feature)" in onnx.stdout
    check = re.search(
        r"ONNX predictions = scikit-learn's on ([\d,]+) of ([\d,]+) rows", onnx.stdout
    )
    assert check and check.group(1) == check.group(2) == "600"
    assert re.search(r"accuracy +\d+\.\d+% on 600 held-out rows", onnx.stdout)
    # the same fit as a pickle: the estimator itself, to compare the served ONNX with
    pickled = train(
        "classifier", *common, "--format", "joblib", "--output", str(workdir / "rooms.joblib")
    )
    assert pickled.returncode == 0, pickled.stderr
    estimator = joblib.load(workdir / "rooms.joblib")
    config = printed_config(onnx.stdout)
    assert 'handler = "classifier"' in config
    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", config)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed", timeout=90)
        test_rows = normal_rows(500, 4)
        test_rows[:, 0] += np.random.default_rng(4).normal(0, 2.0, 500)
        run = await run_task(daemon.socket("rooms"), {}, points=points(test_rows))
    finally:
        daemon.close()
    assert run.init.success, run.init.error
    assert [p.fieldsString["class"] for p in run.points] == estimator.predict(test_rows).tolist()


def test_train_from_a_real_influxdb_1x_over_influxql(workdir: Path, influxdb: InfluxDB1) -> None:
    influxdb.query("CREATE DATABASE plant")
    influxdb.write(
        "plant",
        line_protocol(normal_rows(1500, 5), "s1")
        + line_protocol(normal_rows(1500, 6), "s2")
        + ["other value=1 1"],
    )
    model = workdir / "plant.onnx"
    built = train(
        "isolation_forest",
        "--influx-url",
        influxdb.url,
        "--database",
        "plant",
        "--measurement",
        "sensors",
        "--fields",
        ",".join(FEATURES),
        "--start",
        "100000d",
        "--output",
        str(model),
    )
    assert built.returncode == 0, built.stderr
    print("\n" + built.stdout)
    assert "3,000 used of 3,000 read" in built.stdout
    assert "reading http://127.0.0.1" in built.stderr and "(InfluxQL)" in built.stderr
    query = "SELECT temperature, humidity, pressure FROM sensors WHERE sensor = 's1'"
    explicit = train(
        "isolation_forest",
        "--influx-url",
        influxdb.url,
        "--database",
        "plant",
        "--query",
        query,
        "--fields",
        ",".join(FEATURES),
        "--output",
        str(workdir / "s1.onnx"),
        "--quiet",
    )
    assert explicit.returncode == 0, explicit.stderr
    assert "1,500 used of 1,500 read" in explicit.stdout and explicit.stderr == ""
    missing = train(
        "isolation_forest",
        "--influx-url",
        influxdb.url,
        "--database",
        "nope",
        "--measurement",
        "sensors",
        "--fields",
        ",".join(FEATURES),
        "--output",
        str(model),
    )
    assert missing.returncode == 1 and "database not found: nope" in missing.stderr
    # the reader streams chunks: 3,000 rows in chunks of 500
    chunks: list[int] = []
    rows = list(
        influxql_rows(
            influxdb.url,
            "plant",
            "SELECT * FROM sensors GROUP BY sensor",
            chunk_size=500,
            on_chunk=chunks.append,
        )
    )
    assert len(rows) == 3000 and len(chunks) >= 6 and sum(chunks) == 3000
    assert {r.tags["sensor"] for r in rows} == {"s1", "s2"}
    assert rows[0].time == START and set(rows[0].fields) == set(FEATURES)
    with pytest.raises(HistoryError, match="cannot connect"):
        list(influxql_rows("http://127.0.0.1:9", "plant", "SELECT * FROM sensors"))


# ---------------------------------------------------------------- Flux

FLUX_HEADER = (
    "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,string,string,"
    "double,double,double\n"
    "#group,false,false,true,true,false,true,true,false,false,false\n"
    "#default,_result,,,,,,,,,\n"
    ",result,table,_start,_stop,_time,_measurement,sensor,humidity,pressure,temperature\n"
)
UNPIVOTED_HEADER = (
    "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,"
    "string,string\n"
    "#group,false,false,true,true,false,false,true,true,true\n"
    "#default,_result,,,,,,,,\n"
    ",result,table,_start,_stop,_time,_value,_field,_measurement,sensor\n"
)


class FakeQueryAPI(http.server.BaseHTTPRequestHandler):
    """A stand-in for InfluxDB 2.x's POST /api/v2/query (no Flux server can be installed
    here). It answers with annotated CSV as InfluxDB documents it, and records what the
    client sent, so the request udfd builds and the parsing of the answer are checked;
    the query is not executed."""

    requests: list[dict[str, Any]] = []
    body = ""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        FakeQueryAPI.requests.append(
            {
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "json": json.loads(self.rfile.read(length) or b"{}"),
            }
        )
        if self.headers.get("Authorization") != "Token secret-token":
            self._send(
                401,
                "application/json",
                json.dumps({"code": "unauthorized", "message": "unauthorized access"}),
            )
            return
        self._send(200, "text/csv; charset=utf-8", FakeQueryAPI.body)

    def _send(self, code: int, kind: str, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_flux() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeQueryAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeQueryAPI.requests = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pivoted_csv(rows: np.ndarray) -> str:
    lines = [
        f",,0,2026-01-01T00:00:00Z,2026-12-01T00:00:00Z,2026-06-01T00:{i // 60:02d}:{i % 60:02d}Z,"
        f"sensors,s1,{float(r[1])!r},{float(r[2])!r},{float(r[0])!r}"
        for i, r in enumerate(rows)
    ]
    return FLUX_HEADER + "\n".join(lines) + "\n\n"


def test_train_over_flux_against_a_stand_in_query_endpoint(workdir: Path, fake_flux: str) -> None:
    """What this does not exercise: a real Flux engine running the query (range, filter and
    pivot semantics), InfluxDB 2.x's org and bucket resolution and token checks, and 1.8's
    Flux endpoint. What it does: influxdb-client's real request and annotated-CSV parsing,
    udfd's query, auth and error handling, and training from what came back."""
    rows = normal_rows(600, 7)
    FakeQueryAPI.body = pivoted_csv(rows)
    done = train(
        "isolation_forest",
        "--influx-url",
        fake_flux,
        "--token",
        "secret-token",
        "--org",
        "plant-org",
        "--bucket",
        "telemetry",
        "--measurement",
        "sensors",
        "--fields",
        ",".join(FEATURES),
        "--start",
        "7d",
        "--output",
        str(workdir / "flux.onnx"),
    )
    assert done.returncode == 0, done.stderr
    assert "600 used of 600 read" in done.stdout and "(Flux)" in done.stderr
    (request,) = FakeQueryAPI.requests
    assert request["path"].startswith("/api/v2/query") and "org=plant-org" in request["path"]
    assert request["json"]["query"] == flux_query("telemetry", "sensors", FEATURES, "-7d")
    assert 'from(bucket: "telemetry")' in request["json"]["query"]
    refused = train(
        "isolation_forest",
        "--influx-url",
        fake_flux,
        "--token",
        "wrong",
        "--org",
        "o",
        "--bucket",
        "b",
        "--measurement",
        "sensors",
        "--fields",
        ",".join(FEATURES),
        "--output",
        str(workdir / "x.onnx"),
    )
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr


def test_flux_records_without_pivot_are_joined_into_points(fake_flux: str) -> None:
    lines = []
    # as InfluxDB answers: each field (and each series) in a table of its own
    for table, (field, base) in enumerate((("temperature", 20.0), ("humidity", 40.0))):
        for t in range(3):
            lines.append(
                f",,{table},2026-01-01T00:00:00Z,2026-12-01T00:00:00Z,2026-06-01T00:00:0{t}Z,"
                f"{base + t},{field},sensors,s1"
            )
    FakeQueryAPI.body = UNPIVOTED_HEADER + "\n".join(lines) + "\n\n"
    rows = list(flux_rows(fake_flux, 'from(bucket: "b")', token="secret-token", org="o"))
    assert [dict(r.fields) for r in rows] == [
        {"temperature": 20.0 + t, "humidity": 40.0 + t} for t in range(3)
    ]
    assert all(r.measurement == "sensors" and r.tags == {"sensor": "s1"} for r in rows)
    assert rows[1].time - rows[0].time == 1_000_000_000


def test_train_mistakes_get_one_clear_line(workdir: Path) -> None:
    history = workdir / "h.lp"
    history.write_text("\n".join(line_protocol(normal_rows(50, 1), "s1")) + "\n")
    common = ["--fields", ",".join(FEATURES), "--output", str(workdir / "m.onnx")]
    wrong = train("isolation_forest", "--input", str(history), "--measurement", "nope", *common)
    assert wrong.returncode == 1 and "no usable rows: read 50" in wrong.stderr
    both = train("isolation_forest", "--input", str(history), "--influx-url", "http://x", *common)
    assert both.returncode == 1 and "either --input FILE or --influx-url URL" in both.stderr
    bad = workdir / "bad.lp"
    bad.write_text("sensors temperature=1\nsensors temperature=\n")
    broken = train("isolation_forest", "--input", str(bad), *common)
    assert broken.returncode == 1 and f"{bad}:2: " in broken.stderr
    suffix = train(
        "isolation_forest",
        "--input",
        str(history),
        "--fields",
        "temperature",
        "--output",
        str(workdir / "m.pkl"),
    )
    assert suffix.returncode == 1 and "this model is a .onnx file" in suffix.stderr
    no_label = train("classifier", "--input", str(history), *common)
    assert no_label.returncode == 2 and "--label" in no_label.stderr
    assert not (workdir / "m.onnx").exists()
