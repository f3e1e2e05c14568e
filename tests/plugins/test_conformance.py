"""Every first-party handler passes udfd's conformance check, through the pytest plugin's
``udf`` fixture (the same one third-party plugins use)."""

from __future__ import annotations

from typing import Any

import pytest
from golden import ADSL
from udfd_handlers.moving_average import MovingAverage
from udfd_handlers.outliers import Outliers
from udfd_handlers.state_change import StateChange, StateChangeBatch
from udfd_handlers.threshold import Threshold

ADSL_LP = "\n".join(f'adsl_connection,host=router1 value="{v}" {t}' for t, v in ADSL)
NUMBERS = "\n".join(
    f"cpu,host=h{i % 3} usage={(i * 37) % 101 / 3:.3f} {1_000_000_000 * i}" for i in range(120)
)


def test_state_change_conforms(udf: Any) -> None:
    udf.conformance(StateChange, {"field": "value"}, points=udf.points(ADSL_LP, group_by=["host"]))


def test_state_change_batch_conforms(udf: Any) -> None:
    batches = udf.batches(ADSL_LP, size=5, group_by=["host"])
    udf.conformance(StateChangeBatch, {"field": "value"}, batches=batches)


def test_moving_average_conforms(udf: Any) -> None:
    points = udf.points(NUMBERS, group_by=["host"])
    udf.conformance(MovingAverage, {"field": "usage", "size": 5}, points=points)


def test_outliers_conforms(udf: Any) -> None:
    batches = udf.batches(NUMBERS, size=20, group_by=["host"])
    udf.conformance(Outliers, {"field": "usage", "scale": 0.5}, batches=batches)


def test_threshold_conforms(udf: Any) -> None:
    points = udf.points(NUMBERS, group_by=["host"])
    udf.conformance(Threshold, {"range": ("usage", 5.0, 20.0), "label": "level"}, points=points)


def test_normalize_conforms(udf: Any) -> None:
    from udfd_ml.normalize import Normalize

    points = udf.points(ADSL_LP)
    table = [("SHOWTIME", 1.0), ("TRAINING", 0.0)]
    udf.conformance(Normalize, {"field": "value", "map": table}, points=points)


@pytest.mark.parametrize("check", ["snapshot", "identity"])
def test_the_check_fails_a_handler_that_breaks_it(udf: Any, check: str) -> None:
    import udfd

    class Forgetful(udfd.Handler[udfd.NoOptions]):
        """snapshot: counts points in a plain attribute, which no snapshot keeps;
        identity: stateless, but builds new points under another name."""

        def init(self) -> None:
            self.count = 0

        def point(self, point: udfd.Point) -> udfd.Output:
            if check == "identity":
                return udfd.make_point("renamed", point.time, {"n": 1})
            self.count += 1
            return udfd.derive(point, {"n": self.count})

    report = udf.conformance(Forgetful, points=udf.points(NUMBERS), check=False)
    failed = [r.check for r in report.failures]
    assert failed == [check], str(report)


def test_a_failing_handler_gets_a_report_not_an_exception(udf: Any) -> None:
    import udfd

    class Raises(udfd.Handler[udfd.NoOptions]):
        def point(self, point: udfd.Point) -> udfd.Output:
            raise RuntimeError("boom")

    report = udf.conformance(Raises, points=udf.points(NUMBERS), check=False)
    failed = {r.check: r.detail for r in report.failures}
    assert set(failed) == {"snapshot", "framing", "identity", "keepalive"}, str(report)
    assert "boom" in failed["framing"] and "boom" in failed["identity"]


def test_a_run_the_handler_ends_midway_returns_its_error(udf: Any) -> None:
    import udfd

    class Raises(udfd.Handler[udfd.NoOptions]):
        def point(self, point: udfd.Point) -> udfd.Output:
            raise RuntimeError("boom")

    # far more than the socket buffers hold: the feeding is cut off by the UDF's close
    many = udf.points("\n".join(f"m v={i} {i}" for i in range(50_000)))
    run = udf.run(Raises, points=many)
    assert run.init.success and run.points == []
    assert len(run.errors) == 1 and "RuntimeError: boom" in run.errors[0]
