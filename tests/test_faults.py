"""Faults around the daemon: a state_dir it cannot write, a status write that fails, a
Snapshot that raises (in tests/test_connection.py), and what `udfd check` says then."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from udfd.serve import status as status_module
from udfd.serve.status import write_status


def test_check_never_says_ok_when_the_status_cannot_be_written(workdir: Path) -> None:
    # a state_dir under a regular file cannot be created, even by root
    blocker = workdir / "not-a-dir"
    blocker.write_text("")
    path = workdir / "udfd.toml"
    path.write_text(
        f'socket_dir = "{workdir / "s"}"\n'
        f'state_dir = "{blocker / "state"}"\n'
        '[functions.good]\nhandler = "state_change"\n'
        '[functions.broken]\nhandler = "no_such_module_here:Nope"\n'
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "udfd", "serve", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "ready:" in line:
                break
        check = subprocess.run(
            [sys.executable, "-m", "udfd", "check", "--config", str(path)],
            capture_output=True,
            text=True,
        )
    finally:
        server.terminate()
        server.wait(30)
        if server.stderr is not None:
            server.stderr.close()
    assert check.returncode == 1
    lines = check.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("FAIL") for line in lines), check.stdout
    assert "whether its handler loaded cannot be told" in check.stdout
    assert "ok" not in [line.split()[0] for line in lines]


def test_a_failed_status_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a full disk, injected: the rename fails as it would with ENOSPC (a fake, for the path)
    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(status_module.os, "replace", full)
    write_status(tmp_path / "status.json", {"functions": []})
    assert list(tmp_path.iterdir()) == []
    assert "No space left on device" in caplog.text


def test_a_removed_socket_directory_is_noticed_and_the_socket_comes_back(workdir: Path) -> None:
    import json
    import shutil
    import time

    import anyio

    from udfd.protocol.client import probe_info
    from udfd.testing import DaemonProcess

    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", '[functions.f]\nhandler = "state_change"\n')
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
        shutil.rmtree(daemon.sockets)  # a cleaned /run, a tmp reaper
        daemon.wait_for("its socket file", timeout=15)
        info = anyio.run(probe_info, daemon.socket("f"))
        assert info.wants == 0  # answering again, on a fresh socket file
        # now the directory cannot be made again: reported, not hidden
        shutil.rmtree(daemon.sockets)
        daemon.sockets.write_text("in the way")
        daemon.wait_for("cannot be re-created", timeout=15)
        status_file = workdir / "d" / "state" / "status.json"
        deadline = time.monotonic() + 15
        while True:
            entry = json.loads(status_file.read_text())["functions"][0]
            if entry["state"] == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert entry["state"] == "failed" and "socket file missing" in entry["error"]
        daemon.sockets.unlink()  # out of the way: it recovers by itself
        deadline = time.monotonic() + 15
        while not daemon.socket("f").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert anyio.run(probe_info, daemon.socket("f")).wants == 0
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert "Traceback" not in daemon.log


def test_after_a_sigkill_of_the_supervisor_a_restart_cleans_up_and_serves(workdir: Path) -> None:
    import json
    import signal
    import time

    import anyio

    from udfd.protocol.client import probe_info
    from udfd.testing import DaemonProcess

    (workdir / "d").mkdir()
    config = '[functions.f]\nhandler = "state_change"\n[functions.g]\nhandler = "threshold"\n'
    first = DaemonProcess(workdir / "d", config)
    try:
        first.wait_for("ready: 2 function(s) ready, 0 failed")
        state = workdir / "d" / "state"
        deadline = time.monotonic() + 10
        while not (state / "info.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        first.proc.send_signal(signal.SIGKILL)  # no cleanup at all
        first.proc.wait(10)
    finally:
        first.close()
    assert first.socket("f").exists()  # left behind, nobody listening
    second = DaemonProcess(workdir / "d", config)
    try:
        second.wait_for("ready: 2 function(s) ready, 0 failed")
        assert second.log.count("removed stale socket") == 2
        for name in ("f", "g"):
            anyio.run(probe_info, second.socket(name))
        status = json.loads((state / "status.json").read_text())
        assert status["pid"] == second.proc.pid and status["ready"] is True
        assert set(json.loads((state / "info.json").read_text())["functions"]) >= {"f", "g"}
        assert second.stop() == 0
    finally:
        second.close()
    assert not second.socket("f").exists()  # a clean stop removes its sockets


@pytest.mark.anyio
async def test_a_plugin_failing_at_each_stage_harms_only_its_own_function(workdir: Path) -> None:
    from daemon_harness import DaemonProcess as Daemon

    from udfd import make_point
    from udfd.protocol.client import UdfError, connect
    from udfd.testing import run_task

    config = """
[functions.at_import]
handler = "HANDLERS/fails_at_import.py:Handler"
[functions.at_init]
handler = "HANDLERS/faults.py:FailsAtInit"
[functions.at_point]
handler = "HANDLERS/faults.py:FailsAtPoint"
[functions.at_snapshot]
handler = "HANDLERS/faults.py:FailsAtSnapshot"
[functions.neighbour]
handler = "HANDLERS/handlers.py:Mirror"
"""
    (workdir / "d").mkdir()
    daemon = Daemon(workdir / "d", config)
    points = [make_point("m", i, {"v": float(i)}) for i in range(10)]
    try:
        daemon.wait_for("ready: 4 function(s) ready, 1 failed")
        imported = await run_task(daemon.socket("at_import"))
        at_init = await run_task(daemon.socket("at_init"))
        at_point = await run_task(daemon.socket("at_point"), points=points)
        async with connect(daemon.socket("at_snapshot")) as client:
            await client.info()
            assert (await client.init({})).success
            await client.send_points(points)
            with pytest.raises(UdfError, match="snapshot failed: OSError: state store unreachable"):
                await client.snapshot()
        neighbour = await run_task(daemon.socket("neighbour"), points=points)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert not imported.init.success and "this plugin needs a library" in imported.init.error
    assert not at_init.init.success and "RuntimeError: no database connection" in at_init.init.error
    assert any("ZeroDivisionError" in e for e in at_point.errors)
    assert [p.time for p in neighbour.points] == list(range(10))  # untouched by the others
    for reason in (
        "this plugin needs a library",
        "no database connection",
        "ZeroDivisionError",
        "state store unreachable",
    ):
        assert reason in daemon.log  # every failure is in udfd's own log too
