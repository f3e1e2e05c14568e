"""udfd under systemd, without systemd as PID 1: the real tools and the real datagrams.

Units are checked by ``systemd-analyze verify``; socket activation is done by
``systemd-socket-activate``, which binds named sockets and execs udfd with them,
as systemd does; sd_notify datagrams arrive on a socket of the test's own.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from udfd.config.units import PACKAGED_UDFD, TEMPLATE_SOCKET, shipped_units
from udfd.protocol.client import connect
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import DaemonProcess

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "systemd"
UDFD = Path(sys.executable).parent / "udfd"  # the console script of this environment


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short: socket paths are limited to 107 bytes
    path = Path(tempfile.mkdtemp(prefix="usd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def verify(*units: Path) -> str:
    """``systemd-analyze verify``'s complaints (empty: none); unknown keys only warn there."""
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
    )
    text = (done.stdout + done.stderr).strip()
    return text or ("" if done.returncode == 0 else f"exit {done.returncode}")


# ---------------------------------------------------------------- units


def test_shipped_units_are_what_the_generator_writes() -> None:
    on_disk = {p.name: p.read_text() for p in SHIPPED.iterdir()}
    assert on_disk == shipped_units()


def test_shipped_units_pass_systemd_analyze(workdir: Path) -> None:
    # verify needs ExecStart to exist: only that path is swapped for this environment's udfd
    service = (SHIPPED / "udfd.service").read_text()
    assert f"ExecStart={PACKAGED_UDFD} " in service
    (workdir / "udfd.service").write_text(service.replace(str(PACKAGED_UDFD), str(UDFD)))
    instance = workdir / TEMPLATE_SOCKET.replace("@", "@adsl_state")
    shutil.copy(SHIPPED / TEMPLATE_SOCKET, instance)
    assert verify(workdir / "udfd.service", instance) == ""


def test_verify_does_catch_a_broken_unit(workdir: Path) -> None:
    # the check above could not fail if verify accepted anything
    service = (SHIPPED / "udfd.service").read_text().replace(str(PACKAGED_UDFD), str(UDFD))
    (workdir / "udfd.service").write_text(service.replace("WatchdogSec=", "WatchdogSecs="))
    assert "Unknown key 'WatchdogSecs'" in verify(workdir / "udfd.service")


def test_systemd_units_for_a_config(workdir: Path) -> None:
    config = workdir / "udfd.toml"
    config.write_text(
        f'socket_dir = "{workdir / "s"}"\n'
        'socket_group = "root"\n'
        "[functions.changes]\n"
        'handler = "state_change"\n'
        "[functions.smooth]\n"
        'handler = "moving_average"\n'
        'socket_mode = "0600"\n'
    )
    out = workdir / "units"
    done = subprocess.run(
        [str(UDFD), "systemd-units", "--config", str(config), "--output", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "udfd-changes.socket",
        "udfd-smooth.socket",
        "udfd.service",
    ]
    service = (out / "udfd.service").read_text()
    assert f"ExecStart={UDFD} serve --config {config}\n" in service
    assert "Sockets=udfd-changes.socket udfd-smooth.socket\n" in service
    assert "Type=notify\n" in service and "RestartPreventExitStatus=3 4\n" in service
    # the socket dir is outside RuntimeDirectory=, so ProtectSystem=strict must allow it
    assert f"ReadWritePaths={workdir / 's'}\n" in service
    changes = (out / "udfd-changes.socket").read_text()
    assert f"ListenStream={workdir / 's' / 'changes.sock'}\n" in changes
    assert "FileDescriptorName=changes\n" in changes and "SocketGroup=root\n" in changes
    assert "SocketMode=0600\n" in (out / "udfd-smooth.socket").read_text()
    assert verify(*sorted(out.iterdir())) == ""


def test_unset_directories_are_the_services_own(workdir: Path) -> None:
    config = workdir / "udfd.toml"
    config.write_text('[functions.changes]\nhandler = "state_change"\n')
    out = workdir / "units"
    subprocess.run(
        [str(UDFD), "systemd-units", "-c", str(config), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    assert "ListenStream=/run/udfd/changes.sock\n" in (out / "udfd-changes.socket").read_text()
    assert "ReadWritePaths" not in (out / "udfd.service").read_text()


# ---------------------------------------------------------------- socket activation


async def _wants(path: Path) -> int:
    with anyio.fail_after(30):
        async with connect(path) as client:
            info = await client.info()
    return int(info.wants)


def test_socket_activation_with_named_and_unnamed_sockets(workdir: Path) -> None:
    sockets = workdir / "s"
    sockets.mkdir()
    a, b, c, stray = (sockets / f"{n}.sock" for n in ("a", "b", "c", "stray"))
    # a by its name; b unnamed (matched by its path); stray matches no function
    launcher = [
        "systemd-socket-activate",
        *("-l", str(a)),
        *("-l", str(b)),
        *("-l", str(stray)),
        "--fdname=a:unknown:stray",
    ]
    config = "".join(
        f'[functions.{n}]\nhandler = "{h}"\n'
        for n, h in (("a", "state_change"), ("b", "moving_average"), ("c", "threshold"))
    )
    daemon = DaemonProcess(workdir, config, launcher=launcher)
    try:
        deadline = time.monotonic() + 30
        while not a.exists():  # systemd-socket-activate has bound them
            assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.log
            time.sleep(0.02)
        # the first connect makes it exec udfd, which takes the sockets over
        assert anyio.run(_wants, a) == pb.STREAM
        daemon.wait_for("ready: 3 function(s) ready, 0 failed")
        for path in (b, c):
            assert anyio.run(_wants, path) == pb.STREAM
        assert "a: using the socket systemd passed" in daemon.log
        assert f"b: using the socket systemd passed ({b})" in daemon.log
        assert "c: using the socket" not in daemon.log  # c was bound by udfd itself
        assert "'stray'" in daemon.wait_for("matches no configured function")
        assert daemon.stop() == 0
        # systemd's socket files are systemd's to remove; udfd's own is gone
        assert a.exists() and b.exists() and not c.exists()
    finally:
        daemon.close()


# ---------------------------------------------------------------- sd_notify


@pytest.fixture
def receiver(workdir: Path) -> Iterator[socket.socket]:
    """The test's own NOTIFY_SOCKET: a datagram socket, as systemd's is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(workdir / "notify"))
    sock.settimeout(30)
    yield sock
    sock.close()


def test_notify_ready_status_watchdog_and_stopping(workdir: Path, receiver: socket.socket) -> None:
    address = receiver.getsockname()
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
    daemon = DaemonProcess(workdir, '[functions.a]\nhandler = "state_change"\n', env=env)
    messages: list[str] = []

    def until(text: str) -> None:
        while not any(text in m for m in messages):
            messages.append(receiver.recv(4096).decode())

    try:
        until("READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=1 function(s) ready, 0 failed" in ready
        before = sum("WATCHDOG=1" in m for m in messages)
        while sum("WATCHDOG=1" in m for m in messages) < before + 3:
            messages.append(receiver.recv(4096).decode())
        daemon.proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert daemon.wait() == 0
    finally:
        daemon.close()


def test_watchdog_is_only_for_the_process_systemd_watches(
    workdir: Path, receiver: socket.socket
) -> None:
    # WATCHDOG_PID names another process: udfd must not ping on its behalf
    address = receiver.getsockname()
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    daemon = DaemonProcess(workdir, '[functions.a]\nhandler = "state_change"\n', env=env)
    try:
        messages = [receiver.recv(4096).decode()]
        while not any("READY=1" in m for m in messages):
            messages.append(receiver.recv(4096).decode())
        receiver.settimeout(0.5)  # five watchdog periods
        try:
            while True:
                messages.append(receiver.recv(4096).decode())
        except TimeoutError:
            pass
        assert not any("WATCHDOG=1" in m for m in messages), messages
        assert daemon.stop() == 0
    finally:
        daemon.close()
