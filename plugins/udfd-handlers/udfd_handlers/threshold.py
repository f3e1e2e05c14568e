"""threshold: hold fields against ranges, to filter points or to label them.

"Keep temperature within 20-25, drop humidity over 25" is one node instead of a
chain of ``where`` expressions, and labelling (``low``/``normal``/``high``) gives
alerts and dashboards a state to work with instead of raw numbers.

A value sitting on a bound crosses it back and forth with every bit of noise;
``hysteresis`` makes a field that went out of range stay out until it is back
inside by that margin, so the label does not flap. That needs the last state of
every field of every group, kept in :class:`udfd.GroupState` and snapshotted.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, model_validator
from udfd import GroupState, Handler, Options, Point, SnapshotError, set_field

from ._common import check_no_clash, finite_or_inf, output_names, unique

LOW, NORMAL, HIGH = -1, 0, 1


class ThresholdOptions(Options):
    """Options of ``@threshold()``."""

    #: ``.range('temperature', 20.0, 25.0)``, repeatable: a field and its inclusive bounds.
    ranges: list[tuple[str, float, float]] = Field(alias="range", min_length=1)
    #: ``.keep('inside')`` (default) or ``.keep('outside')``: filter mode.
    keep: Literal["inside", "outside"] | None = None
    #: ``.label('state')``: label mode: keep every point, add a string field per range.
    label: str | None = None
    #: ``.names('low', 'normal', 'high')``: the labels written in label mode (ignored
    #: in filter mode, so a configured default does not break filtering tasks).
    names: tuple[str, str, str] = ("low", "normal", "high")
    #: ``.hysteresis(0.5)``: how far back inside a value must come to leave low/high.
    hysteresis: float = Field(0.0, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        fields = [name for name, _, _ in self.ranges]
        unique(fields, "range")
        for name, low, high in self.ranges:
            if not low <= high:
                raise ValueError(
                    f".range({name!r}, {low}, {high}): the low bound must not exceed the high bound"
                )
            if self.hysteresis and self.hysteresis >= high - low:
                raise ValueError(
                    f".hysteresis({self.hysteresis}) must be smaller than the width of "
                    f".range({name!r}, {low}, {high}) ({high - low}), or a value leaving "
                    "'high' would have to fall below the low bound"
                )
        if self.label is not None and self.keep is not None:
            raise ValueError(".label() keeps every point and .keep() filters them; use one of them")
        if self.label is not None:
            check_no_clash(output_names(self.label, fields, "label"), fields, "label")
        if len(set(self.names)) != 3 or not all(self.names):
            raise ValueError(f".names{self.names} needs three different, non-empty labels")
        return self


class Threshold(Handler[ThresholdOptions]):
    """``@threshold()``: stream in, stream out; hysteresis state per group and field."""

    def init(self) -> None:
        options = self.options
        self._ranges = [(name, low, high) for name, low, high in options.ranges]
        self._h = options.hysteresis
        self._keep_inside = options.keep != "outside"
        self._labels = (
            output_names(options.label, [r[0] for r in self._ranges], "label")
            if options.label is not None
            else None
        )
        low, normal, high = options.names
        self._names = {LOW: low, NORMAL: normal, HIGH: high}
        # Without hysteresis a class never depends on the past and nothing is stored,
        # but the attribute exists regardless, so a snapshot taken with hysteresis
        # still restores after the option was removed.
        self.last: GroupState[dict[str, int]] = GroupState(dict, load=_load_classes)

    def classify(self, value: float, low: float, high: float, before: int | None) -> int:
        """LOW, NORMAL or HIGH; leaving LOW/HIGH needs ``hysteresis`` of margin."""
        if value > high:
            return HIGH
        if value < low:
            return LOW
        if before == HIGH and value > high - self._h:
            return HIGH
        if before == LOW and value < low + self._h:
            return LOW
        return NORMAL

    def point(self, point: Point) -> Point | None:
        if self._h or self._labels is not None:
            return self._classified(point)
        # filter mode without hysteresis: no state, no labels, one pass
        doubles = point.fieldsDouble
        inside = True
        for name, low, high in self._ranges:
            value = doubles[name] if name in doubles else finite_or_inf(point, name)
            if value != value:
                finite_or_inf(point, name)  # raises: NaN is not in or out of a range
            if value > high or value < low:
                inside = False  # keep reading: a missing later field still drops the point
        return point if inside is self._keep_inside else None

    def _classified(self, point: Point) -> Point | None:
        # read every field first: a missing one drops the point before any state moves
        values = [finite_or_inf(point, name) for name, _, _ in self._ranges]
        if self._h:
            last = self.last[point.group]
            classes = []
            for (name, low, high), value in zip(self._ranges, values, strict=True):
                cls = self.classify(value, low, high, last.get(name))
                last[name] = cls
                classes.append(cls)
        else:
            classes = [
                HIGH if value > high else LOW if value < low else NORMAL
                for (_, low, high), value in zip(self._ranges, values, strict=True)
            ]
        if self._labels is not None:
            for (name, _, _), cls in zip(self._ranges, classes, strict=True):
                set_field(point, self._labels[name], self._names[cls])
            return point
        inside = not any(classes)
        return point if inside is self._keep_inside else None


def _load_classes(data: Any) -> dict[str, int]:
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and v in (LOW, NORMAL, HIGH) and type(v) is int for k, v in data.items()
    ):
        raise SnapshotError(f"threshold snapshot: malformed group state {data!r}")
    return data
