"""classifier: add a fitted estimator's predicted class (and its probability) to each point.

Any classifier works that comes as an ONNX file (``udfd train classifier`` writes
one, through skl2onnx) or as a pinned or trusted pickle of a fitted
scikit-learn estimator, which is then called exactly as scikit-learn calls it,
so the predictions are the estimator's own. The class keeps its type: a class
0/1 becomes an int field, ``'hot'`` a string field.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, model_validator
from udfd import (
    BatchHandler,
    BeginBatch,
    EndBatch,
    Flag,
    Handler,
    InitFailed,
    Output,
    Point,
    set_field,
)

from udfd_ml.models.features import (
    ModelOptions,
    feature_matrix,
    resolve_features,
    shared_model,
)
from udfd_ml.models.loaded import ClassifierModel
from udfd_ml.requires import require

np = require("numpy")
require("sklearn")  # the pickles it loads are scikit-learn's


class ClassifierOptions(ModelOptions):
    """Options of ``@classifier()`` and ``@classifier_batch()``."""

    #: ``.model('/var/lib/udfd/models/rooms.onnx')``: the fitted estimator ...
    model: str = Field(min_length=1)
    #: ``.classField('class')``: where the predicted class goes.
    class_field: str = Field("class", alias="classField", min_length=1)
    #: ``.probability()``: also add the predicted class's probability ...
    probability: Flag = False
    #: ... as this field.
    probability_field: str = Field("probability", alias="probabilityField", min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self.duplicate_fields()
        outputs = [self.class_field] + ([self.probability_field] if self.probability else [])
        if len(set(outputs)) != len(outputs):
            raise ValueError(".classField() and .probabilityField() must differ")
        for name in outputs:
            if name in self.field:
                raise ValueError(f"output field {name!r} would overwrite a feature")
        return self


def _python(value: Any) -> int | float | str | bool:
    """A class label as the field type it should be (numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, bool | int | float | str):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        return _python(item())
    return str(value)


class _Predictor:
    def __init__(self, options: ClassifierOptions, handler: Handler[Any]) -> None:
        self.options = options
        self.context = handler.context
        self.model: ClassifierModel = shared_model(
            self.context,
            "classifier",
            options.model,
            options.sha256,
            options.trusted_dirs,
            options.task_pins,
        )
        self.features = resolve_features(options.field, self.model)
        if options.probability and not self.model.has_probability:
            raise InitFailed(
                f"model {self.model.label!r} gives no probabilities; drop .probability()"
            )

    def predict(self, points: list[Point]) -> list[Point]:
        matrix, kept = feature_matrix(points, self.features, self.context.drop)
        if not kept:
            return []
        options = self.options
        labels, probability = self.model.predict(matrix, options.probability)
        class_field = options.class_field
        for point, label in zip(kept, labels, strict=True):
            set_field(point, class_field, _python(label))
        if probability is not None:
            for point, p in zip(kept, probability.tolist(), strict=True):
                set_field(point, options.probability_field, float(p))
        return kept


class Classifier(Handler[ClassifierOptions]):
    """``@classifier()``: stream in, stream out, predicted a chunk at a time."""

    def init(self) -> None:
        self._predictor = _Predictor(self.options, self)

    def points(self, points: list[Point]) -> Output:
        return self._predictor.predict(points)


class ClassifierBatch(BatchHandler[ClassifierOptions]):
    """``@classifier_batch()``: each batch predicted in one call, framed as it came."""

    def init(self) -> None:
        self._predictor = _Predictor(self.options, self)

    def process_batch(self, points: list[Point], begin: BeginBatch, end: EndBatch) -> list[Point]:
        return self._predictor.predict(points)
