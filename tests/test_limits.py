"""Limits and the socket files, against a real daemon and real sockets: max_connections per
function (refused with a reason, counted, and the neighbour unharmed), the listen backlog
under a burst, the socket directory's owner without following symlinks, and binding that
never publishes a socket before it listens."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from udfd.errors import StartupError
from udfd.protocol import wire
from udfd.protocol.client import connect
from udfd.protocol.framing import FrameDecoder
from udfd.serve import sockets
from udfd.serve.sockets import bind_unix, clear_stale_socket
from udfd.testing import DaemonProcess, run_task

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(port: int, name: str, function: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("function") == function:
                return float(sample.value)
    raise AssertionError(f"{name} not found")


def read_error(path: Path) -> str:
    """Connect and read what udfd says before it closes (an ErrorResponse)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(os.fspath(path))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    decoder = FrameDecoder()
    (frame,) = decoder.feed(data)
    return wire.decode_response(frame).error.error


async def test_max_connections_refuses_with_a_reason_and_spares_the_neighbour(
    workdir: Path,
) -> None:
    port = free_port()
    config = (
        f'health = "127.0.0.1:{port}"\n'
        '[functions.small]\nhandler = "state_change"\nmax_connections = 3\n'
        '[functions.neighbour]\nhandler = "state_change"\n'
    )
    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", config)
    try:
        daemon.wait_for("ready: 2 function(s) ready, 0 failed")
        async with (
            connect(daemon.socket("small")) as a,
            connect(daemon.socket("small")) as b,
            connect(daemon.socket("small")) as c,
        ):
            for client in (a, b, c):
                await client.info()
            refused = await anyio.to_thread.run_sync(read_error, daemon.socket("small"))
            neighbour = await run_task(daemon.socket("neighbour"), {"field": "value"})
        assert "small already has 3 open connections (max_connections = 3)" in refused
        assert neighbour.init.success  # another function is not affected
        assert "connection refused" in daemon.wait_for("max_connections = 3")
        assert metric(port, "udfd_connections_refused_total", "small") == 1
        # the three closed: there is room again
        deadline = time.monotonic() + 10
        while True:
            try:
                again = await run_task(daemon.socket("small"), {"field": "value"})
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.1)
        assert again.init.success
    finally:
        daemon.close()


def test_a_burst_of_connects_fits_the_listen_backlog(workdir: Path) -> None:
    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", '[functions.burst]\nhandler = "state_change"\n')
    clients: list[socket.socket] = []
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
        daemon.proc.send_signal(19)  # SIGSTOP: nobody accepts, so only the backlog holds them
        try:
            refused = 0
            for _ in range(500):
                s = socket.socket(socket.AF_UNIX)
                s.setblocking(False)
                try:
                    s.connect(os.fspath(daemon.socket("burst")))
                except BlockingIOError:
                    refused += 1
                except OSError as exc:
                    refused += exc.errno == errno.EAGAIN
                clients.append(s)
        finally:
            daemon.proc.send_signal(18)  # SIGCONT
        print(f"\n500 connects while nobody accepted: {refused} got EAGAIN (backlog 1024)")
        assert refused == 0  # with the old backlog of 128, 372 of them would have
    finally:
        for s in clients:
            s.close()
        daemon.close()


def test_the_socket_directory_check_does_not_follow_a_strangers_symlink(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir()
    link = tmp_path / "udfd-link"
    link.symlink_to(ours)
    os.lchown(link, 4321, 4321)  # someone else's link to our directory: they can re-point it
    with pytest.raises(StartupError, match="the symlink belongs to uid 4321"):
        bind_unix(link / "f.sock")
    os.lchown(link, 0, 0)
    sock = bind_unix(link / "f.sock")  # our own link to our own directory is fine
    sock.close()
    stranger = tmp_path / "theirs"
    stranger.mkdir()
    os.chown(stranger, 4321, 4321)
    with pytest.raises(StartupError, match="the directory belongs to uid 4321"):
        bind_unix(stranger / "f.sock")


def test_directories_udfd_creates_are_checked_as_it_creates_them(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "f.sock"
    sock = bind_unix(path, mode=0o660)
    try:
        for part in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
            st = os.lstat(part)
            assert st.st_uid == os.getuid() and (st.st_mode & 0o777) == 0o755
        assert (os.lstat(path).st_mode & 0o777) == 0o660
    finally:
        sock.close()


def test_two_binders_racing_for_one_path_leave_one_listening_socket(tmp_path: Path) -> None:
    """The socket is published under its name only once it listens (link, not rename):
    whichever binder wins, the name always answers, and the loser is told so."""
    for round_ in range(20):
        path = tmp_path / f"race{round_}.sock"
        results: list[object] = []
        barrier = threading.Barrier(2)

        def bind(
            results: list[object] = results,
            path: Path = path,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            try:
                results.append(bind_unix(path))
            except StartupError as exc:
                results.append(exc)

        threads = [threading.Thread(target=bind) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [r for r in results if isinstance(r, socket.socket)]
        assert len(won) == 1, results
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(os.fspath(path))  # the name answers: it is the winner's
        for r in won:
            r.close()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_stale_socket_that_cannot_be_removed_is_a_startup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root may unlink anything, so the failure is injected: os.unlink raises as it would in
    # a directory udfd may not write (a fake, for the error path only)
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(path))
    stale.close()  # bound, never listened, closed: a stale socket file

    def refuse(target: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr(sockets.os, "unlink", refuse)
    with pytest.raises(StartupError, match="stale socket, but cannot remove it"):
        clear_stale_socket(path)


async def test_a_connection_without_init_is_closed_after_init_timeout(workdir: Path) -> None:
    port = free_port()
    config = (
        f'health = "127.0.0.1:{port}"\ninit_timeout = "1s"\n'
        '[functions.f]\nhandler = "state_change"\n'
    )
    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", config)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
        started = time.monotonic()
        said = await anyio.to_thread.run_sync(read_error, daemon.socket("f"))  # sends nothing
        waited = time.monotonic() - started
        assert "no Init within init_timeout (1s)" in said
        async with connect(daemon.socket("f")) as task:  # a real task is not affected
            await task.info()
            assert (await task.init({"field": "value"})).success
            await anyio.sleep(1.5)
            await task.keepalive()
            await task.finish()
        daemon.wait_for("no Init within init_timeout")
        deadline = time.monotonic() + 10
        while metric(port, "udfd_connections_idle_closed_total", "f") < 1:
            assert time.monotonic() < deadline
            await anyio.sleep(0.1)
    finally:
        daemon.close()
    print(f"\nidle connection closed after {waited:.2f}s (init_timeout 1s)")


def test_world_writable_sockets_are_warned_about_at_start(workdir: Path) -> None:
    (workdir / "d").mkdir()
    config = 'socket_mode = "0666"\n[functions.open]\nhandler = "state_change"\n'
    daemon = DaemonProcess(workdir / "d", config)
    try:
        line = daemon.wait_for("world-writable")
        assert "open" in line and 'socket_mode = "0660"' in line
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
    finally:
        daemon.close()
    quiet = DaemonProcess(workdir / "d", '[functions.closed]\nhandler = "state_change"\n')
    try:
        quiet.wait_for("ready: 1 function(s) ready, 0 failed")
    finally:
        quiet.close()
    assert "world-writable" not in quiet.log


async def test_max_groups_bounds_a_handlers_state_and_counts_the_rest() -> None:
    from udfd import GroupState, Handler, Output, Point, make_point
    from udfd.engine.limits import Limits
    from udfd.testing import serve_handler

    class PerGroup(Handler):
        def init(self) -> None:
            self.seen: GroupState[int] = GroupState(int)

        def point(self, point: Point) -> Output:
            self.seen[point.group] += 1
            return point

    sent = [make_point("m", i, {"v": 1.0}, group=f"g{i % 5}") for i in range(50)]
    async with serve_handler(PerGroup, limits=Limits(max_groups=3)) as site:
        run = await run_task(site.path, points=sent)
    assert {p.group for p in run.points} == {"g0", "g1", "g2"}
    assert len(run.points) == 30 and site.stats.dropped == 20


async def test_a_batch_over_max_batch_points_is_dropped_whole() -> None:
    from udfd import BatchHandler
    from udfd.engine.limits import Limits
    from udfd.testing import check_batch_framing, make_batch, serve_handler

    class Echo(BatchHandler):
        pass

    big = make_batch("m", [(i, {"v": float(i)}) for i in range(15)], group="big")
    small = make_batch("m", [(i, {"v": float(i)}) for i in range(5)], group="small")
    async with serve_handler(Echo, limits=Limits(max_batch_points=10)) as site:
        run = await run_task(site.path, batches=[big, small])
    (kept,) = check_batch_framing(run.output, [small])
    assert len(kept) == 5 and run.errors == []
    assert site.stats.dropped == 15  # every point of the big batch, none silently


def test_auto_socket_mode_is_0660_with_kapacitors_group_when_udfd_may_use_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grp
    import os
    import stat

    from udfd.config import load_config, resolve_functions
    from udfd.serve import sockets

    toml = workdir / "auto.toml"
    toml.write_text('socket_mode = "auto"\n[functions.f]\nhandler = "state_change"\n')
    config = load_config(toml, env={})
    # no group "kapacitor" on this machine (checked, so the test can fail if one appears)
    assert all(sockets.usable_group((g,)) is None for g in sockets.KAPACITOR_GROUPS)
    (fn,) = resolve_functions(config)
    assert (fn.socket_mode, fn.socket_group) == (0o666, None)
    # a group udfd may use stands in for Kapacitor's: this process's own group
    own = grp.getgrgid(os.getegid()).gr_name
    monkeypatch.setattr(sockets, "KAPACITOR_GROUPS", ("no-such-group-here", own))
    (fn,) = resolve_functions(config)
    assert (fn.socket_mode, fn.socket_group) == (0o660, own)
    # an explicit group wins over the search
    explicit = load_config(toml, env={"UDFD_SOCKET_GROUP": own})
    assert resolve_functions(explicit)[0].socket_group == own
    monkeypatch.undo()

    (workdir / "d").mkdir()
    daemon = DaemonProcess(
        workdir / "d", 'socket_mode = "auto"\n[functions.open]\nhandler = "state_change"\n'
    )
    try:
        line = daemon.wait_for("world-writable")
        assert 'from "auto": no group "kapacitor" exists that udfd may use' in line
        daemon.wait_for("ready:")
        assert stat.S_IMODE(os.stat(daemon.socket("open")).st_mode) == 0o666
    finally:
        daemon.close()
