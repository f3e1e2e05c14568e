"""Test a handler without Kapacitor: serve it on a real socket and drive it with the client.

``serve_handler`` runs the real engine (the same Site and Connection the daemon
uses) in the current event loop on a fresh unix socket; ``udfd.protocol.client.connect``
then plays Kapacitor against it. Nothing is mocked: bytes cross a real socket.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import anyio

from udfd.engine.limits import Limits
from udfd.handler import ErrorPolicy, Handler, HandlerSpec, inspect_handler
from udfd.points import FieldValue, make_point
from udfd.protocol.client import connect
from udfd.protocol.proto import udf_pb2 as pb
from udfd.serve.site import Site


def short_socket_dir(prefix: str = "udfd-") -> Path:
    """A fresh directory with a path short enough for unix sockets (caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@asynccontextmanager
async def serve_handler(
    handler: type[Handler[Any]] | HandlerSpec,
    *,
    name: str = "",
    path: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
    error_policy: ErrorPolicy | str = ErrorPolicy.ERROR,
    limits: Limits | None = None,
    init_error: str | None = None,
    grace: float = 5.0,
) -> AsyncIterator[Site]:
    """Serve one handler on a unix socket for the duration of the block; yields the Site.

    Its ``path`` is where to connect; its ``stats`` are the function's counters.
    """
    spec = handler if isinstance(handler, HandlerSpec) else inspect_handler(handler)
    own_dir = None
    if path is None:
        own_dir = short_socket_dir()
        path = own_dir / f"{name or 'udf'}.sock"
    site = Site(
        name or spec.name,
        path,
        spec,
        defaults=defaults,
        error_policy=ErrorPolicy(error_policy),
        limits=limits,
        init_error=init_error,
    )
    site.bind()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: site.serve(grace=grace, task_status=task_status))
            try:
                yield site
            finally:
                site.stop_accepting()
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


class DaemonProcess:
    """One ``udfd serve`` subprocess, its config and sockets in ``workdir``.

    ``config`` is TOML after the ``socket_dir`` (``workdir/s``) and ``state_dir``
    (``workdir/state``) lines this writes first. ``UDFD_*`` variables of the
    calling environment are not passed on (they would change the config);
    ``env`` adds variables. ``wait_for(text)`` blocks until a log line contains
    ``text``: nothing here sleeps for a fixed time. The caller owns the process:
    :meth:`close` kills it if it still runs.
    """

    def __init__(
        self,
        workdir: Path,
        config: str,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        """``python``: the interpreter to run udfd with (default: this one);
        ``launcher``: a command that runs udfd's command line, such as
        ``systemd-socket-activate -l PATH`` (it must exec it, so the pid stays)."""
        self.dir = workdir
        self.sockets = workdir / "s"
        self.config = workdir / "udfd.toml"
        self.config.write_text(
            f'socket_dir = "{self.sockets}"\nstate_dir = "{workdir / "state"}"\n' + config
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("UDFD_")}
        full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc = subprocess.Popen(
            [
                *launcher,
                python or sys.executable,
                "-m",
                "udfd",
                "serve",
                "--config",
                str(self.config),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def socket(self, name: str) -> Path:
        return self.sockets / f"{name}.sock"

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The first log line containing ``text``; AssertionError on exit or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"daemon exited ({self.proc.returncode}): {self.log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line with {text!r}: {self.log}")
                self._cond.wait(left)

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the daemon and wait for its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for an exit already asked for (no signal)."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        """Kill if still running and release the pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


Message: TypeAlias = pb.Point | pb.BeginBatch | pb.EndBatch
#: a batch as Kapacitor sends it: BeginBatch, its points, EndBatch
Batch: TypeAlias = tuple[pb.BeginBatch, list[pb.Point], pb.EndBatch]


@dataclass
class TaskRun:
    """What one Kapacitor task saw on its connection, from Init to the UDF's close."""

    init: pb.InitResponse
    restore: pb.RestoreResponse | None = None
    snapshot: bytes = b""
    #: how many of ``output`` arrived before the Snapshot was answered (None: no Snapshot)
    before_snapshot: int | None = None
    output: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def points(self) -> list[pb.Point]:
        return [m for m in self.output if isinstance(m, pb.Point)]


async def run_task(
    path: str | os.PathLike[str],
    options: Mapping[str, Any] | Iterable[pb.Option] = (),
    *,
    points: Iterable[pb.Point] = (),
    batches: Iterable[Batch] = (),
    restore: bytes | None = None,
    snapshot: bool = False,
) -> TaskRun:
    """One task's life as Kapacitor runs it: Info, Init, optional Restore, the data,
    optional Snapshot, then the half-close and reading until the UDF closes.

    A failed Init ends the run there, as it ends the task in Kapacitor. A UDF that ends
    the task while it is still being fed (an ErrorResponse, then closing) ends the run
    too: the output and errors up to then are returned, as Kapacitor would have seen them.
    A protocol violation raises :class:`~udfd.protocol.client.UdfProtocolError`.
    """
    async with connect(path) as client:
        await client.info()
        run = TaskRun(init=await client.init(options))
        if not run.init.success:
            await client.finish()
            return run
        if restore is not None:
            run.restore = await client.restore(restore)
        try:
            await client.send_points(points)
            for begin, batch, end in batches:
                await client.send_batch(begin, batch, end)
            if snapshot:
                run.snapshot = await client.snapshot()
                run.before_snapshot = len(client.output)
            await client.finish()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await client.wait_closed()  # raises on a protocol violation
        run.output = list(client.output)
        run.errors = list(client.errors)
    return run


def make_batch(
    name: str,
    rows: Iterable[tuple[int, Mapping[str, FieldValue]]],
    *,
    tags: Mapping[str, str] | None = None,
    group: str = "",
    tmax: int | None = None,
) -> Batch:
    """A batch shaped as Kapacitor's query node sends it: points carry only time, group,
    tags and fields; Begin has the exact size; End carries tmax (default: the last time)."""
    tags = dict(tags or {})
    batch_points = [make_point("", t, fields, tags, group=group) for t, fields in rows]
    begin = pb.BeginBatch(name=name, group=group, tags=tags, size=len(batch_points))
    if tmax is None:
        tmax = max((p.time for p in batch_points), default=0)
    return begin, batch_points, pb.EndBatch(name=name, group=group, tags=tags, tmax=tmax)


def check_batch_framing(output: list[Message], requests: list[Batch]) -> list[list[pb.Point]]:
    """Check that output is one framed batch per request, as Kapacitor requires: BeginBatch
    with the exact size and the request's name, group and tags, the points, then EndBatch
    echoing name, group, tags and tmax; nothing after. Returns each batch's points.

    Raises AssertionError (explicitly, so it holds under ``python -O`` too).
    """

    def expect(ok: bool, what: str) -> None:
        if not ok:
            raise AssertionError(what)

    result: list[list[pb.Point]] = []
    i = 0
    for begin, _, end in requests:
        head = output[i] if i < len(output) else None
        expect(isinstance(head, pb.BeginBatch), f"expected BeginBatch at {i}, got {head}")
        assert isinstance(head, pb.BeginBatch)
        expect(
            (head.name, head.group, dict(head.tags)) == (begin.name, begin.group, dict(begin.tags)),
            f"BeginBatch at {i} does not echo the request: {head}",
        )
        i += 1
        batch_points: list[pb.Point] = []
        while i < len(output) and isinstance(output[i], pb.Point):
            batch_points.append(output[i])  # type: ignore[arg-type]
            i += 1
        expect(
            head.size == len(batch_points),
            f"BeginBatch size {head.size} for {len(batch_points)} points",
        )
        tail = output[i] if i < len(output) else None
        expect(isinstance(tail, pb.EndBatch), f"expected EndBatch at {i}, got {tail}")
        assert isinstance(tail, pb.EndBatch)
        expect(
            (tail.name, tail.group, dict(tail.tags), tail.tmax)
            == (end.name, end.group, dict(end.tags), end.tmax),
            f"EndBatch at {i} does not echo the request: {tail}",
        )
        i += 1
        result.append(batch_points)
    expect(i == len(output), f"{len(output) - i} message(s) after the last batch")
    return result
