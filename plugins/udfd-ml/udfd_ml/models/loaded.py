"""Loaded models behind one small interface each: a matrix in, arrays out.

The handlers never care whether a model came from ONNX or from a pinned pickle;
they see an :class:`AnomalyModel` or a :class:`ClassifierModel`. Every model
scores a whole chunk or batch per call (a row per point), which is where ONNX
Runtime and scikit-learn are fast; per-point calls would cost milliseconds each
in scikit-learn.

Each ONNX session runs on one thread: udfd's isolation promise is that one
function cannot take the CPU from another, and a session that spread over every
core would do exactly that.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from udfd_ml.models.files import ModelBytes, ModelRefused
from udfd_ml.models.iforest_onnx import (
    FEATURES,
    KIND,
    THRESHOLD,
    isolation_forest_to_onnx,
)
from udfd_ml.requires import require

np = require("numpy")
onnx = require("onnx")
ort = require("onnxruntime")

#: probabilities this close to the highest count as a tie (float32 rounding of a sum
#: of tree votes is about 1e-7; distinct vote shares of any realistic forest differ by
#: far more)
TIE = 1e-6


def session(data: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _input_of(sess: Any, path: str) -> tuple[str, Any, int | None]:
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ModelRefused(f"model {path!r} has {len(inputs)} inputs; udfd feeds one matrix")
    (first,) = inputs
    dtype = np.float64 if first.type == "tensor(double)" else np.float32
    if first.type not in ("tensor(float)", "tensor(double)"):
        raise ModelRefused(f"model {path!r} takes {first.type}, not a float matrix")
    width = first.shape[1] if len(first.shape) == 2 and isinstance(first.shape[1], int) else None
    return first.name, dtype, width


def _open_onnx(data: bytes, label: str) -> tuple[Any, dict[str, str]]:
    """A session on an ONNX model, and the model's metadata; a bad file is ModelRefused."""
    try:
        sess = session(data)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelRefused(f"model {label!r} is not a valid ONNX model: {exc}") from None
    return sess, dict(sess.get_modelmeta().custom_metadata_map)


def _unpickle(model: ModelBytes) -> Any:
    joblib = require("joblib", "pickled models")
    return joblib.load(io.BytesIO(model.data))  # trust was checked by read_model


def _feature_names(estimator: Any) -> tuple[str, ...] | None:
    names = getattr(estimator, "feature_names_in_", None)
    return None if names is None else tuple(str(n) for n in names)


class AnomalyModel:
    """Scores in (0, 1], higher is more anomalous; ``threshold`` is the fit's own cut."""

    def __init__(
        self,
        label: str,
        features: tuple[str, ...] | None,
        width: int | None,
        threshold: float,
        onnx_session: Any = None,
        estimator: Any = None,
    ) -> None:
        self.label = label
        self.features = features
        self.width = width
        self.threshold = threshold
        self._session = onnx_session
        self._estimator = estimator
        if onnx_session is not None:
            self._input, self._dtype, _ = _input_of(onnx_session, label)

    def score(self, rows: Any) -> Any:
        if self._session is not None:
            (scores,) = self._session.run(None, {self._input: rows.astype(self._dtype, copy=False)})
            return scores.reshape(-1).astype(np.float64)
        return -np.asarray(self._estimator.score_samples(rows), dtype=np.float64)


def anomaly_model_from_forest(forest: Any, features: Sequence[str], label: str) -> AnomalyModel:
    """A fitted IsolationForest, scored through udfd's compact ONNX graph."""
    data = isolation_forest_to_onnx(forest, features)
    return AnomalyModel(
        label, tuple(features), len(features), float(-forest.offset_), session(data)
    )


def load_anomaly_model(model: ModelBytes) -> AnomalyModel:
    label = str(model.path)
    if model.format == "onnx":
        sess, meta = _open_onnx(model.data, label)
        if meta.get(KIND) != "isolation_forest" or THRESHOLD not in meta:
            raise ModelRefused(
                f"model {label!r} is not an anomaly model written by udfd (it lacks the "
                f"{KIND}/{THRESHOLD} metadata): train it with `udfd train isolation_forest`, "
                "or export a fitted IsolationForest with udfd_ml.models.isolation_forest_to_onnx"
            )
        features = tuple(meta[FEATURES].split(",")) if meta.get(FEATURES) else None
        _, _, width = _input_of(sess, label)
        return AnomalyModel(label, features, width, float(meta[THRESHOLD]), onnx_session=sess)
    estimator = _unpickle(model)
    if not hasattr(estimator, "score_samples") or not hasattr(estimator, "offset_"):
        raise ModelRefused(
            f"model {label!r} holds a {type(estimator).__name__}, which has no fitted "
            "score_samples/offset_ (an IsolationForest, or another fitted outlier detector)"
        )
    features = _feature_names(estimator)
    width = getattr(estimator, "n_features_in_", None)
    if type(estimator).__name__ == "IsolationForest":
        # the same scores, without scikit-learn's milliseconds per call
        names = features or tuple(f"x{i}" for i in range(int(estimator.n_features_in_)))
        converted = anomaly_model_from_forest(estimator, names, label)
        converted.features = features
        return converted
    return AnomalyModel(label, features, width, float(-estimator.offset_), estimator=estimator)


def onnx_classes(data: bytes) -> list[Any] | None:
    """The classes of a tree-ensemble ONNX classifier, in its probability columns' order.

    Only tree ensembles: their probabilities are vote shares, whose exact ties are
    real, and re-deriving the class from them is what scikit-learn does. Other
    models keep the label their graph computes.
    """
    graph = onnx.load_from_string(data).graph
    found: list[list[Any]] = []
    for node in graph.node:
        if node.op_type != "TreeEnsembleClassifier":
            continue
        for attribute in node.attribute:
            if attribute.name == "classlabels_int64s":
                found.append(list(attribute.ints))
            elif attribute.name == "classlabels_strings":
                found.append([s.decode() for s in attribute.strings])
    return found[0] if len(found) == 1 else None


class ClassifierModel:
    """Predicted classes, and each one's probability when the model has them.

    For an ONNX model whose classes are known, the class is taken from the
    probabilities as scikit-learn takes it, the first of the most probable classes:
    a forest with an even number of trees often has exact ties, which ONNX's float32
    sums break at random (measured: 330 of 200,000 rows of a 50-tree forest came out
    as the other class until ties were resolved this way).
    """

    def __init__(
        self,
        label: str,
        features: tuple[str, ...] | None,
        width: int | None,
        onnx_session: Any = None,
        estimator: Any = None,
        classes: list[Any] | None = None,
    ) -> None:
        self.label = label
        self.features = features
        self.width = width
        self._session = onnx_session
        self._estimator = estimator
        self._classes = classes
        self.has_probability = (
            hasattr(estimator, "predict_proba")
            if estimator is not None
            else len(onnx_session.get_outputs()) > 1
        )
        if onnx_session is not None:
            self._input, self._dtype, _ = _input_of(onnx_session, label)

    def predict(self, rows: Any, with_probability: bool) -> tuple[list[Any], Any]:
        """Classes as Python values, and their probabilities (or None)."""
        if self._session is not None:
            outputs = self._session.run(None, {self._input: rows.astype(self._dtype, copy=False)})
            labels = np.asarray(outputs[0]).reshape(-1).tolist()
            if len(outputs) < 2:
                return labels, None
            raw = outputs[1]
            classes: list[Any] | None
            if isinstance(raw, list):  # skl2onnx's default ZipMap: a dict per row
                keys = list(raw[0]) if raw else []
                matrix = np.array([[row[k] for k in keys] for row in raw], dtype=np.float64)
                classes = keys if self._classes is not None else None
            else:
                matrix = np.asarray(raw, dtype=np.float64).reshape(len(labels), -1)
                classes = self._classes
            best = matrix.max(axis=1) if len(labels) else np.zeros(0)
            if classes is not None and len(classes) == matrix.shape[1] and len(labels):
                first = np.argmax(matrix >= (best - TIE)[:, None], axis=1)
                labels = [classes[i] for i in first.tolist()]
                best = matrix[np.arange(len(labels)), first]  # the chosen class's own
            return labels, (best if with_probability else None)
        labels = np.asarray(self._estimator.predict(rows)).tolist()
        probability = None
        if with_probability and self.has_probability:
            probability = np.asarray(self._estimator.predict_proba(rows)).max(axis=1)
        return labels, probability


def load_classifier(model: ModelBytes) -> ClassifierModel:
    label = str(model.path)
    if model.format == "onnx":
        sess, meta = _open_onnx(model.data, label)
        features = tuple(meta[FEATURES].split(",")) if meta.get(FEATURES) else None
        if meta.get(KIND) not in (None, "classifier"):
            raise ModelRefused(f"model {label!r} is a {meta[KIND]} model, not a classifier")
        _, _, width = _input_of(sess, label)
        return ClassifierModel(
            label, features, width, onnx_session=sess, classes=onnx_classes(model.data)
        )
    estimator = _unpickle(model)
    if not hasattr(estimator, "predict"):
        raise ModelRefused(
            f"model {label!r} holds a {type(estimator).__name__}, which has no predict()"
        )
    return ClassifierModel(
        label,
        _feature_names(estimator),
        getattr(estimator, "n_features_in_", None),
        estimator=estimator,
    )
