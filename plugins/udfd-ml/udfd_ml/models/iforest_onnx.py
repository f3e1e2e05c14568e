"""A fitted Isolation Forest as a compact ONNX graph: one tree-ensemble operator.

Why not skl2onnx's converter: its Isolation Forest graph computes the path
lengths with a dozen generic operators per call, and measured here it scores
about three times slower than scikit-learn itself on chunks of 1,000 points
(``benchmarks/bench_models.py``). The anomaly score of Liu et al. only needs
the mean over the trees of "depth of the leaf a point lands in, plus the
expected depth of the points that leaf still held", which is exactly what ONNX's
``TreeEnsembleRegressor`` computes with ``aggregate_function=AVERAGE`` when each
leaf's weight is that sum. Two elementwise operators turn it into the score:

    score = 2 ** (-mean_path_length / c(max_samples)) = exp(mean * -ln 2 / c(max_samples))

The thresholds are the same comparisons scikit-learn makes: its trees compare
float32 feature values with float64 thresholds, and here each threshold is the
largest float32 not above the float64 one, so ``x32 <= t32`` holds exactly when
``x32 <= t64`` does; a point lands in the same leaf in both.

The file carries what scoring needs besides the graph, as ONNX metadata: the
feature names in order and the threshold the fit chose (``-offset_``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from udfd_ml.requires import require

np = require("numpy")
onnx = require("onnx")

#: metadata keys udfd writes into (and reads from) its ONNX files
KIND = "udfd.kind"
FEATURES = "udfd.features"
THRESHOLD = "udfd.threshold"
CLASSES = "udfd.classes"
LABEL = "udfd.label"
SCORE_OUTPUT = "anomaly_score"


def average_path_length(n: Any) -> Any:
    """c(n): the mean depth of an unsuccessful search in a binary tree of n points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _float32_at_most(values: Any) -> Any:
    down = values.astype(np.float32)
    above = down.astype(np.float64) > values
    down[above] = np.nextafter(down[above], np.float32(-np.inf))
    return down


def _leaf_depths(left: Any, right: Any) -> Any:
    depth = np.zeros(len(left), dtype=np.float64)
    for node in range(len(left)):  # parents come before their children in sklearn's arrays
        if left[node] != -1:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    return depth


def isolation_forest_to_onnx(forest: Any, features: Sequence[str]) -> bytes:
    """Serialize a fitted ``sklearn.ensemble.IsolationForest`` as udfd's compact ONNX model."""
    helper = onnx.helper
    n_features = int(forest.n_features_in_)
    if len(features) != n_features:
        raise ValueError(f"the forest was fitted on {n_features} features, not {len(features)}")
    attrs: dict[str, list[Any]] = {
        key: []
        for key in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_values",
            "nodes_modes",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "target_treeids",
            "target_nodeids",
            "target_weights",
        )
    }
    for tree_id, (estimator, subset) in enumerate(
        zip(forest.estimators_, forest.estimators_features_, strict=True)
    ):
        tree = estimator.tree_
        left, right = tree.children_left, tree.children_right
        leaf = left == -1
        count = int(tree.node_count)
        subset = np.asarray(subset)
        attrs["nodes_treeids"].extend([tree_id] * count)
        attrs["nodes_nodeids"].extend(range(count))
        attrs["nodes_featureids"].extend(
            np.where(leaf, 0, subset[np.where(leaf, 0, tree.feature)]).tolist()
        )
        attrs["nodes_values"].extend(np.where(leaf, 0.0, _float32_at_most(tree.threshold)).tolist())
        attrs["nodes_modes"].extend(np.where(leaf, "LEAF", "BRANCH_LEQ").tolist())
        attrs["nodes_truenodeids"].extend(np.where(leaf, 0, left).tolist())
        attrs["nodes_falsenodeids"].extend(np.where(leaf, 0, right).tolist())
        leaves = np.nonzero(leaf)[0]
        weights = _leaf_depths(left, right)[leaves] + average_path_length(
            tree.n_node_samples[leaves]
        )
        attrs["target_treeids"].extend([tree_id] * len(leaves))
        attrs["target_nodeids"].extend(leaves.tolist())
        attrs["target_weights"].extend(weights.tolist())
    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        ["X"],
        ["path_length"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="AVERAGE",
        post_transform="NONE",
        target_ids=[0] * len(attrs["target_nodeids"]),
        **attrs,
    )
    c_max = float(average_path_length([forest.max_samples_])[0])
    factor = helper.make_tensor("factor", onnx.TensorProto.FLOAT, [1], [-math.log(2.0) / c_max])
    graph = helper.make_graph(
        [
            ensemble,
            helper.make_node("Mul", ["path_length", "factor"], ["exponent"]),
            helper.make_node("Exp", ["exponent"], [SCORE_OUTPUT]),
        ],
        "udfd_isolation_forest",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(SCORE_OUTPUT, onnx.TensorProto.FLOAT, [None, 1])],
        initializer=[factor],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="udfd",
    )
    model.ir_version = 8  # what onnxruntime releases of the last years all read
    helper.set_model_props(
        model,
        {
            KIND: "isolation_forest",
            FEATURES: ",".join(features),
            THRESHOLD: repr(float(-forest.offset_)),
        },
    )
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
