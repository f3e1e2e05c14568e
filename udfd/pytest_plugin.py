"""udfd's pytest plugin: test a handler without Kapacitor, in one line per task.

Installed with udfd (entry point ``pytest11``), so any project that has udfd
installed gets the ``udf`` fixture:

.. code-block:: python

    def test_average(udf):
        run = udf.run(MovingAverage, {"field": "v", "size": 2}, lp="cpu v=1 1\\ncpu v=3 2")
        assert udf.lines(run) == ["cpu avg=1.0 1", "cpu avg=2.0 2"]

    def test_conforms(udf):
        udf.conformance(MovingAverage, {"field": "v", "size": 2}, lp=SAMPLE)

Every run serves the handler through udfd's real engine on a fresh unix socket
and plays Kapacitor against it over that socket (``udfd.testing``); nothing is
mocked. ``udf.daemon(config)`` starts a real ``udfd serve`` in the test's
temporary directory, and ``udf.run(socket=...)`` drives one of its functions.

``udf.run`` and ``udf.conformance`` run their own event loop, for plain test
functions; an async test awaits ``udf.arun`` and ``udf.aconformance`` instead.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import pytest

from udfd.conformance import ConformanceReport, assert_conformant, check_conformance
from udfd.handler import HandlerSpec
from udfd.protocol.proto import udf_pb2 as pb
from udfd.run.feed import Batch, batches_by_size, batches_by_window, points_from_lines
from udfd.run.output import format_line
from udfd.testing import DaemonProcess, TaskRun, run_task, serve_handler

__all__ = ["UdfHarness"]


def _lines(lp: str | Iterable[str]) -> list[str]:
    return lp.splitlines() if isinstance(lp, str) else list(lp)


P = ParamSpec("P")
R = TypeVar("R")


def _blocking(
    method: Callable[Concatenate[UdfHarness, P], Awaitable[R]],
) -> Callable[Concatenate[UdfHarness, P], R]:
    """The coroutine method as a plain one that runs its own event loop (plain tests)."""

    def blocking(self: UdfHarness, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return anyio.run(functools.partial(method, self, *args, **kwargs))

    name = method.__name__.removeprefix("a")
    blocking.__name__ = name
    blocking.__qualname__ = f"{method.__qualname__.rsplit('.', 1)[0]}.{name}"
    blocking.__doc__ = method.__doc__
    blocking.__wrapped__ = method  # type: ignore[attr-defined]  # inspect.signature shows it
    return blocking


class UdfHarness:
    """The ``udf`` fixture: runs tasks against handlers and daemons, checks conformance."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._daemons: list[DaemonProcess] = []

    # ---------------------------------------------------------------- data

    @staticmethod
    def points(lp: str | Iterable[str], *, group_by: Sequence[str] = ()) -> list[pb.Point]:
        """Stream points from line protocol; ``group_by`` sets Kapacitor's group and dims."""
        return list(points_from_lines(_lines(lp), group_by=group_by))

    @staticmethod
    def batches(
        lp: str | Iterable[str],
        *,
        size: int | None = None,
        window: int | None = None,
        group_by: Sequence[str] = (),
    ) -> list[Batch]:
        """Batches cut per group by ``size`` points or by aligned ``window`` nanoseconds
        (one batch per group when neither is given)."""
        points = points_from_lines(_lines(lp), group_by=group_by)
        if window is not None:
            return list(batches_by_window(points, window))
        return list(batches_by_size(points, size or 1 << 62))

    @staticmethod
    def lines(run: TaskRun | Sequence[pb.Point | pb.BeginBatch | pb.EndBatch]) -> list[str]:
        """The output points as line protocol (batch edges left out; batch points named
        after their batch)."""
        messages = run.output if isinstance(run, TaskRun) else run
        out, name = [], ""
        for message in messages:
            if isinstance(message, pb.BeginBatch):
                name = message.name
            elif isinstance(message, pb.Point):
                out.append(format_line(message, name))
        return out

    # ---------------------------------------------------------------- running

    async def arun(
        self,
        /,
        handler: type[Any] | HandlerSpec | None = None,
        options: Mapping[str, Any] | Iterable[pb.Option] = (),
        *,
        lp: str | Iterable[str] | None = None,
        points: Iterable[pb.Point] = (),
        batches: Iterable[Batch] = (),
        restore: bytes | None = None,
        snapshot: bool = False,
        socket: Path | str | None = None,
        **serve: Any,
    ) -> TaskRun:
        """One task's life (Info, Init, Restore, the data, Snapshot, the half-close) against
        ``handler`` served in-process, or against a running ``socket``. ``lp`` is line
        protocol sent as stream points. A failed Init ends the run there: check
        ``run.init.success`` and ``run.init.error``. ``udf.run(...)`` is the same for a
        plain test function (it runs its own event loop)."""
        if lp is not None:
            points = [*points, *self.points(lp)]
        task = functools.partial(
            run_task, options=options, points=list(points), batches=list(batches),
            restore=restore, snapshot=snapshot,
        )  # fmt: skip
        if socket is not None:
            return await task(socket)
        if handler is None:
            raise TypeError("udf.run needs a handler or a socket")
        async with serve_handler(handler, **serve) as site:
            return await task(site.path)

    async def aconformance(
        self,
        /,
        handler: type[Any] | HandlerSpec,
        options: Mapping[str, Any] | Iterable[pb.Option] = (),
        *,
        lp: str | Iterable[str] | None = None,
        points: Sequence[pb.Point] = (),
        batches: Sequence[Batch] = (),
        check: bool = True,
        **kwargs: Any,
    ) -> ConformanceReport:
        """Run :func:`udfd.conformance.check_conformance`; fails the test on any failed check
        (``check=False`` returns the report instead). ``udf.conformance(...)`` is the same
        for a plain test function."""
        if lp is not None:
            points = [*points, *self.points(lp)]
        report = await check_conformance(handler, options, points=points, batches=batches, **kwargs)
        if check:
            assert_conformant(report)
        return report

    run = _blocking(arun)
    conformance = _blocking(aconformance)

    def daemon(self, config: str, env: Mapping[str, str] | None = None) -> DaemonProcess:
        """A real ``udfd serve`` on ``config`` (TOML after socket_dir and state_dir), ready
        when this returns; stopped at the end of the test. ``.socket(NAME)`` is a
        function's socket."""
        directory = self._workdir / f"daemon{len(self._daemons)}"
        directory.mkdir()
        process = DaemonProcess(directory, config, env)
        self._daemons.append(process)
        process.wait_for("ready:")
        return process

    def close(self) -> None:
        for process in self._daemons:
            process.close()


@pytest.fixture
def udf() -> Iterator[UdfHarness]:
    """Run handlers and daemons as Kapacitor would; see :class:`UdfHarness`."""
    # a short path of its own: unix socket paths are limited to 107 bytes
    workdir = Path(tempfile.mkdtemp(prefix="udfd-", dir="/tmp"))
    harness = UdfHarness(workdir)
    try:
        yield harness
    finally:
        harness.close()
        shutil.rmtree(workdir, ignore_errors=True)
