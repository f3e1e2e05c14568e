"""The health endpoint of a real daemon: /health and /metrics over real HTTP, TCP and unix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import udfd
from udfd.protocol.client import connect
from udfd.testing import DaemonProcess


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="uhe-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        with exc:  # an HTTP error still holds the connection
            return exc.code, exc.read(), exc.headers["Content-Type"]


def metric(text: str, name: str, function: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("function") == function:
                return float(sample.value)
    raise AssertionError(f"{name}{{function={function!r}}} not in the metrics")


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (the counters arrive each second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


async def send_points(path: Path, n: int) -> None:
    async with connect(path) as client:
        await client.info()
        assert (await client.init({"field": "value"})).success
        await client.send_points([udfd.make_point("cpu", i, {"value": float(i)}) for i in range(n)])
        for _ in range(3):
            await client.keepalive()
        assert len(await client.finish()) == n


CONFIG = '[functions.changes]\nhandler = "state_change"\n'


def test_health_and_metrics_over_tcp(workdir: Path) -> None:
    port = free_port()
    broken = '[functions.broken]\nhandler = "no_such_module_here:Nope"\n'
    daemon = DaemonProcess(workdir, f'health = "127.0.0.1:{port}"\n' + CONFIG + broken)
    base = f"http://127.0.0.1:{port}"
    try:
        daemon.wait_for("ready: 1 function(s) ready, 1 failed")
        code, body, kind = get(f"{base}/health")
        assert code == 503 and kind == "application/json"  # one function is not serving
        doc = json.loads(body)
        assert doc["status"] == "unavailable"
        assert doc["functions"]["changes"]["state"] == "serving"
        assert doc["functions"]["changes"]["socket"] == str(daemon.socket("changes"))
        assert 0 < doc["functions"]["changes"]["load_seconds"] < 60
        failed = doc["functions"]["broken"]
        assert failed["state"] == "failed" and "no_such_module_here" in failed["reason"]

        anyio.run(send_points, daemon.socket("changes"), 250)

        def counted() -> dict[str, Any] | None:
            entry = json.loads(get(f"{base}/health")[1])["functions"]["changes"]
            return entry if entry["points_in"] == 250 else None

        entry = eventually(counted)  # live: reported within about a second
        assert entry, "points_in never reached 250"
        assert entry["points_out"] == 250 and entry["connections_total"] == 1
        assert entry["worker_pids"] and all(isinstance(p, int) for p in entry["worker_pids"])

        code, body, kind = get(f"{base}/metrics")
        assert code == 200 and kind.startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert metric(text, "udfd_points_in_total", "changes") == 250
        assert metric(text, "udfd_points_out_total", "changes") == 250
        assert metric(text, "udfd_connections_total", "changes") == 1
        assert metric(text, "udfd_connections", "changes") == 0
        assert metric(text, "udfd_function_up", "changes") == 1
        assert metric(text, "udfd_function_up", "broken") == 0
        assert metric(text, "udfd_handler_errors_total", "changes") == 0
        assert metric(text, "udfd_points_dropped_total", "changes") == 0
        # histograms: three keepalives answered, at least one chunk through the handler
        assert metric(text, "udfd_keepalive_latency_seconds_count", "changes") == 3
        assert metric(text, "udfd_keepalive_latency_seconds_sum", "changes") > 0
        assert metric(text, "udfd_handler_seconds_count", "changes") >= 1
        families = {f.name: f for f in text_string_to_metric_families(text)}
        buckets = [
            s for s in families["udfd_keepalive_latency_seconds"].samples
            if s.name.endswith("_bucket") and s.labels["function"] == "changes"
        ]  # fmt: skip
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 3
        assert [b.value for b in buckets] == sorted(b.value for b in buckets)  # cumulative

        assert get(f"{base}/nothing")[0] == 404
        request = urllib.request.Request(f"{base}/health", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        refused.value.close()
        assert refused.value.code == 405
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_all_serving_is_200_and_counters_survive_a_worker_crash(workdir: Path) -> None:
    port = free_port()
    daemon = DaemonProcess(workdir, f'health = "127.0.0.1:{port}"\n' + CONFIG)
    base = f"http://127.0.0.1:{port}"
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
        code, body, _ = get(f"{base}/health")
        assert code == 200 and json.loads(body)["status"] == "ok"
        anyio.run(send_points, daemon.socket("changes"), 100)

        def points_in() -> float:
            return metric(get(f"{base}/metrics")[1].decode(), "udfd_points_in_total", "changes")

        assert eventually(lambda: points_in() == 100)
        (pid,) = json.loads(get(f"{base}/health")[1])["functions"]["changes"]["worker_pids"]
        os.kill(pid, signal.SIGKILL)
        daemon.wait_for(f"(pid {pid}) died")

        def restarted() -> bool:
            pids = json.loads(get(f"{base}/health")[1])["functions"]["changes"]["worker_pids"]
            text = get(f"{base}/metrics")[1].decode()
            serving = any(
                s.name == "udfd_workers" and s.value == 1
                for f in text_string_to_metric_families(text)
                for s in f.samples
            )
            return bool(pids) and pid not in pids and serving

        assert eventually(restarted, 30)
        assert points_in() == 100  # what the dead worker counted is kept
        anyio.run(send_points, daemon.socket("changes"), 50)
        assert eventually(lambda: points_in() == 150)
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_health_on_a_unix_socket_and_a_silent_peer(workdir: Path) -> None:
    daemon = DaemonProcess(workdir, 'health = "health.sock"\n' + CONFIG)
    path = daemon.sockets / "health.sock"
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
        with socket.socket(socket.AF_UNIX) as silent:
            silent.connect(str(path))  # sends nothing: must not hold up anyone else
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                client.connect(str(path))
                client.sendall(b"GET /health HTTP/1.1\r\nHost: udfd\r\n\r\n")
                data = b""
                while chunk := client.recv(65536):
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert json.loads(body)["functions"]["changes"]["state"] == "serving"
        assert daemon.stop() == 0
        assert not path.exists()  # its own socket file is removed on exit
    finally:
        daemon.close()


def test_check_uses_the_live_endpoint_when_the_status_file_is_gone(workdir: Path) -> None:
    # the status file can go missing or stale (an unwritable state dir); with a health
    # endpoint configured, `udfd check` asks the daemon itself and still sees the failure
    port = free_port()
    broken = '[functions.broken]\nhandler = "no_such_module_here:Nope"\n'
    daemon = DaemonProcess(workdir, f'health = "127.0.0.1:{port}"\n' + CONFIG + broken)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 1 failed")
        status = workdir / "state" / "status.json"
        status.unlink()
        status.mkdir()  # every later status write fails: the file stays unreadable
        udfd_bin = Path(sys.executable).parent / "udfd"
        done = subprocess.run(
            [str(udfd_bin), "check", "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stdout
        assert "FAIL broken: handler failed to load" in done.stdout
        assert "no_such_module_here" in done.stdout
        assert "ok   changes:" in done.stdout
        assert daemon.stop() == 0
    finally:
        daemon.close()
