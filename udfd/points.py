"""Point helpers: read fields by name, build outputs that keep the input's identity.

Points are the protocol's own ``Point`` messages (``udfd.Point``), not a copy in
another type: parsing straight into them is the cheapest thing Python can do.

Kapacitor recomputes a stream point's group from ``name``, ``tags``,
``dimensions`` and ``byName``, so an output built from scratch silently loses its
measurement and group. :func:`derive` starts from the input's identity instead,
so keeping grouping is the default and dropping it takes effort.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from udfd.errors import FieldTypeError, MissingField
from udfd.protocol.proto import udf_pb2 as pb

Point = pb.Point
_Point = pb.Point
BeginBatch = pb.BeginBatch
EndBatch = pb.EndBatch

FieldValue: TypeAlias = float | int | str | bool


def get_field(point: pb.Point, name: str) -> FieldValue:
    """The value of field ``name`` whatever its type; :class:`MissingField` if absent."""
    if name in point.fieldsDouble:
        return point.fieldsDouble[name]
    if name in point.fieldsInt:
        return point.fieldsInt[name]
    if name in point.fieldsString:
        return point.fieldsString[name]
    if name in point.fieldsBool:
        return point.fieldsBool[name]
    raise MissingField(f"point has no field {name!r}")


def get_number(point: pb.Point, name: str) -> float:
    """A numeric field as float (ints included); errors are point errors (dropped)."""
    if name in point.fieldsDouble:
        return point.fieldsDouble[name]
    if name in point.fieldsInt:
        return float(point.fieldsInt[name])
    if name in point.fieldsString or name in point.fieldsBool:
        raise FieldTypeError(f"field {name!r} is not numeric")
    raise MissingField(f"point has no field {name!r}")


def has_field(point: pb.Point, name: str) -> bool:
    """Whether the point has field ``name``, of any type (the protocol keeps one map per
    type, so a plain ``in`` on one of them misses the others)."""
    return (
        name in point.fieldsDouble
        or name in point.fieldsInt
        or name in point.fieldsString
        or name in point.fieldsBool
    )


def fields(point: pb.Point) -> dict[str, FieldValue]:
    """All fields of a point in one dict."""
    out: dict[str, FieldValue] = {}
    for typed in (point.fieldsDouble, point.fieldsInt, point.fieldsString, point.fieldsBool):
        if typed:  # most points use one or two of the four maps; update() is not free
            out.update(typed)
    return out


def set_field(point: pb.Point, name: str, value: FieldValue) -> None:
    """Set a field, choosing the map by the value's Python type (bool before int).

    A name lives in one map only, so the others are checked, but only those that
    hold anything: most points carry one kind of field, and testing an empty map
    is cheaper than a lookup in it.
    """
    target: Any
    a: Any
    b: Any
    c: Any
    kind = type(value)
    if kind is float:
        target, a, b, c = point.fieldsDouble, point.fieldsInt, point.fieldsString, point.fieldsBool
    elif kind is bool:
        target, a, b, c = point.fieldsBool, point.fieldsDouble, point.fieldsInt, point.fieldsString
    elif kind is int:
        target, a, b, c = point.fieldsInt, point.fieldsDouble, point.fieldsString, point.fieldsBool
    elif kind is str:
        target, a, b, c = point.fieldsString, point.fieldsDouble, point.fieldsInt, point.fieldsBool
    elif isinstance(value, bool | int | float | str):  # subclasses (IntEnum, numpy scalars...)
        set_field(point, name, _plain(value))
        return
    else:
        raise TypeError(f"field {name!r}: {type(value).__name__} is not a field type")
    if a and name in a:
        del a[name]
    if b and name in b:
        del b[name]
    if c and name in c:
        del c[name]
    target[name] = value


def _plain(value: FieldValue) -> FieldValue:
    """The builtin value behind a subclass of bool, int, float or str."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(type(value).__name__)  # pragma: no cover - callers checked the type


def remove_field(point: pb.Point, name: str) -> None:
    """Remove field ``name`` from the point in place, whatever its type; absent is fine."""
    for fmap in (point.fieldsDouble, point.fieldsInt, point.fieldsString, point.fieldsBool):
        if fmap and name in fmap:
            del fmap[name]


def _set_fresh(point: pb.Point, values: Mapping[str, FieldValue]) -> None:
    """Set fields on a point whose field maps are empty: no other map to clean."""
    for name, value in values.items():
        kind = type(value)
        if kind is float:
            point.fieldsDouble[name] = value  # type: ignore[assignment]
        elif kind is int:
            point.fieldsInt[name] = value  # type: ignore[assignment]
        elif kind is str:
            point.fieldsString[name] = value  # type: ignore[assignment]
        elif kind is bool:
            point.fieldsBool[name] = value  # type: ignore[assignment]
        else:
            set_field(point, name, value)


def derive(
    point: pb.Point,
    values: Mapping[str, FieldValue] | None = None,
    *,
    time: int | None = None,
    keep_fields: bool = False,
) -> pb.Point:
    """A new point with the input's identity (name, database, retention policy,
    group, tags, dimensions, byName) and the given fields.

    ``keep_fields=True`` copies the input's fields first, then applies ``values``.
    The copy is one ``CopyFrom`` in C, then the field maps are emptied: copying
    tags and dimensions key by key from Python costs several times more. A handler
    that is done with its input can skip even the copy with :func:`replace_fields`.
    """
    out = _Point()
    out.CopyFrom(point)
    if not keep_fields:
        return replace_fields(out, values or {}, time=time)
    if time is not None:
        out.time = time
    if values:
        for name, value in values.items():
            set_field(out, name, value)
    return out


def replace_fields(
    point: pb.Point, values: Mapping[str, FieldValue], *, time: int | None = None
) -> pb.Point:
    """The input point itself, its fields replaced by ``values``: the cheapest output
    that keeps the identity.

    Every point udfd hands a handler is freshly parsed and belongs to it, so a
    handler that does not keep the input (in a window, a batch, its state) may turn
    it into the output instead of building another; ``derive`` is the same
    without touching the input.
    """
    # clear() on a map that holds something (ClearField by name costs more than the
    # test); float values set inline: this runs once per point
    doubles: Any = point.fieldsDouble
    if doubles:
        doubles.clear()
    fmap: Any = point.fieldsInt
    if fmap:
        fmap.clear()
    fmap = point.fieldsString
    if fmap:
        fmap.clear()
    fmap = point.fieldsBool
    if fmap:
        fmap.clear()
    if time is not None:
        point.time = time
    for name, value in values.items():
        if type(value) is float:
            doubles[name] = value
        else:
            _set_fresh(point, {name: value})
    return point


def make_point(
    name: str,
    time: int,
    fields: Mapping[str, FieldValue],
    tags: Mapping[str, str] | None = None,
    *,
    group: str = "",
    dimensions: list[str] | None = None,
    by_name: bool = False,
) -> pb.Point:
    """Build a point from plain values (tests, clients, handlers that create series)."""
    out = pb.Point(name=name, time=time, group=group, byName=by_name)
    if tags:
        out.tags.update(tags)
    if dimensions:
        out.dimensions.extend(dimensions)
    for key, value in fields.items():
        set_field(out, key, value)
    return out


def group_key(point: pb.Point) -> str:
    """The group a point belongs to, for per-group state.

    Kapacitor fills ``group`` on stream points of grouped tasks and on batch points;
    an ungrouped stream has an empty group, and all its points share one state,
    just as Kapacitor's own nodes treat them.
    """
    return point.group
