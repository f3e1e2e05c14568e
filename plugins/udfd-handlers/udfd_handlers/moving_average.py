"""moving_average: the mean of the last ``size`` values of a field, per group.

A running sum updated by adding the new value and subtracting the oldest is the
obvious implementation, and it drifts: every float addition rounds, and a large
value that passes through the window leaves its rounding error behind for ever
(window ``[1e17, 1, 1]`` → ``[1, 1, 1]`` averages to 0 instead of 1). A task runs
for months, so that error has time to grow.

Here the running sum is exact instead. Every finite double is an integer
multiple of 2**-1074, so the window's sum is kept as one Python integer in those
units; adding and subtracting are exact, and the mean is a single correctly
rounded integer division. The result is the exactly rounded mean of the window,
at a constant ~1.3 µs a point whatever the window size (``math.fsum`` over the
window costs ~1.6 µs at size 100 and ~15 µs at size 1000, and is still rounded
twice; a Neumaier-compensated sum costs ~0.6 µs but is only nearly exact).

Infinities and NaN are kept out of the exact sum and counted, so they affect the
mean only while they are in the window, as IEEE arithmetic would have it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pydantic import Field
from udfd import Flag, GroupState, Handler, Options, Point, SnapshotError, derive

from ._common import number

#: log2 of the unit of the exact sum: the smallest positive double is 2**-1074.
_SHIFT = 1074


class MovingAverageOptions(Options):
    """Options of ``@moving_average()`` (those of Kapacitor's example, plus ``fullOnly``)."""

    #: ``.field('value')``: the numeric field to average (int or float).
    field: str = Field(min_length=1)
    #: ``.size(10)``: how many of the group's most recent values the window holds.
    size: int = Field(ge=1)
    #: ``.as('avg')``: the output field.
    as_: str = Field("avg", alias="as", min_length=1)
    #: ``.fullOnly()``: emit nothing until the window is full (Kapacitor's movingAverage).
    full_only: Flag = Field(False, alias="fullOnly")


def _exact(value: int | float) -> int:
    """``value`` as an integer count of 2**-1074 (exact for every finite double and int)."""
    if type(value) is int:
        return value << _SHIFT
    numerator, denominator = value.as_integer_ratio()  # denominator is a power of two
    return numerator << (_SHIFT + 1 - denominator.bit_length())


class Window:
    """The last ``size`` values of one group and their exact sum."""

    __slots__ = ("nan", "neg_inf", "pos_inf", "total", "values")

    def __init__(self, size: int, values: list[int | float] | None = None) -> None:
        self.values: deque[int | float] = deque(maxlen=size)
        self.total = 0
        self.nan = 0
        self.pos_inf = 0
        self.neg_inf = 0
        for value in values or ():
            self.push(value)

    def push(self, value: int | float) -> None:
        values = self.values
        if len(values) == values.maxlen:
            self._account(values[0], -1)
        values.append(value)
        self._account(value, 1)

    def _account(self, value: int | float, sign: int) -> None:
        if type(value) is int or value - value == 0.0:  # finite
            self.total += sign * _exact(value)
        elif value != value:
            self.nan += sign
        elif value > 0:
            self.pos_inf += sign
        else:
            self.neg_inf += sign

    @property
    def full(self) -> bool:
        return len(self.values) == self.values.maxlen

    def mean(self) -> float:
        if self.nan or (self.pos_inf and self.neg_inf):
            return float("nan")
        if self.pos_inf:
            return float("inf")
        if self.neg_inf:
            return float("-inf")
        # int / int is correctly rounded in Python; the mean of doubles never overflows
        return self.total / (len(self.values) << _SHIFT)


class MovingAverage(Handler[MovingAverageOptions]):
    """``@moving_average()``: stream in, stream out; one window per group.

    The output carries only the ``as`` field (as Kapacitor's movingAverage and
    the official example do), with the input's time, name, tags and group.
    """

    def init(self) -> None:
        size = self.options.size
        self.windows = GroupState(lambda: Window(size), dump=_dump, load=lambda d: _load(size, d))

    def point(self, point: Point) -> Point | None:
        value = number(point, self.options.field)
        window = self.windows[point.group]
        window.push(value)
        if self.options.full_only and not window.full:
            return None
        return derive(point, {self.options.as_: window.mean()})


def _dump(window: Window) -> list[int | float]:
    return list(window.values)


def _load(size: int, data: Any) -> Window:
    if not isinstance(data, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in data
    ):
        raise SnapshotError("moving_average snapshot: a window is not a list of numbers")
    # a window saved with a larger .size() keeps its most recent values
    return Window(size, data)
