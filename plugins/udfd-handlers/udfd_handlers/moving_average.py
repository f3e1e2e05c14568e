"""moving_average: the mean of the last ``size`` values of a field, per group.

A running sum updated by adding the new value and subtracting the oldest is the
obvious implementation, and it drifts: every float addition rounds, and a large
value that passes through the window leaves its rounding error behind for ever
(window ``[1e17, 1, 1]`` → ``[1, 1, 1]`` averages to 0 instead of 1). A task runs
for months, so that error has time to grow.

Here the running sum is exact instead. Every finite double is an integer
multiple of a power of two (``value.as_integer_ratio()`` has a power-of-two
denominator), so the window's sum is kept as one Python integer in units of
2**-scale, where ``scale`` is the finest of those powers among the values in the
window; adding and subtracting are exact, and the mean is a single correctly
rounded integer division. The result is the exactly rounded mean of the window,
whatever its size. ``math.fsum`` over the window costs ~1.6 µs at size 100 and
~15 µs at size 1000, and still rounds twice; a Neumaier-compensated sum is only
nearly exact.

The scale adapts because its cost is the size of that integer: sensor readings
such as ``23.7`` need about 50 bits, so the sum stays a small integer, while a
fixed unit of 2**-1074 (every double's) makes every addition and the division
work on 1,100-bit numbers, about twice the cost of the whole point. A tiny value
(``1e-300``) raises the scale while it is in the window; once it has left, the
scale comes back down (checked once per window length, so in constant time).

Infinities and NaN are kept out of the exact sum and counted, so they affect the
mean only while they are in the window, as IEEE arithmetic would have it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pydantic import Field
from udfd import Flag, GroupState, Handler, Options, Point, SnapshotError, replace_fields

from ._common import number


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


#: above this scale (bits below the binary point) the window tries to come back down
_RESCALE_ABOVE = 64


def _ratio(value: int | float) -> tuple[int, int]:
    """``value`` as ``(numerator, k)`` with ``value == numerator / 2**k`` (finite only)."""
    if type(value) is int:
        return value, 0
    numerator, denominator = value.as_integer_ratio()  # denominator is a power of two
    return numerator, denominator.bit_length() - 1


class Window:
    """The last ``size`` values of one group and their exact sum, in units of 2**-scale."""

    __slots__ = ("nan", "neg_inf", "pos_inf", "pushes", "scale", "special", "total", "values")

    def __init__(self, size: int, values: list[int | float] | None = None) -> None:
        self.values: deque[int | float] = deque(maxlen=size)
        self.total = 0
        self.scale = 0
        self.pushes = 0
        self.nan = 0
        self.pos_inf = 0
        self.neg_inf = 0
        #: non-finite values in the window (nan + pos_inf + neg_inf)
        self.special = 0
        for value in values or ():
            self.push(value)

    def push(self, value: int | float) -> None:
        values = self.values
        if len(values) == values.maxlen:
            old = values[0]
            # _ratio inlined, here and below: two calls less per point
            if type(old) is int:
                self.total -= old << self.scale
            elif old - old == 0.0:  # finite
                numerator, denominator = old.as_integer_ratio()
                self.total -= numerator << (self.scale + 1 - denominator.bit_length())
            else:
                self._count(old, -1)
        values.append(value)
        if type(value) is int or value - value == 0.0:
            if type(value) is int:
                numerator, k = value, 0
            else:
                numerator, denominator = value.as_integer_ratio()
                k = denominator.bit_length() - 1
            scale = self.scale
            if k > scale:
                self.total <<= k - scale
                self.scale = scale = k
            self.total += numerator << (scale - k)
        else:
            self._count(value, 1)
        if self.scale > _RESCALE_ABOVE:
            self.pushes += 1
            if self.pushes >= len(values):
                self._rescale()

    def _count(self, value: float, sign: int) -> None:
        self.special += sign
        if value != value:
            self.nan += sign
        elif value > 0:
            self.pos_inf += sign
        else:
            self.neg_inf += sign

    def _rescale(self) -> None:
        """Bring the unit back up to the finest one the window still needs."""
        self.pushes = 0
        needed = max(
            (_ratio(v)[1] for v in self.values if type(v) is int or v - v == 0.0), default=0
        )
        if needed < self.scale:
            self.total >>= self.scale - needed  # exact: every value is a multiple
            self.scale = needed

    def mean(self) -> float:
        if self.nan or (self.pos_inf and self.neg_inf):
            return float("nan")
        if self.pos_inf:
            return float("inf")
        if self.neg_inf:
            return float("-inf")
        # int / int is correctly rounded in Python; the mean of doubles never overflows
        return self.total / (len(self.values) << self.scale)


class MovingAverage(Handler[MovingAverageOptions]):
    """``@moving_average()``: stream in, stream out; one window per group.

    The output carries only the ``as`` field (as Kapacitor's movingAverage and
    the official example do), with the input's time, name, tags and group.
    """

    def init(self) -> None:
        size = self.options.size
        self.windows = GroupState(lambda: Window(size), dump=_dump, load=lambda d: _load(size, d))
        self._field = self.options.field
        self._as = self.options.as_
        self._full_only = self.options.full_only

    def point(self, point: Point) -> Point | None:
        name = self._field
        doubles = point.fieldsDouble
        value = doubles[name] if name in doubles else number(point, name)
        window = self.windows[point.group]
        window.push(value)
        values = window.values
        if self._full_only and len(values) != values.maxlen:
            return None
        # Window.mean, inlined for the common case of a window of finite values
        mean = window.mean() if window.special else window.total / (len(values) << window.scale)
        # the input is not kept: it becomes the output, with only the average
        return replace_fields(point, {self._as: mean})


def _dump(window: Window) -> list[int | float]:
    return list(window.values)


def _load(size: int, data: Any) -> Window:
    if not isinstance(data, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in data
    ):
        raise SnapshotError("moving_average snapshot: a window is not a list of numbers")
    # a window saved with a larger .size() keeps its most recent values
    return Window(size, data)
