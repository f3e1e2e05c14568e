"""normalize: turn fields into the numbers dashboards and detectors need.

Dashboards cannot plot an ADSL modem's ``SHOWTIME``/``TRAINING``, and a model
trained in °C gets °F from half the sensors. One node maps string states to
numbers through a table, scales and offsets numeric fields (unit conversion),
and renames fields, optionally keeping each original value alongside.

Every change is made on the point itself, so name, tags, group and time stay
exactly as they came (Kapacitor regroups by them). The order is fixed and
documented: map, then scale, then rename, so ``.rename()`` names what the other
two produced.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from udfd import BatchHandler, BeginBatch, EndBatch, Flag, Handler, Options, Point, PointError
from udfd.points import get_field, has_field, remove_field, set_field

#: placeholder for the field's name in ``.originalAs()``
FIELD_PLACEHOLDER = "{field}"


class NormalizeOptions(Options):
    """Options of ``@normalize()`` and ``@normalize_batch()``."""

    #: ``.field('state')``, repeatable: the string fields the table maps.
    field: list[str] = Field(default_factory=list)
    #: ``.map('SHOWTIME', 1.0)``, repeatable: the table (in the config, a TOML table
    #: ``map = { SHOWTIME = 1.0, TRAINING = 0.0 }`` or a list of pairs works too).
    map: list[tuple[str, float]] = Field(default_factory=list)
    #: ``.unknown('drop')`` (default), ``'keep'`` (leave the string), or ``'default'``.
    unknown: Literal["drop", "keep", "default"] = "drop"
    #: ``.default(-1.0)``: the number for a state the table lacks (implies 'default').
    default: float | None = Field(None, allow_inf_nan=False)
    #: ``.scale('temp_f', 0.5555556, -17.777778)``, repeatable: value * factor + offset.
    scale: list[tuple[str, float, float]] = Field(default_factory=list)
    #: ``.rename('temp_f', 'temperature')``, repeatable.
    rename: list[tuple[str, str]] = Field(default_factory=list)
    #: ``.keepOriginal()``: keep each mapped or scaled field's original value too ...
    keep_original: Flag = Field(False, alias="keepOriginal")
    #: ... under this name (``.originalAs('{field}_raw')``).
    original_as: str = Field("{field}_raw", alias="originalAs", min_length=1)

    @field_validator("map", mode="before")
    @classmethod
    def _table(cls, value: Any) -> Any:
        # a TOML table from the config: { SHOWTIME = 1.0, TRAINING = 0.0 }
        return list(value.items()) if isinstance(value, dict) else value

    @field_validator("field", mode="before")
    @classmethod
    def _one_field(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.default is not None:
            if self.unknown == "keep":
                raise ValueError(".default() and .unknown('keep') contradict each other")
        elif self.unknown == "default":
            raise ValueError(".unknown('default') needs .default(number)")
        if self.map and not self.field:
            raise ValueError(".map() needs .field(name): which string fields to map")
        if self.field and not self.map:
            raise ValueError(".field() names fields to map, but there is no .map() table")
        states = [s for s, _ in self.map]
        if len(set(states)) != len(states):
            raise ValueError(".map() names the same state twice")
        if not (self.field or self.scale or self.rename):
            raise ValueError("nothing to do: give .field() with .map(), .scale() or .rename()")
        if self.keep_original and FIELD_PLACEHOLDER not in self.original_as:
            raise ValueError(
                f".originalAs({self.original_as!r}) would name every original the same; "
                f"put {FIELD_PLACEHOLDER} in it, e.g. '{FIELD_PLACEHOLDER}_raw'"
            )
        targets = [new for _, new in self.rename]
        if len(set(targets)) != len(targets):
            raise ValueError(".rename() gives two fields the same new name")
        return self


class _Normalizer:
    """The per-point work, shared by the stream and the batch handler."""

    __slots__ = ("_default", "_fields", "_original", "_renames", "_scales", "_table", "_unknown")

    def __init__(self, options: NormalizeOptions) -> None:
        self._fields = tuple(options.field)
        self._table = dict(options.map)
        # a .default() alone means: unknown states get it
        self._unknown = "default" if options.default is not None else options.unknown
        self._default = options.default
        self._scales = tuple(options.scale)
        self._renames = tuple(options.rename)
        self._original = options.original_as if options.keep_original else None

    def apply(self, point: Point) -> Point:
        # check everything before changing anything: a dropped point leaves no half-edit
        mapped: list[tuple[str, str, float]] = []
        for name in self._fields:
            if name not in point.fieldsString:
                continue  # absent here (or not a string): nothing to map
            state = point.fieldsString[name]
            number = self._table.get(state)
            if number is None:
                if self._unknown == "drop":
                    raise PointError(f"field {name!r}: state {state!r} is not in the .map() table")
                if self._unknown == "keep":
                    continue
                number = self._default
            assert number is not None
            mapped.append((name, state, number))
        scaled: list[tuple[str, float, float]] = []
        for name, factor, offset in self._scales:
            if not has_field(point, name):
                continue
            value = get_field(point, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PointError(
                    f"field {name!r} is {type(value).__name__}, .scale() needs a number"
                )
            scaled.append((name, value, value * factor + offset))
        original = self._original
        for name, state, number in mapped:
            if original is not None:
                set_field(point, original.replace(FIELD_PLACEHOLDER, name), state)
            set_field(point, name, number)
        for name, value, result in scaled:
            if original is not None:
                set_field(point, original.replace(FIELD_PLACEHOLDER, name), value)
            set_field(point, name, float(result))
        for old, new in self._renames:
            if has_field(point, old):
                value = get_field(point, old)
                remove_field(point, old)
                set_field(point, new, value)
        return point


class Normalize(Handler[NormalizeOptions]):
    """``@normalize()``: stream in, stream out; no state."""

    def init(self) -> None:
        self._apply = _Normalizer(self.options).apply

    def point(self, point: Point) -> Point:
        return self._apply(point)


class NormalizeBatch(BatchHandler[NormalizeOptions]):
    """``@normalize_batch()``: batch in, batch out; a point that cannot be mapped is dropped
    from its batch, the rest of the batch goes on."""

    def init(self) -> None:
        self._apply = _Normalizer(self.options).apply

    def point(self, point: Point) -> None:
        super().point(self._apply(point))

    def process_batch(self, points: list[Point], begin: BeginBatch, end: EndBatch) -> list[Point]:
        return points
