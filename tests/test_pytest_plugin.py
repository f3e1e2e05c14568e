"""udfd's pytest plugin, tested as a user's project would use it (pytester runs pytest in a
subprocess on generated test files; the plugin comes in through its pytest11 entry point)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

HANDLER = '''
import udfd


class AvgOptions(udfd.Options):
    field: str
    size: int = 2


class Avg(udfd.Handler[AvgOptions]):
    def init(self) -> None:
        self.windows = udfd.GroupState(list)

    def point(self, point):
        window = self.windows[udfd.group_key(point)]
        window.append(udfd.get_number(point, self.options.field))
        del window[: -self.options.size]
        return udfd.derive(point, {"avg": sum(window) / len(window)})


class Forgets(Avg):
    """Keeps its window in a plain attribute: a restart loses it."""

    def init(self) -> None:
        self.plain = []

    def point(self, point):
        self.plain.append(udfd.get_number(point, self.options.field))
        return udfd.derive(point, {"avg": sum(self.plain) / len(self.plain)})
'''


def test_the_fixture_runs_tasks_snapshots_and_daemons(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(handlers=HANDLER)
    pytester.makepyfile(
        test_user="""
import pytest

from handlers import Avg

LP = "cpu,host=a v=1 1\\ncpu,host=a v=3 2\\ncpu,host=a v=5 3"


def test_a_run(udf):
    run = udf.run(Avg, {"field": "v"}, lp=LP)
    assert run.init.success
    assert udf.lines(run) == ["cpu,host=a avg=1.0 1", "cpu,host=a avg=2.0 2", "cpu,host=a avg=4.0 3"]


def test_init_errors(udf):
    run = udf.run(Avg, {"field": "v", "size": "two"})
    assert not run.init.success and "size" in run.init.error


def test_snapshot_and_restore(udf):
    first = udf.run(Avg, {"field": "v"}, lp=LP.splitlines()[:2], snapshot=True)
    second = udf.run(Avg, {"field": "v"}, lp=LP.splitlines()[2:], restore=first.snapshot)
    assert udf.lines(second) == ["cpu,host=a avg=4.0 3"]


def test_grouped_points_and_batches(udf):
    points = udf.points(LP, group_by=["host"])
    assert points[0].group == "host=a" and list(points[0].dimensions) == ["host"]
    (begin, body, end), = udf.batches(LP, size=3, group_by=["host"])
    assert begin.size == 3 and end.tmax == 3


def test_conformance(udf):
    udf.conformance(Avg, {"field": "v"}, lp=LP)


@pytest.mark.anyio
async def test_in_an_async_test(udf):
    run = await udf.arun(Avg, {"field": "v"}, lp=LP)
    assert len(run.points) == 3
    await udf.aconformance(Avg, {"field": "v"}, lp=LP, checks=["info", "snapshot"])


def test_through_a_daemon(udf):
    from pathlib import Path

    daemon = udf.daemon('[functions.avg]\\nhandler = "%s:Avg"\\n' % Path("handlers.py").resolve())
    run = udf.run(socket=daemon.socket("avg"), options={"field": "v"}, lp=LP)
    assert len(run.points) == 3
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=7)


def test_the_conformance_check_fails_a_handler_that_loses_its_state(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(handlers=HANDLER)
    pytester.makepyfile(
        test_user="""
from handlers import Forgets


def test_conformance(udf):
    udf.conformance(Forgets, {"field": "v"}, lp="cpu v=1 1\\ncpu v=3 2\\ncpu v=5 3\\ncpu v=7 4")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ok   info*", "*FAIL snapshot: one run gave 4 message(s)*"])


def test_the_plugin_is_registered_through_its_entry_point(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*udf*", "*Run handlers and daemons as Kapacitor would*"])
