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
from typing import TypeAlias

from udfd.errors import FieldTypeError, MissingField
from udfd.protocol.proto import udf_pb2 as pb

Point = pb.Point
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
    return (
        name in point.fieldsDouble
        or name in point.fieldsInt
        or name in point.fieldsString
        or name in point.fieldsBool
    )


def fields(point: pb.Point) -> dict[str, FieldValue]:
    """All fields of a point in one dict."""
    out: dict[str, FieldValue] = {}
    out.update(point.fieldsDouble)
    out.update(point.fieldsInt)
    out.update(point.fieldsString)
    out.update(point.fieldsBool)
    return out


def set_field(point: pb.Point, name: str, value: FieldValue) -> None:
    """Set a field, choosing the map by the value's Python type (bool before int)."""
    remove_field(point, name)
    if isinstance(value, bool):
        point.fieldsBool[name] = value
    elif isinstance(value, int):
        point.fieldsInt[name] = value
    elif isinstance(value, float):
        point.fieldsDouble[name] = value
    elif isinstance(value, str):
        point.fieldsString[name] = value
    else:
        raise TypeError(f"field {name!r}: {type(value).__name__} is not a field type")


def remove_field(point: pb.Point, name: str) -> None:
    for fmap in (point.fieldsDouble, point.fieldsInt, point.fieldsString, point.fieldsBool):
        if name in fmap:
            del fmap[name]


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
    """
    out = pb.Point()
    if keep_fields:
        out.CopyFrom(point)
    else:
        out.name = point.name
        out.database = point.database
        out.retentionPolicy = point.retentionPolicy
        out.group = point.group
        out.byName = point.byName
        out.dimensions.extend(point.dimensions)
        out.tags.update(point.tags)
    out.time = point.time if time is None else time
    if values:
        for name, value in values.items():
            set_field(out, name, value)
    return out


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
