"""From points to a feature matrix, and from a model file to a shared loaded model.

Both model handlers need the same two steps, with the same words for the same
problems: which fields are the features (the task's ``.field()``s, or the names
the model file was trained with, which must then agree in order), and how one
point that lacks a feature is dropped without losing its neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from udfd import (
    ConfigOnly,
    Context,
    FieldTypeError,
    InitFailed,
    Options,
    Point,
    PointError,
    get_number,
)

from udfd_ml.models.files import normalise_sha256, read_model
from udfd_ml.models.loaded import (
    AnomalyModel,
    ClassifierModel,
    load_anomaly_model,
    load_classifier,
)
from udfd_ml.requires import require

np = require("numpy")

Kind = Literal["anomaly", "classifier"]


class ModelOptions(Options):
    """What every handler that reads a model file takes (its own options add the rest)."""

    #: ``.field('temperature')``, repeatable, in order: the features (default: the model's).
    field: list[str] = Field(default_factory=list)
    #: ``.sha256('…')``: the model file's content, pinned (required for pickles outside
    #: trusted_dirs).
    sha256: str | None = None
    #: config only: directories whose pickles are trusted without a pin ...
    trusted_dirs: Annotated[list[str], ConfigOnly] = Field(default_factory=list)
    #: ... and whether a TICKscript's .sha256() may authorise a pickle (false: only a pin
    #: in the config does; whoever may define tasks could otherwise load any pickle
    #: udfd can read).
    task_pins: Annotated[bool, ConfigOnly] = True

    @field_validator("field", mode="before")
    @classmethod
    def _one_field(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return None if value is None else normalise_sha256(value)

    def duplicate_fields(self) -> None:
        if len(set(self.field)) != len(self.field):
            raise ValueError(".field() names the same field twice")


def shared_model(
    context: Context,
    kind: Kind,
    name: str,
    sha256: str | None,
    trusted_dirs: Sequence[str],
    task_pins: bool = True,
) -> Any:
    """The model in file ``name``, loaded once per worker for all connections.

    The file is read and checked on every call (a few milliseconds for a large
    model) because the key is its content: a task started after the file was
    replaced gets the new model, and a pin is checked against what is really
    there. Parsing, the slow part, happens once per content and worker.
    """
    configured = context.config_options.get("sha256")
    try:
        pin_from_config = configured is not None and normalise_sha256(str(configured)) == sha256
    except ValueError:
        pin_from_config = False
    model = read_model(
        name,
        sha256=sha256,
        trusted_dirs=trusted_dirs,
        pin_from_config=pin_from_config,
        task_pins=task_pins,
    )
    load: Callable[[], Any] = (
        (lambda: load_anomaly_model(model))
        if kind == "anomaly"
        else (lambda: load_classifier(model))
    )
    return context.shared.get(
        (kind, model.sha256),
        load,
        label=f"{kind} {model.path} sha256:{model.sha256[:16]}",
        replaces=(kind, str(model.path)),  # a new version of a file retires the old one
    )


def resolve_features(fields: Sequence[str], model: AnomalyModel | ClassifierModel) -> list[str]:
    """The feature fields, in the order the model wants them."""
    known = model.features
    if not fields:
        if not known:
            raise InitFailed(
                f"model {model.label!r} does not name its features: give them in order, "
                ".field('a').field('b')"
            )
        return list(known)
    if known and tuple(fields) != tuple(known):
        raise InitFailed(
            f".field() gives {', '.join(fields)}, but model {model.label!r} was trained on "
            f"{', '.join(known)} (in this order)"
        )
    if model.width is not None and len(fields) != model.width:
        raise InitFailed(
            f"model {model.label!r} takes {model.width} features; .field() gives {len(fields)}"
        )
    return list(fields)


def feature_row(point: Point, names: Sequence[str]) -> list[float]:
    row = [get_number(point, name) for name in names]
    for name, value in zip(names, row, strict=True):
        if not math.isfinite(value):
            raise FieldTypeError(f"field {name!r} is {value}, which a model cannot score")
    return row


def feature_matrix(
    points: Sequence[Point], names: Sequence[str], drop: Callable[[Point, Exception], None]
) -> tuple[Any, list[Point]]:
    """A row per usable point, and those points; the others go to ``drop``.

    The common case, every feature a float field, costs one ``get`` per feature;
    ints, missing fields and wrong types take the careful path, and non-finite
    values are found afterwards, for the whole matrix at once.
    """
    rows: list[list[float]] = []
    kept: list[Point] = []
    for point in points:
        get = point.fieldsDouble.get
        row = [get(name) for name in names]
        if None in row:
            try:
                row = [get_number(point, name) for name in names]
            except PointError as exc:
                drop(point, exc)
                continue
        rows.append(row)  # type: ignore[arg-type]
        kept.append(point)
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        for i in np.nonzero(~finite)[0].tolist():
            try:
                feature_row(kept[i], names)
            except PointError as exc:
                drop(kept[i], exc)
        matrix = matrix[finite]
        kept = [p for p, ok in zip(kept, finite.tolist(), strict=True) if ok]
    return matrix, kept
