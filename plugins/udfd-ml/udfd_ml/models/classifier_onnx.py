"""A fitted scikit-learn classifier as ONNX, the way udfd serves it.

One place for the conversion choices: float32 input (scikit-learn's trees compare
float32 values too), probabilities as a plain tensor rather than skl2onnx's
default list of dicts (ZipMap), and the opsets every recent ONNX Runtime reads.
``udfd train classifier``, the tests and the benchmarks all convert through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udfd_ml.requires import require

OPSETS = {"": 17, "ai.onnx.ml": 3}


def classifier_to_onnx(
    estimator: Any, n_features: int, metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialize a fitted classifier; ``metadata`` goes into the file's properties."""
    np = require("numpy")
    onnx = require("onnx")
    skl2onnx = require("skl2onnx")
    converted = skl2onnx.to_onnx(
        estimator,
        np.zeros((1, n_features), dtype=np.float32),
        options={id(estimator): {"zipmap": False}},
        target_opset=OPSETS,
    )
    if metadata:
        onnx.helper.set_model_props(converted, dict(metadata))
    data: bytes = converted.SerializeToString()
    return data
