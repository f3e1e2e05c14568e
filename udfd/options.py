"""A handler's options: one pydantic model that is both the Info declaration and Init's validator.

A handler declares its options once, as a pydantic model. From the annotations
alone udfd derives what ``InfoResponse`` tells Kapacitor (so Info never runs
handler code), and from the same model it validates what ``InitRequest`` brings:

=====================================  ==========================================
annotation                             TICKscript
=====================================  ==========================================
``str`` / ``int`` / ``float`` /        ``.name(value)`` once, one value of
``bool`` / ``timedelta``               STRING / INT / DOUBLE / BOOL / DURATION
``tuple[T1, T2, ...]``                 ``.name(v1, v2, ...)`` once
``list[T]`` / ``list[tuple[...]]``     ``.name(...)`` repeated, each call one item
``Flag``                               ``.name()``, no value: True when present
=====================================  ==========================================

``T | None`` makes an option optional; a default makes it optional too. A field
whose option name is a Python keyword uses an alias: ``as_: str = Field("avg",
alias="as")``. Kapacitor types literals strictly (``.scale(2)`` is INT), so a
``float`` option also declares nothing else: users write ``.scale(2.0)``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Annotated, Any, Final, Union, cast, get_args, get_origin

import pydantic
from pydantic import BaseModel, ConfigDict

from udfd.errors import HandlerDefinitionError, OptionsError
from udfd.protocol.proto import udf_pb2 as pb


class _FlagMarker:
    """Marks a bool option that takes no value (``.name()``)."""


#: An option given with no value: ``@fn().verbose()``.
Flag = Annotated[bool, _FlagMarker()]


class _ConfigOnlyMarker:
    """Marks an option that only the operator's config may set."""

    def __repr__(self) -> str:
        return "ConfigOnly"


#: ``Annotated[list[str], ConfigOnly]``: an option the function's ``options`` table in
#: the udfd config sets, which a TICKscript can neither see (it is not in Info) nor
#: override. For what decides trust or resources, which belongs to whoever runs
#: udfd rather than to whoever writes tasks: which directories' pickles to trust.
ConfigOnly = _ConfigOnlyMarker()


def is_config_only(metadata: Iterable[Any]) -> bool:
    return any(isinstance(m, _ConfigOnlyMarker) for m in metadata)


class Options(BaseModel):
    """Base of every handler's options model: strict about unknown names, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NoOptions(Options):
    """The options model of a handler that takes none."""


_SCALARS: Final[dict[Any, int]] = {
    bool: pb.BOOL,
    int: pb.INT,
    float: pb.DOUBLE,
    str: pb.STRING,
    timedelta: pb.DURATION,
}

VALUE_TYPE_NAMES: Final[dict[int, str]] = {
    pb.BOOL: "bool",
    pb.INT: "int",
    pb.DOUBLE: "float",
    pb.STRING: "string",
    pb.DURATION: "duration",
}


class OptionSpec:
    """How one model field maps onto the protocol."""

    __slots__ = ("field", "name", "repeated", "required", "tuple_shaped", "value_types")

    def __init__(
        self,
        name: str,
        field: str,
        value_types: tuple[int, ...],
        repeated: bool,
        tuple_shaped: bool,
        required: bool,
    ) -> None:
        self.name = name
        self.field = field
        self.value_types = value_types
        self.repeated = repeated
        self.tuple_shaped = tuple_shaped
        self.required = required

    @property
    def is_flag(self) -> bool:
        return not self.value_types

    def signature(self) -> str:
        """How the option is written in a TICKscript, e.g. ``.range(string, float, float)``."""
        args = ", ".join(VALUE_TYPE_NAMES[t] for t in self.value_types)
        return f".{self.name}({args})"


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _scalar_type(annotation: Any, where: str) -> int:
    base = annotation
    if get_origin(annotation) is Annotated:
        base = get_args(annotation)[0]
    if get_origin(base) is typing.Literal:
        kinds = {type(v) for v in get_args(base)}
        if len(kinds) == 1:
            base = kinds.pop()
    try:
        return _SCALARS[base]
    except (KeyError, TypeError):
        raise HandlerDefinitionError(
            f"{where}: option type {annotation!r} cannot travel in the UDF protocol; "
            "use str, int, float, bool, timedelta, tuples or lists of them, or Flag"
        ) from None


def _is_flag(annotation: Any, metadata: Iterable[Any]) -> bool:
    if any(isinstance(m, _FlagMarker) for m in metadata):
        return True
    if get_origin(annotation) is Annotated:
        return any(isinstance(m, _FlagMarker) for m in get_args(annotation)[1:])
    return False


def _value_types(annotation: Any, where: str) -> tuple[tuple[int, ...], bool]:
    """Value types of one call, and whether the annotation is tuple-shaped."""
    if get_origin(annotation) is tuple:
        args = get_args(annotation)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            raise HandlerDefinitionError(
                f"{where}: a tuple option needs a fixed length (tuple[str, float])"
            )
        return tuple(_scalar_type(a, where) for a in args), True
    return (_scalar_type(annotation, where),), False


def option_specs(model: type[Options]) -> dict[str, OptionSpec]:
    """Map every field of an options model onto its protocol shape.

    Raises :class:`HandlerDefinitionError` for a field the protocol cannot carry,
    so a bad declaration fails when the handler is loaded, not at the first Init.
    """
    specs: dict[str, OptionSpec] = {}
    for field_name, info in model.model_fields.items():
        if is_config_only(info.metadata):
            continue
        where = f"{model.__qualname__}.{field_name}"
        name = info.alias or field_name
        annotation, _ = _strip_optional(info.annotation)
        required = info.is_required()
        if _is_flag(annotation, info.metadata):
            spec = OptionSpec(name, field_name, (), False, False, required)
        elif get_origin(annotation) is list:
            (item,) = get_args(annotation) or (None,)
            if item is None:
                raise HandlerDefinitionError(f"{where}: list options need an item type")
            value_types, tuple_shaped = _value_types(_strip_optional(item)[0], where)
            spec = OptionSpec(name, field_name, value_types, True, tuple_shaped, required)
        else:
            value_types, tuple_shaped = _value_types(annotation, where)
            spec = OptionSpec(name, field_name, value_types, False, tuple_shaped, required)
        if name in specs:
            raise HandlerDefinitionError(f"{where}: option name {name!r} declared twice")
        specs[name] = spec
    return specs


def info_options(specs: Mapping[str, OptionSpec]) -> dict[str, pb.OptionInfo]:
    return {
        name: pb.OptionInfo(valueTypes=cast("list[pb.ValueType]", list(spec.value_types)))
        for name, spec in specs.items()
    }


# ---------------------------------------------------------------- Init


def _python_value(value: pb.OptionValue) -> Any:
    which = value.WhichOneof("value")
    if which == "durationValue":
        # integer arithmetic: timedelta resolves microseconds, so round to the
        # nearest one without a detour through float
        return timedelta(microseconds=(value.durationValue + 500) // 1000)
    if which is None:
        # proto3 drops default scalars only inside the oneof if unset; treat as the
        # zero value of the declared type
        return {
            pb.BOOL: False,
            pb.INT: 0,
            pb.DOUBLE: 0.0,
            pb.STRING: "",
            pb.DURATION: timedelta(0),
        }[value.type]
    return getattr(value, which)


def _value_type_of(value: pb.OptionValue) -> int:
    which = value.WhichOneof("value")
    by_field = {
        "boolValue": pb.BOOL,
        "intValue": pb.INT,
        "doubleValue": pb.DOUBLE,
        "stringValue": pb.STRING,
        "durationValue": pb.DURATION,
    }
    return by_field[which] if which is not None else int(value.type)


def _describe_values(values: Iterable[pb.OptionValue]) -> str:
    return ", ".join(VALUE_TYPE_NAMES.get(_value_type_of(v), "?") for v in values)


def collect_options(
    specs: Mapping[str, OptionSpec], options: Iterable[pb.Option]
) -> dict[str, Any]:
    """Turn Init's typed option list into plain values keyed by field name.

    Checks what pydantic cannot see: unknown names, value counts and value types
    (they must match Info exactly, as Kapacitor itself insists), and options given
    twice that are not repeatable.
    """
    data: dict[str, Any] = {}
    problems: list[str] = []
    for option in options:
        spec = specs.get(option.name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            problems.append(f"unknown option {option.name!r} (known options: {known})")
            continue
        got = tuple(_value_type_of(v) for v in option.values)
        if got != spec.value_types:
            problems.append(
                f"option {option.name!r} expects {spec.signature()} "
                f"but got .{option.name}({_describe_values(option.values)})"
            )
            continue
        if spec.is_flag:
            item: Any = True
        else:
            values = [_python_value(v) for v in option.values]
            item = tuple(values) if spec.tuple_shaped else values[0]
        if spec.repeated:
            data.setdefault(spec.field, []).append(item)
        elif spec.field in data:
            problems.append(f"option {option.name!r} given more than once")
        else:
            data[spec.field] = item
    if problems:
        raise OptionsError("; ".join(problems))
    return data


def _format_validation_error(exc: pydantic.ValidationError, specs: Mapping[str, OptionSpec]) -> str:
    by_field = {spec.field: name for name, spec in specs.items()}
    parts = []
    for err in exc.errors(include_url=False):
        loc = err.get("loc", ())
        head = by_field.get(str(loc[0]), str(loc[0])) if loc else ""
        rest = "".join(f"[{p}]" for p in loc[1:])
        if err.get("type") == "missing":
            spec = specs.get(head)
            hint = f": {spec.signature()}" if spec else ""
            parts.append(f"option {head!r} is required{hint}")
            continue
        message = str(err["msg"]).removeprefix("Value error, ")
        if not head:
            # a cross-field check: its message names the options itself
            parts.append(message)
            continue
        parts.append(f"option {head!r}{rest}: {message} (got {_show(err.get('input'))})")
    return "; ".join(parts)


def _show(value: Any) -> str:
    """A value as a TICKscript user would write it."""
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    return repr(value)


def build_options(
    model: type[Options],
    specs: Mapping[str, OptionSpec],
    options: Iterable[pb.Option],
    defaults: Mapping[str, Any] | None = None,
) -> Options:
    """Validate Init's options (over configured defaults) into the handler's model.

    Raises :class:`OptionsError` with one readable sentence per problem; it becomes
    ``InitResponse.error``, which Kapacitor shows as the task's error.
    """
    data: dict[str, Any] = {}
    if defaults:
        for key, value in defaults.items():
            spec = specs.get(key)
            data[spec.field if spec else key] = value
    data.update(collect_options(specs, options))
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise OptionsError(_format_validation_error(exc, specs)) from None
