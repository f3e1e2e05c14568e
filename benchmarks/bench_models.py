"""How long one scoring call takes, by format: the measurement behind udfd-ml's model formats.

For an Isolation Forest (3 features, 100 trees, fitted on 4,000 points) it times
scikit-learn's own ``score_samples``, skl2onnx's ONNX graph, and udfd's compact
ONNX graph (one ``TreeEnsembleRegressor``, ``udfd_ml.models.iforest_onnx``), each
on chunks of 1 to 10,000 rows, single-threaded, and checks that every format
gives scikit-learn's scores. For a random-forest classifier it times
scikit-learn's ``predict_proba`` against skl2onnx's graph. Nothing is asserted
about the times; the agreement of the answers is checked.

    python benchmarks/bench_models.py            # best of 5 per cell
    python benchmarks/bench_models.py --short    # what CI prints
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from udfd_ml.models.classifier_onnx import OPSETS, classifier_to_onnx
from udfd_ml.models.files import ModelBytes
from udfd_ml.models.iforest_onnx import isolation_forest_to_onnx
from udfd_ml.models.loaded import load_classifier, session


def best_ms(call: Callable[[], Any], repeat: int, budget: float) -> float:
    """The fastest of ``repeat`` timings, each of as many calls as fit in ``budget`` s."""
    started = time.perf_counter()
    call()
    once = max(time.perf_counter() - started, 1e-6)
    calls = max(1, int(budget / once))
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="fewer repeats, smaller budget")
    args = parser.parse_args()
    repeat, budget = (2, 0.05) if args.short else (5, 0.3)
    rng = np.random.default_rng(0)
    train = rng.normal(size=(4000, 3))
    forest = IsolationForest(n_estimators=100, random_state=0).fit(train)
    skl2onnx_session = session(
        to_onnx(forest, train[:1].astype(np.float32), target_opset=OPSETS).SerializeToString()
    )
    compact = session(isolation_forest_to_onnx(forest, ["a", "b", "c"]))
    print("Isolation Forest, 3 features, 100 trees: ms per call (µs per row), one thread")
    head = f"{'rows':>7} {'scikit-learn':>20} {'skl2onnx ONNX':>20} {'udfd compact ONNX':>20}"
    print(f"{head}  max |Δscore|")
    for n in (1, 10, 100, 1000, 10_000):
        rows = rng.normal(size=(n, 3))
        rows32 = rows.astype(np.float32)
        reference = forest.score_samples(rows)
        decision = skl2onnx_session.run(None, {"X": rows32})[1].reshape(-1)
        ours = compact.run(None, {"X": rows32})[0].reshape(-1)
        worst = max(
            float(np.max(np.abs(decision + forest.offset_ - reference))),
            float(np.max(np.abs(-ours - reference))),
        )
        assert worst < 1e-5, f"a format disagrees with scikit-learn by {worst}"
        cells = []
        for call in (
            lambda rows=rows: forest.score_samples(rows),
            lambda rows32=rows32: skl2onnx_session.run(None, {"X": rows32}),
            lambda rows32=rows32: compact.run(None, {"X": rows32}),
        ):
            ms = best_ms(call, repeat, budget)
            cells.append(f"{ms:9.3f} ({ms * 1000 / n:7.2f})")
        print(f"{n:>7} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20}  {worst:.1e}")

    labels = (train[:, 0] + train[:, 1] > 0.3).astype(int)
    classifier = RandomForestClassifier(n_estimators=50, random_state=0).fit(train, labels)
    converted = classifier_to_onnx(classifier, 3)
    onnx_classifier = session(converted)
    served = load_classifier(ModelBytes(Path("bench.onnx"), converted, "", "onnx"))
    print("\nRandom forest classifier, 3 features, 50 trees: ms per call (µs per row)")
    print(f"{'rows':>7} {'scikit-learn':>20} {'skl2onnx ONNX':>20}  same: ONNX label, as served")
    for n in (1, 100, 10_000, 200_000):
        rows = rng.normal(size=(n, 3))
        rows32 = rows.astype(np.float32)
        expected = classifier.predict(rows)
        raw_label = int((onnx_classifier.run(None, {"X": rows32})[0] == expected).sum())
        as_served = int((np.asarray(served.predict(rows, False)[0]) == expected).sum())
        cells = []
        for call in (
            lambda rows=rows: classifier.predict_proba(rows),
            lambda rows32=rows32: onnx_classifier.run(None, {"X": rows32}),
        ):
            ms = best_ms(call, repeat, budget)
            cells.append(f"{ms:9.3f} ({ms * 1000 / n:7.2f})")
        print(f"{n:>7} {cells[0]:>20} {cells[1]:>20}  {raw_label}/{n}, {as_served}/{n}")


if __name__ == "__main__":
    main()
