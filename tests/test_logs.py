"""udfd's own log, as an operator reads it: every error that ends a connection, with the
function, task, node and group it happened in, in the plain and the JSON format."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from daemon_harness import DaemonProcess

import udfd
from udfd.protocol.client import connect

CONFIG = '[functions.faulty]\nhandler = "HANDLERS/handlers.py:Faulty"\n'


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ulg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def fail_one(path: Path) -> str:
    async with connect(path) as client:
        await client.info()
        assert (await client.init(task_id="adsl_task", node_id="udf3")).success
        point = udfd.make_point("adsl", 1, {"fail": True}, {"line": "l1"}, group="line=l1")
        await client.send_points([point])
        return await client.wait_error()


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_handler_error_that_ends_a_connection_is_logged_with_its_context(
    workdir: Path, fmt: str
) -> None:
    daemon = DaemonProcess(workdir, f'log_format = "{fmt}"\n' + CONFIG)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
        error = anyio.run(fail_one, daemon.socket("faulty"))
        assert "ValueError: cannot handle this point" in error  # what Kapacitor is told
        line = daemon.wait_for("cannot handle this point")
        if fmt == "json":
            record = json.loads(line)
            assert record["level"] == "error"
            assert (record["function"], record["task"], record["node"]) == (
                "faulty",
                "adsl_task",
                "udf3",
            )
            assert "group='line=l1'" in record["message"]
            assert "Traceback" in record["exception"] and "ValueError" in record["exception"]
        else:
            assert " ERROR " in line and "group='line=l1'" in line
            assert "function=faulty" in line and "task=adsl_task" in line and "node=udf3" in line
            assert "Traceback" in daemon.log  # the handler's traceback follows the line
        assert daemon.stop() == 0
    finally:
        daemon.close()
