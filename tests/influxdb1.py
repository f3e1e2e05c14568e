"""A real InfluxDB 1.x server (Debian's ``influxdb`` package) on loopback, for the tests.

scripts/test installs the package; each test's server has its own directories and
ports, so nothing touches a system InfluxDB or another test's data.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[logging]
  level = "warn"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InfluxDB1:
    def __init__(self) -> None:
        binary = shutil.which("influxd")
        assert binary, "influxd is missing: scripts/test installs Debian's influxdb package"
        self.root = Path(tempfile.mkdtemp(prefix="uinflux-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.root / "influxdb.conf"
        config.write_text(CONFIG.format(root=self.root, port=self.port, rpc=_free_port()))
        self.log = open(self.root / "influxd.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [binary, "-config", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                    if response.status == 204:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("influxd did not start: " + self.logs())
            time.sleep(0.1)

    def logs(self) -> str:
        return (self.root / "influxd.log").read_text(errors="replace")[-2000:]

    def query(self, q: str, db: str = "") -> bytes:
        form = {"q": q} | ({"db": db} if db else {})
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=30) as response:
            body: bytes = response.read()
            return body

    def write(self, db: str, lines: list[str]) -> None:
        url = f"{self.url}/write?db={urllib.parse.quote(db)}&precision=ns"
        for start in range(0, len(lines), 5000):
            body = "\n".join(lines[start : start + 5000]).encode()
            request = urllib.request.Request(url, data=body, method="POST")
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 204

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
