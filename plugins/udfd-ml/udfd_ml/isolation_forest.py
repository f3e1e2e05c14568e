"""isolation_forest: flag anomalous points with an Isolation Forest.

Each point gets ``anomaly_score``, the score of Liu, Ting and Zhou (2008) in
(0, 1]: about 0.5 and below is ordinary, close to 1 is easy to isolate, i.e.
anomalous. ``anomaly`` is ``score > threshold``, the threshold being the fit's
own (0.5 with scikit-learn's default ``contamination='auto'``, else the score
quantile the contamination implies) unless ``.threshold()`` sets one.

The model comes from one of two places:

* ``.model(FILE)``: a model file (``udfd train isolation_forest`` writes one),
  loaded once per worker and shared by every task naming the same content; see
  :mod:`udfd_ml.models.files` for which files are trusted.
* ``.warmup(N)``: no file; each group's first N points train that group's own
  forest, after which its points are scored. The training points themselves are
  not emitted (there is nothing to score them with yet; an alert downstream
  would see points without the fields). The snapshot keeps each group's
  training points, and a restore fits the same forest again (same points, same
  seed), so a restarted task scores exactly as before.

Scoring is one call per chunk of the stream (``points()``) or per batch.
"""

from __future__ import annotations

import time
from typing import Any, Self

from pydantic import Field, model_validator
from udfd import (
    BatchHandler,
    BeginBatch,
    Context,
    EndBatch,
    Flag,
    GroupState,
    Handler,
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
from udfd_ml.models.loaded import AnomalyModel, anomaly_model_from_forest
from udfd_ml.requires import require

np = require("numpy")
ensemble = require("sklearn.ensemble")


class IsolationForestOptions(ModelOptions):
    """Options of ``@isolation_forest()`` and ``@isolation_forest_batch()``."""

    #: ``.model('/var/lib/udfd/models/sensors.onnx')``: score with this model file ...
    model: str | None = Field(None, min_length=1)
    #: ``.warmup(1000)``: or fit each group's own forest on its first N points.
    warmup: int | None = Field(None, ge=8, le=100_000)
    #: warm-up: number of trees ...
    trees: int = Field(100, ge=1, le=1000)
    #: ... points each tree is grown from (scikit-learn's max_samples) ...
    samples: int = Field(256, ge=2, le=100_000)
    #: ... expected share of anomalies, which sets the threshold (default: 'auto', 0.5) ...
    contamination: float | None = Field(None, gt=0.0, le=0.5)
    #: ... and the random seed (a restore refits with it: same points, same forest).
    seed: int = Field(0, ge=0, lt=2**32)
    #: ``.threshold(0.6)``: anomaly when the score is above this (default: the model's).
    threshold: float | None = Field(None, gt=0.0, lt=1.0)
    #: ``.anomaliesOnly()``: emit only the anomalous points.
    anomalies_only: Flag = Field(False, alias="anomaliesOnly")
    #: ``.scoreField('anomaly_score')`` and ``.anomalyField('anomaly')``: output names.
    score_field: str = Field("anomaly_score", alias="scoreField", min_length=1)
    anomaly_field: str = Field("anomaly", alias="anomalyField", min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.model is None) == (self.warmup is None):
            raise ValueError(
                "give either .model('file.onnx') or .warmup(N) (fit on each group's first N "
                "points), not both and not neither"
            )
        if self.model is None and self.sha256 is not None:
            raise ValueError(".sha256() pins a .model() file; there is none")
        if self.warmup is not None and not self.field:
            raise ValueError(".warmup() needs the features: .field('a').field('b')")
        if self.model is not None and self.contamination is not None:
            raise ValueError(
                ".contamination() sets the threshold of a warm-up fit; a model file has its "
                "own, which .threshold() overrides"
            )
        self.duplicate_fields()
        if self.score_field == self.anomaly_field:
            raise ValueError(".scoreField() and .anomalyField() must differ")
        for name in (self.score_field, self.anomaly_field):
            if name in self.field:
                raise ValueError(f"output field {name!r} would overwrite a feature")
        return self


class _Group:
    """One group's warm-up: the training points so far, then its fitted model."""

    __slots__ = ("model", "sample")

    def __init__(self, sample: list[list[float]] | None = None) -> None:
        self.sample: list[list[float]] = sample or []
        self.model: AnomalyModel | None = None


class _Detector:
    """The scoring shared by the stream and the batch handler."""

    def __init__(self, options: IsolationForestOptions, context: Context) -> None:
        self.options = options
        self.context = context
        self.features: list[str] = list(options.field)
        self.model: AnomalyModel | None = None
        self.groups: GroupState[_Group] = GroupState(
            _Group, dump=lambda g: g.sample, load=self._restored
        )

    def load(self) -> None:
        """Init: get the shared model (from a handler thread, never the event loop)."""
        options = self.options
        if options.model is None:
            return
        self.model = shared_model(
            self.context,
            "anomaly",
            options.model,
            options.sha256,
            options.trusted_dirs,
            options.task_pins,
        )
        self.features = resolve_features(options.field, self.model)

    def _restored(self, sample: Any) -> _Group:
        group = _Group([[float(v) for v in row] for row in sample])
        if self.options.warmup is not None and len(group.sample) >= self.options.warmup:
            group.model = self._fit(group.sample, "restored")
        return group

    def _fit(self, sample: list[list[float]], why: str) -> AnomalyModel:
        options = self.options
        started = time.perf_counter()
        forest = ensemble.IsolationForest(
            n_estimators=options.trees,
            max_samples=min(options.samples, len(sample)),
            contamination="auto" if options.contamination is None else options.contamination,
            random_state=options.seed,
        ).fit(np.asarray(sample, dtype=np.float64))
        model = anomaly_model_from_forest(forest, self.features, "warm-up")
        self.context.progressed()  # a restore or a chunk may fit many groups in one call
        self.context.logger.info(
            "isolation_forest: %s forest fitted on %d points in %.2fs (threshold %.4f)",
            why,
            len(sample),
            time.perf_counter() - started,
            model.threshold,
        )
        return model

    def score(self, points: list[Point]) -> list[Point]:
        matrix, kept = feature_matrix(points, self.features, self.context.drop)
        if not kept:
            return []
        if self.model is not None:
            return self._emit(kept, self.model.score(matrix), self.model.threshold)
        return self._score_warm(matrix, kept)

    def _score_warm(self, matrix: Any, kept: list[Point]) -> list[Point]:
        """Warm-up mode: each group its own model; training points are held back."""
        warmup = self.options.warmup
        assert warmup is not None
        rows_by_group: dict[str, list[int]] = {}
        for i, point in enumerate(kept):
            group = self.groups[point.group]
            if group.model is not None:
                rows_by_group.setdefault(point.group, []).append(i)
                continue
            group.sample.append(matrix[i].tolist())
            if len(group.sample) >= warmup:
                group.model = self._fit(group.sample, f"group {point.group!r}:")
        scores = np.empty(len(kept), dtype=np.float64)
        thresholds = np.empty(len(kept), dtype=np.float64)
        scored = np.zeros(len(kept), dtype=bool)
        for name, rows in rows_by_group.items():
            model = self.groups[name].model
            assert model is not None
            index = np.asarray(rows)
            scores[index] = model.score(matrix[index])
            thresholds[index] = model.threshold
            scored[index] = True
        chosen = [p for p, ok in zip(kept, scored.tolist(), strict=True) if ok]
        return self._emit(chosen, scores[scored], thresholds[scored])

    def _emit(self, points: list[Point], scores: Any, thresholds: Any) -> list[Point]:
        options = self.options
        threshold = options.threshold if options.threshold is not None else thresholds
        flags = (scores > threshold).tolist()
        score_field, anomaly_field = options.score_field, options.anomaly_field
        out = []
        for point, score, flag in zip(points, scores.tolist(), flags, strict=True):
            if options.anomalies_only and not flag:
                continue
            set_field(point, score_field, score)
            set_field(point, anomaly_field, flag)
            out.append(point)
        return out


class IsolationForest(Handler[IsolationForestOptions]):
    """``@isolation_forest()``: stream in, stream out, scored a chunk at a time."""

    def init(self) -> None:
        self._detector = _Detector(self.options, self.context)
        self.groups = self._detector.groups  # a GroupState attribute: in the snapshot
        self._detector.load()

    def points(self, points: list[Point]) -> Output:
        return self._detector.score(points)


class IsolationForestBatch(BatchHandler[IsolationForestOptions]):
    """``@isolation_forest_batch()``: each batch scored in one call, framed as it came."""

    def init(self) -> None:
        self._detector = _Detector(self.options, self.context)
        self.groups = self._detector.groups
        self._detector.load()

    def process_batch(self, points: list[Point], begin: BeginBatch, end: EndBatch) -> list[Point]:
        return self._detector.score(points)
