"""The real daemon as a subprocess, driven over its sockets by udfd's Kapacitor-side client."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from daemon_harness import DaemonProcess

import udfd
from udfd.protocol import wire
from udfd.protocol.client import connect, probe_info
from udfd.protocol.proto import udf_pb2 as pb

pytestmark = pytest.mark.anyio

Factory = Callable[..., DaemonProcess]


MIRROR_AND_SCALE = """
    [functions.mirror]
    handler = "HANDLERS/handlers.py:Mirror"
    [functions.scale]
    handler = "HANDLERS/handlers.py:Scale"
    [functions.scale.options]
    factor = 10.0
    [functions.avg]
    handler = "moving_average"
"""


def pts(n: int, group: str = "") -> list[udfd.Point]:
    return [
        udfd.make_point("cpu", i, {"value": float(i)}, {"host": "h"}, group=group) for i in range(n)
    ]


async def test_serves_several_functions_concurrently(daemon: Factory) -> None:
    d = daemon(MIRROR_AND_SCALE)
    d.wait_for("ready: 3 function(s) ready, 0 failed")
    results: dict[str, list[udfd.Point]] = {}

    async def drive(name: str, options: dict[str, object], n: int) -> None:
        async with connect(d.socket(name)) as client:
            await client.info()
            response = await client.init(options)
            assert response.success, response.error
            await client.send_points(pts(n))
            results[name] = [p for p in await client.finish() if isinstance(p, pb.Point)]

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(drive, "mirror", {}, 3000 + i)
        tg.start_soon(drive, "scale", {}, 1000)
        tg.start_soon(drive, "avg", {"field": "value", "size": 4}, 1000)
    assert [p.fieldsDouble["value"] for p in results["scale"][:3]] == [0.0, 10.0, 20.0]
    assert len(results["avg"]) == 1000
    assert d.stop() == 0


async def test_stale_socket_is_removed_and_replaced(daemon: Factory, workdir: Path) -> None:
    stale = workdir / "s" / "mirror.sock"
    stale.parent.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(stale))
    sock.close()  # the file stays, nobody listens: what a crash leaves behind
    d = daemon('[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n')
    d.wait_for("ready:")
    assert "removed stale socket" in d.log
    assert (await probe_info(stale)).provides == pb.STREAM
    assert d.stop() == 0


def test_live_socket_is_refused_and_left_alone(daemon: Factory, workdir: Path) -> None:
    live = workdir / "s" / "mirror.sock"
    live.parent.mkdir()
    owner = socket.socket(socket.AF_UNIX)
    owner.bind(str(live))
    owner.listen()
    try:
        d = daemon(
            '[functions.other]\nhandler = "HANDLERS/handlers.py:Mirror"\n'
            '[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n'
        )
        assert d.proc.wait(30) == 4
        assert f"udfd: cannot start: {live}: another process is accepting" in d.log
        assert live.exists()  # not ours: untouched
        assert not (workdir / "s" / "other.sock").exists()  # bound first, released on failure
    finally:
        owner.close()


def test_regular_file_is_refused_never_deleted(daemon: Factory, workdir: Path) -> None:
    path = workdir / "s" / "mirror.sock"
    path.parent.mkdir()
    path.write_text("precious")
    d = daemon('[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n')
    assert d.proc.wait(30) == 4
    assert "exists and is not a socket; refusing to replace it" in d.log
    assert path.read_text() == "precious"


async def test_broken_plugins_fail_alone(daemon: Factory) -> None:
    d = daemon(
        """
        [functions.good]
        handler = "HANDLERS/handlers.py:Mirror"
        [functions.broken]
        handler = "HANDLERS/broken.py:Anything"
        [functions.contract]
        handler = "HANDLERS/handlers.py:NotAHandler"
        [functions.missing]
        handler = "no_such_entry_point"
        """
    )
    d.wait_for("ready: 1 function(s) ready, 3 failed")
    reasons = {}
    for name in ("broken", "contract", "missing"):
        async with connect(d.socket(name)) as client:
            info = await client.info()  # Kapacitor can still start
            assert info.provides == pb.STREAM
            response = await client.init()
            assert not response.success
            reasons[name] = response.error
    assert "udfd_missing_dependency" in reasons["broken"]
    assert reasons["broken"].startswith("broken: ")
    assert "NotAHandler" in reasons["contract"]
    assert "no_such_entry_point" in reasons["missing"]
    async with connect(d.socket("good")) as client:
        await client.info()
        assert (await client.init()).success
        await client.send_points(pts(10))
        assert len(await client.finish()) == 10
    # every socket answers Info, yet `check` reports what failed to load, and why
    check = _cli("check", "--config", str(d.config))
    assert check.returncode == 1
    lines = dict(line.split(": ", 1) for line in check.stdout.splitlines())
    assert lines["ok   good"].endswith("(stream->stream)")
    assert lines["FAIL broken"].startswith("handler failed to load: broken: ")
    assert "udfd_missing_dependency" in lines["FAIL broken"]
    assert set(lines) == {"ok   good", "FAIL broken", "FAIL contract", "FAIL missing"}
    status = d.dir / "state" / "status.json"
    assert json.loads(status.read_text())["ready"] is True
    assert d.stop() == 0
    assert not status.exists()  # a stopped daemon leaves no status behind


def _fake_distribution(root: Path, name: str, module: str, entry: str) -> None:
    """A metadata-only installed distribution: what pip leaves in site-packages."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[udfd.handlers]\n{entry} = {module}:Double\n")
    (root / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import udfd

            class Double(udfd.Handler[udfd.NoOptions]):
                def point(self, point):
                    return udfd.derive(point, {"value": udfd.get_number(point, "value") * 2})
            """
        )
    )


async def test_allow_list_limits_which_distributions_provide_handlers(
    daemon: Factory, workdir: Path
) -> None:
    site = workdir / "site"
    _fake_distribution(site, "acme-udf", "acme_udf", "acme_double")
    _fake_distribution(site, "trusted-udf", "trusted_udf", "trusted_double")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    d = daemon(
        """
        allow_distributions = ["trusted-udf"]
        [functions.acme]
        handler = "acme_double"
        [functions.trusted]
        handler = "trusted_double"
        """,
        env,
    )
    d.wait_for("ready: 1 function(s) ready, 1 failed")
    async with connect(d.socket("acme")) as client:
        response = await client.init()
    assert not response.success
    assert "acme-udf" in response.error
    assert "allow_distributions" in response.error
    async with connect(d.socket("trusted")) as client:
        assert (await client.init()).success
        await client.send_points(pts(3))
        assert [p.fieldsDouble["value"] for p in await client.finish()] == [0.0, 2.0, 4.0]
    assert d.stop() == 0


def test_config_errors_name_the_key_and_exit_3(daemon: Factory) -> None:
    d = daemon(
        """
        [functions.mirror]
        hander = "HANDLERS/handlers.py:Mirror"
        socket_mode = "0999"
        """
    )
    assert d.proc.wait(30) == 3
    assert "functions.mirror.hander" in d.log
    assert "functions.mirror.socket_mode" in d.log


async def test_sigterm_drains_open_connections_then_removes_sockets(daemon: Factory) -> None:
    d = daemon(MIRROR_AND_SCALE)
    d.wait_for("ready:")
    async with connect(d.socket("mirror")) as client:
        await client.info()
        assert (await client.init()).success
        await client.send_points(pts(100))
        await client.wait_output(100)
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for("stopping: no new connections")
        # a new connection is refused while this one may finish its work
        with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
            await anyio.connect_unix(d.socket("scale"))
        await client.send_points(pts(50))
        out = await client.finish()
    assert len(out) == 150
    assert client.errors == []
    assert d.wait() == 0
    assert list(d.sockets.iterdir()) == []


async def test_second_sigint_exits_without_waiting_for_the_grace(daemon: Factory) -> None:
    d = daemon(
        'shutdown_grace = "10m"\n[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n'
    )
    d.wait_for("ready:")
    async with connect(d.socket("mirror")) as client:
        await client.info()
        assert (await client.init()).success
        d.proc.send_signal(signal.SIGINT)
        d.wait_for("stopping:")
        d.proc.send_signal(signal.SIGINT)
        # the connection is idle and would hold the daemon for 10 minutes
        assert d.wait() == 130
        await client.wait_closed()
    assert list(d.sockets.iterdir()) == []
    assert not (d.dir / "state" / "status.json").exists()


async def test_no_descriptor_leaks_over_many_connections(daemon: Factory) -> None:
    d = daemon(MIRROR_AND_SCALE)
    d.wait_for("ready:")
    async with connect(d.socket("mirror")) as warm:  # lazily created resources first
        await warm.info()
        await warm.init()
        await warm.send_points(pts(5))
        await warm.finish()
    baseline = d.open_fds()
    for i in range(150):
        kind = i % 3
        if kind == 0:
            await probe_info(d.socket("mirror"))
        elif kind == 1:
            async with connect(d.socket("scale")) as client:
                await client.init()
                await client.send_points(pts(20))
                await client.finish()
        else:  # abrupt close mid-stream, as a crashing peer does
            stream = await anyio.connect_unix(d.socket("mirror"))
            await stream.send(wire.point_frame(pts(1)[0])[:5])
            await stream.aclose()
    # every connection has ended on the daemon's side once a fresh one is served;
    # the fewest of a few samples, as a status-file write holds a temp fd for a moment
    await probe_info(d.socket("mirror"))
    samples = []
    for _ in range(3):
        samples.append(d.open_fds())
        await anyio.sleep(0.05)
    assert min(samples) == baseline
    assert d.stop() == 0


async def test_slow_imports_delay_nothing_kapacitor_waits_for(
    daemon: Factory, workdir: Path
) -> None:
    gate = workdir / "gate"
    slow = workdir / "slow.py"
    slow.write_text(
        textwrap.dedent(
            f"""
            import pathlib, time
            import udfd
            # a heavy import (a model, a big library): blocks until the test opens the gate
            while not pathlib.Path({str(gate)!r}).exists():
                time.sleep(0.01)

            class Options(udfd.Options):
                level: int = 1

            class Slow(udfd.Handler[Options]):
                pass
            """
        )
    )
    config = (
        f'[functions.slow]\nhandler = "{slow}:Slow"\n'
        '[functions.fast]\nhandler = "HANDLERS/handlers.py:Mirror"\n'
    )
    first = daemon(config)
    first.wait_for("fast: serving")
    # the gate is shut: everything below happens while `slow` is still importing
    async with connect(first.socket("fast")) as client:
        await client.info()
        assert (await client.init()).success
        await client.send_points(pts(5))
        assert len(await client.finish()) == 5
    async with connect(first.socket("slow")) as client:
        await client.keepalive()  # answered by the reader, handler or not
    assert "ready:" not in first.log
    gate.touch()
    first.wait_for("ready: 2 function(s) ready")
    info = await probe_info(first.socket("slow"))
    assert list(info.options) == ["level"]
    assert first.stop() == 0

    # a restart: the Info last served answers at once, before the import finishes
    gate.unlink()
    second = daemon(config)
    second.wait_for("listening on 2 socket(s)")
    early = await probe_info(second.socket("slow"))
    assert early == info
    assert "slow: serving" not in second.log
    check = await anyio.to_thread.run_sync(_cli, "check", "--config", str(second.config))
    assert check.returncode == 1
    assert "FAIL slow: " in check.stdout
    assert "handler still loading" in check.stdout
    gate.touch()
    second.wait_for("ready: 2 function(s) ready")
    assert second.stop() == 0


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "udfd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_and_kapacitor_conf_follow_the_config(daemon: Factory) -> None:
    d = daemon(MIRROR_AND_SCALE)
    conf = _cli("kapacitor-conf", "--config", str(d.config))
    assert conf.returncode == 0, conf.stderr
    for name in ("mirror", "scale", "avg"):
        assert f'[udf.functions.{name}]\n  socket = "{d.socket(name)}"' in conf.stdout
    d.wait_for("ready:")
    ok = _cli("check", "--config", str(d.config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("ok ") == 3
    assert d.stop() == 0
    down = _cli("check", "--config", str(d.config), "--timeout", "2")
    assert down.returncode == 1
    assert down.stdout.count("FAIL") == 3


def test_check_with_nothing_to_check_fails(workdir: Path) -> None:
    result = _cli(
        "check",
        env={
            "UDFD_DISABLE_PLUGIN_AUTOLOAD": "1",
            "UDFD_SOCKET_DIR": str(workdir / "s"),
            "UDFD_STATE_DIR": str(workdir / "state"),
        },
    )
    assert result.returncode == 1
    assert "nothing to check" in result.stdout


def test_list_shows_installed_handlers_with_options() -> None:
    result = _cli("list")
    assert result.returncode == 0, result.stderr
    assert "moving_average  (udfd-handlers" in result.stdout
    assert ".size(int)" in result.stdout


def test_usage_errors_exit_2() -> None:
    assert _cli("serve", "--bogus").returncode == 2
    assert _cli().returncode == 2


async def test_shutdown_does_not_wait_forever_for_a_stuck_handler(daemon: Factory) -> None:
    d = daemon(
        'shutdown_grace = "1s"\n'
        '[functions.stuck]\nhandler = "HANDLERS/handlers.py:Stuck"\n'
        '[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n'
    )
    d.wait_for("ready:")
    async with connect(d.socket("stuck")) as client:
        await client.info()
        assert (await client.init()).success
        await client.send_points(pts(1))  # the worker thread never comes back
        await client.keepalive()  # yet the connection still answers
        d.proc.send_signal(signal.SIGTERM)
        # past the grace, Kapacitor is told why its task ends
        assert await client.wait_error() == "udfd is shutting down"
    assert d.wait() == 0
    # close() is never called on a handler still running in its thread
    assert "handler still busy in a worker thread: close() not called" in d.log
    assert "abandoning 1 busy handler thread" in d.log
    assert list(d.sockets.iterdir()) == []
    assert not (d.dir / "state" / "status.json").exists()


def test_socket_mode_and_group_are_applied(daemon: Factory) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    d = daemon(
        f'socket_group = "{group}"\n'
        '[functions.private]\nhandler = "HANDLERS/handlers.py:Mirror"\nsocket_mode = "0600"\n'
        '[functions.shared]\nhandler = "HANDLERS/handlers.py:Mirror"\nsocket_mode = "0660"\n'
    )
    d.wait_for("ready:")
    private, shared = os.stat(d.socket("private")), os.stat(d.socket("shared"))
    assert stat.S_IMODE(private.st_mode) == 0o600
    assert stat.S_IMODE(shared.st_mode) == 0o660
    assert private.st_gid == shared.st_gid == os.getgid()
    assert d.stop() == 0
