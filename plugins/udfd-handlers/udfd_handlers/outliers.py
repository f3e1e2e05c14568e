"""outliers: Tukey's fences on each batch.

A point is an outlier when its value lies strictly outside
``[Q1 - scale·IQR, Q3 + scale·IQR]`` with ``IQR = Q3 - Q1``, the quartiles taken
over the batch. Fences from quartiles rather than from mean and standard
deviation are not dragged along by the very outliers they should find.

Quartiles use linear interpolation between closest ranks, the default of
``numpy.percentile`` (Hyndman & Fan type 7): the position of quantile ``q`` in the
sorted values is ``(n-1)·q``. The interpolation is written as numpy writes it
(from the upper neighbour when the fraction is ≥ 0.5), so the fences match
numpy's to the last bit. Kapacitor's official example took medians of halves;
results differ slightly on small batches.

What is emitted is chosen so that migrating from the official example changes
nothing: by default the outliers (the example's behaviour); ``.inliers()``
emits the rest instead; ``.mark('outlier')`` emits every point with a bool field.

Small batches need no special case, and get none: a batch of 0 points is echoed
as an empty batch; 1 point has IQR 0 and is never an outlier; 2 points are never
outliers unless ``scale`` < 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Self

from pydantic import Field, model_validator
from udfd import BatchHandler, BeginBatch, EndBatch, Flag, Options, Output, Point, set_field

from ._common import finite_or_inf


class OutliersOptions(Options):
    """Options of ``@outliers()``."""

    #: ``.field('value')``: the numeric field whose values are ranked.
    field: str = Field(min_length=1)
    #: ``.scale(1.5)``: k in the fences; 1.5 finds outliers, 3.0 "far out" ones.
    scale: float = Field(1.5, ge=0.0, allow_inf_nan=False)
    #: ``.mark('outlier')``: keep every point and add this bool field instead of filtering.
    mark: str | None = Field(None, min_length=1)
    #: ``.inliers()``: emit the points that are *not* outliers (drop the outliers).
    inliers: Flag = False

    @model_validator(mode="after")
    def _one_output_mode(self) -> Self:
        if self.mark is not None and self.inliers:
            raise ValueError(
                ".mark() keeps every point and .inliers() drops the outliers; use one of them"
            )
        if self.mark == self.field:
            raise ValueError(
                f".mark({self.mark!r}) would overwrite the field being tested; choose another name"
            )
        return self


def quantile(ordered: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0..1) of sorted values, exactly as numpy's default "linear" method."""
    n = len(ordered)
    position = n * q + (1 - q) - 1  # numpy's virtual index, in numpy's float order
    below = math.floor(position)
    fraction = position - below
    below = min(max(below, 0), n - 1)
    a = ordered[below]
    b = ordered[min(below + 1, n - 1)]
    diff = b - a
    if fraction >= 0.5:
        return b - diff * (1 - fraction)
    return a + diff * fraction


def fences(values: Sequence[float], scale: float) -> tuple[float, float]:
    """Lower and upper Tukey fence of a non-empty set of values."""
    ordered = sorted(values)
    q1 = quantile(ordered, 0.25)
    q3 = quantile(ordered, 0.75)
    iqr = q3 - q1
    return q1 - scale * iqr, q3 + scale * iqr


class Outliers(BatchHandler[OutliersOptions]):
    """``@outliers()``: batch in, batch out, framed as the request was."""

    def point(self, point: Point) -> Output:
        # check here so one bad point (missing, not numeric, NaN) is dropped, not its batch
        finite_or_inf(point, self.options.field)
        return super().point(point)

    def process_batch(self, points: list[Point], begin: BeginBatch, end: EndBatch) -> list[Point]:
        if not points:
            return []
        name = self.options.field
        values = [finite_or_inf(p, name) for p in points]
        lower, upper = fences(values, self.options.scale)
        # NaN fences (an infinite IQR) compare false: nothing is an outlier then
        flags = [v < lower or v > upper for v in values]
        if self.options.mark is not None:
            mark = self.options.mark
            for point, flag in zip(points, flags, strict=True):
                set_field(point, mark, flag)
            return points
        want = not self.options.inliers
        return [p for p, flag in zip(points, flags, strict=True) if flag is want]
