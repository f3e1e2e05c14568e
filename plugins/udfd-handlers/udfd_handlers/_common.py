"""Small pieces the handlers share: typed field access and output field naming.

Kept here so every handler reports the same data problems with the same words,
and names its extra output fields by one rule users learn once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from udfd import FieldTypeError, MissingField, Point

#: Placeholder in an output-field name that stands for the input field's name.
FIELD_PLACEHOLDER = "{field}"


def number(point: Point, name: str) -> int | float:
    """A numeric field, keeping ints as ints (exact arithmetic needs to know).

    Strings and bools are a :class:`FieldTypeError` rather than a silent 0/1, so a
    mis-typed series is dropped and counted instead of skewing a result.
    """
    if name in point.fieldsDouble:
        return point.fieldsDouble[name]
    if name in point.fieldsInt:
        return point.fieldsInt[name]
    if name in point.fieldsString:
        raise FieldTypeError(f"field {name!r} is a string, not a number")
    if name in point.fieldsBool:
        raise FieldTypeError(f"field {name!r} is a bool, not a number")
    raise MissingField(f"point has no field {name!r}")


def finite_or_inf(point: Point, name: str) -> float:
    """A numeric field as float; NaN is refused because it cannot be ranked or compared."""
    value = float(number(point, name))
    if math.isnan(value):
        raise FieldTypeError(f"field {name!r} is NaN")
    return value


def output_names(template: str, fields: Sequence[str], option: str) -> dict[str, str]:
    """Map each input field to the output field a per-field option writes.

    With one input field the template is used as given (``{field}`` still expands),
    so the common case reads naturally. With several, a template without
    ``{field}`` would make every field write the same output field, silently
    keeping only the last; that is refused with a sentence saying what to write.
    """
    if not template:
        raise ValueError(f".{option}() needs a non-empty field name")
    if len(fields) > 1 and FIELD_PLACEHOLDER not in template:
        raise ValueError(
            f".{option}({template!r}) would write the same output field for each of the "
            f"{len(fields)} fields ({', '.join(fields)}); put {FIELD_PLACEHOLDER} in the "
            f"name, e.g. .{option}('{FIELD_PLACEHOLDER}_{template}')"
        )
    return {f: template.replace(FIELD_PLACEHOLDER, f) for f in fields}


def check_no_clash(written: dict[str, str], inputs: Sequence[str], option: str) -> None:
    """Refuse output names that would overwrite an input field the handler reads."""
    for source, target in written.items():
        if target in inputs:
            raise ValueError(
                f".{option}() would write {target!r} (for field {source!r}), which is an "
                "input field this handler reads; choose another name"
            )


def nanoseconds(value: timedelta) -> int:
    """A timedelta as integer nanoseconds, without a float round trip."""
    return (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000


def unique(names: Sequence[str], option: str) -> None:
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ValueError(f".{option}() needs a non-empty field name")
        if name in seen:
            raise ValueError(f".{option}({name!r}) is given more than once")
        seen.add(name)
