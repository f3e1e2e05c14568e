"""The ``udfd train`` trainers of udfd-ml: ``isolation_forest`` and ``classifier``.

udfd reads the data and writes the files; these fit and serialize. Forests are
grown ten steps at a time (``warm_start``), which gives the progress bar
something true to show, and every model is checked before it is written: the
ONNX file's answers are compared with scikit-learn's own on real rows, and the
summary says how far they agree.

Imports of numpy and scikit-learn happen inside :meth:`train`, so ``udfd train
--help`` and udfd's other commands never pay for them.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

from udfd.train.api import Dataset, Trained
from udfd.train.progress import Progress

from udfd_ml.requires import require

#: growth steps of a forest (each refits only the new trees)
STEPS = 10
#: rows the ONNX export is checked on against scikit-learn
CHECK_ROWS = 20_000


def _grow(model: Any, trees: int, rows: Any, labels: Any, progress: Progress, what: str) -> float:
    """Fit ``model`` (with warm_start) in steps up to ``trees`` trees; returns seconds."""
    progress.start(what, total=trees, unit="trees")
    step = max(1, trees // STEPS)
    grown = 0
    while grown < trees:
        grown = min(trees, grown + step)
        model.set_params(n_estimators=grown)
        if labels is None:
            model.fit(rows)
        else:
            model.fit(rows, labels)
        progress.update(grown)
    return progress.finish()


def _quantiles(values: Any) -> str:
    np = require("numpy")
    marks = np.percentile(values, [0, 50, 90, 99, 100])
    return "  ".join(
        f"{name} {value:.3f}"
        for name, value in zip(("min", "p50", "p90", "p99", "max"), marks, strict=True)
    )


def _sample(rows: Any, seed: int) -> Any:
    np = require("numpy")
    if len(rows) <= CHECK_ROWS:
        return rows
    pick = np.random.default_rng(seed).choice(len(rows), CHECK_ROWS, replace=False)
    return rows[np.sort(pick)]


def _joblib_bytes(model: Any) -> bytes:
    joblib = require("joblib", "udfd train --format joblib")
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def _forest_arguments(parser: argparse.ArgumentParser) -> None:
    """What every forest trainer takes."""
    parser.add_argument("--trees", type=int, default=100, help="number of trees (100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--format", choices=("onnx", "joblib"), default="onnx", help="onnx loads no code"
    )


class IsolationForestTrainer:
    handler = "isolation_forest"
    summary = "fit an Isolation Forest (unsupervised anomaly scores) on the --fields"
    needs_label = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _forest_arguments(parser)
        parser.add_argument(
            "--samples", type=int, default=256, help="points each tree grows from (256)"
        )
        parser.add_argument(
            "--contamination",
            default="auto",
            help="expected share of anomalies, which sets the threshold; 'auto' (the "
            "default) is the paper's: a score above 0.5",
        )

    def train(self, data: Dataset, args: argparse.Namespace, progress: Progress) -> Trained:
        np = require("numpy")
        ensemble = require("sklearn.ensemble")
        from udfd_ml.models.iforest_onnx import isolation_forest_to_onnx
        from udfd_ml.models.loaded import session

        contamination: float | None = None  # None: 'auto'
        if args.contamination != "auto":
            contamination = float(args.contamination)
            if not 0 < contamination <= 0.5:
                raise ValueError("--contamination must be 'auto' or in (0, 0.5]")
        if args.trees < 1 or args.samples < 2:
            raise ValueError("--trees must be >= 1 and --samples >= 2")
        rows = np.asarray(data.rows, dtype=np.float64)
        forest = ensemble.IsolationForest(
            max_samples=min(args.samples, len(rows)),
            contamination="auto",
            random_state=args.seed,
            warm_start=True,
        )
        fit_s = _grow(forest, args.trees, rows, None, progress, "fitting")
        started = time.perf_counter()
        # scores of the training rows through the compact ONNX graph (fast), then the
        # threshold: the paper's 0.5, or the quantile the contamination asks for
        scorer = session(isolation_forest_to_onnx(forest, data.features))
        (raw,) = scorer.run(None, {"X": rows.astype(np.float32)})
        scores = raw.reshape(-1).astype(np.float64)
        if contamination is None:
            threshold = float(-forest.offset_)
        else:
            threshold = float(np.percentile(scores, 100.0 * (1.0 - contamination)))
            forest.offset_ = -threshold  # what scikit-learn's own fit would have set
            forest.contamination = contamination
        model = isolation_forest_to_onnx(forest, data.features)
        check = _sample(rows, args.seed)
        (onnx_scores,) = session(model).run(None, {"X": check.astype(np.float32)})
        difference = float(np.max(np.abs(onnx_scores.reshape(-1) + forest.score_samples(check))))
        flagged = int((scores > threshold).sum())
        payload = model if args.format == "onnx" else _joblib_bytes(forest)
        return Trained(
            data=payload,
            suffix=".onnx" if args.format == "onnx" else ".joblib",
            summary=[
                ("fit", f"{fit_s:.2f}s ({args.trees} trees of {forest.max_samples_} points)"),
                ("contamination", "auto" if contamination is None else str(contamination)),
                ("threshold", f"{threshold:.4f} (anomaly when anomaly_score is above it)"),
                ("scores", _quantiles(scores)),
                (
                    "flagged",
                    f"{flagged:,} of {len(rows):,} training rows ({flagged / len(rows):.2%})",
                ),
                (
                    "check",
                    f"ONNX scores = scikit-learn's within {difference:.1e} on {len(check):,} "
                    f"rows ({time.perf_counter() - started:.2f}s)",
                ),
            ],
            tick_after=[
                "|alert()",
                '    .crit(lambda: "anomaly")',
                "    .message('{{ .Name }} {{ .Group }}: anomaly score "
                '{{ index .Fields "anomaly_score" }}\')',
            ],
        )


def _classes(labels: list[Any]) -> tuple[list[Any], str]:
    """Labels as one type scikit-learn and ONNX both keep: str or int."""
    if all(isinstance(v, str) for v in labels):
        return labels, "string"
    if all(isinstance(v, bool) for v in labels):
        return [int(v) for v in labels], "int (from bool)"
    if all(isinstance(v, int | float) and float(v).is_integer() for v in labels):
        return [int(v) for v in labels], "int"
    raise ValueError(
        "--label must hold classes: all strings, or all whole numbers (found fractional or "
        "mixed values)"
    )


class ClassifierTrainer:
    handler = "classifier"
    summary = "fit a random-forest classifier of --label from the --fields"
    needs_label = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _forest_arguments(parser)
        parser.add_argument("--max-depth", type=int, default=None, help="default: unlimited")
        parser.add_argument(
            "--test-fraction", type=float, default=0.2, help="rows held out for accuracy (0.2)"
        )

    def train(self, data: Dataset, args: argparse.Namespace, progress: Progress) -> Trained:
        np = require("numpy")
        ensemble = require("sklearn.ensemble")
        from udfd_ml.models.iforest_onnx import CLASSES, FEATURES, KIND, LABEL

        if not 0 <= args.test_fraction < 1:
            raise ValueError("--test-fraction must be in [0, 1)")
        labels, label_type = _classes(list(data.labels))
        rows = np.asarray(data.rows, dtype=np.float64)
        target = np.asarray(labels)
        order = np.random.default_rng(args.seed).permutation(len(rows))
        held = int(len(rows) * args.test_fraction)
        test, fit = order[:held], order[held:]
        if len(set(target[fit].tolist())) < 2:
            raise ValueError(f"--label {data.label}: the training rows hold fewer than two classes")
        model = ensemble.RandomForestClassifier(
            max_depth=args.max_depth, random_state=args.seed, warm_start=True
        )
        fit_s = _grow(model, args.trees, rows[fit], target[fit], progress, "fitting")
        check_rows = rows[test] if held else _sample(rows, args.seed)
        expected = model.predict(check_rows)
        accuracy = (
            f"{float((expected == target[test]).mean()):.2%} on {held:,} held-out rows"
            if held
            else "n/a (--test-fraction 0)"
        )
        classes = model.classes_.tolist()
        counts = {c: int((target == c).sum()) for c in classes}
        summary = [
            ("fit", f"{fit_s:.2f}s ({args.trees} trees on {len(fit):,} rows)"),
            (
                "label",
                f"{data.label} ({label_type}): "
                + ", ".join(f"{c} {n:,}" for c, n in counts.items()),
            ),
            ("accuracy", accuracy),
        ]
        if args.format == "joblib":
            return Trained(_joblib_bytes(model), ".joblib", summary=summary)
        from udfd_ml.models.classifier_onnx import classifier_to_onnx
        from udfd_ml.models.files import ModelBytes
        from udfd_ml.models.loaded import load_classifier

        payload = classifier_to_onnx(
            model,
            rows.shape[1],
            {
                KIND: "classifier",
                FEATURES: ",".join(data.features),
                CLASSES: ",".join(str(c) for c in classes),
                LABEL: data.label or "",
            },
        )
        # checked as the handler will serve it (ties resolved as scikit-learn does)
        served = load_classifier(ModelBytes(Path("model.onnx"), payload, "", "onnx"))
        predicted, _ = served.predict(check_rows, False)
        same = int((np.asarray(predicted) == expected).sum())
        summary.append(
            ("check", f"ONNX predictions = scikit-learn's on {same:,} of {len(check_rows):,} rows")
        )
        return Trained(payload, ".onnx", summary=summary)
