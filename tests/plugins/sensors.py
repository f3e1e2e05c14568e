"""Generated sensor data with known anomalies (fixed seeds), and models fitted on it.

One measurement, one tag, three float fields, as in the deployments udfd-ml was
made for. Normal readings are correlated (humidity falls as temperature rises);
an anomaly is a faulty reading that moves two of the three values 4 to 8
standard deviations away, which a person looking at the plots would flag too.

(A single value far out of range is a job for ``threshold``, not for an
Isolation Forest: its splits are drawn within the training range, so every
point beyond it lands in the same leaf as the most extreme training point and
scores no higher. Measured here: one value 6 to 10 sigma out is found 7% of the
time at a 0.5% contamination, two values 4 to 8 sigma out 100%.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from udfd import make_point
from udfd.protocol.proto import udf_pb2 as pb

FEATURES = ["temperature", "humidity", "pressure"]
SIGMA = np.array([0.5, 1.5, 1.5])


def normal_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    temperature = rng.normal(21.0, 0.5, n)
    humidity = 45.0 - 2.0 * (temperature - 21.0) + rng.normal(0.0, 1.5, n)
    pressure = rng.normal(1013.0, 1.5, n)
    return np.column_stack([temperature, humidity, pressure])


def with_anomalies(n: int, anomalies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normal rows with ``anomalies`` of them moved far away; and which ones."""
    rng = np.random.default_rng(seed + 1000)
    rows = normal_rows(n, seed)
    truth = np.zeros(n, dtype=bool)
    picked = rng.choice(n, anomalies, replace=False)
    for i in picked:
        for feature in rng.choice(3, 2, replace=False):
            rows[i, feature] += rng.choice([-1, 1]) * rng.uniform(4, 8) * SIGMA[feature]
    truth[picked] = True
    return rows, truth


def points(
    rows: np.ndarray, sensor: str = "s1", start: int = 0, name: str = "sensors"
) -> list[pb.Point]:
    return [
        make_point(
            name,
            start + i * 1_000_000_000,
            dict(zip(FEATURES, map(float, row), strict=True)),
            {"sensor": sensor},
            group=f"{name}\nsensor={sensor}",
            dimensions=["sensor"],
        )
        for i, row in enumerate(rows)
    ]


def fitted_forest(seed: int = 0, contamination: Any = 0.005, trees: int = 100) -> Any:
    from sklearn.ensemble import IsolationForest

    return IsolationForest(n_estimators=trees, contamination=contamination, random_state=seed).fit(
        normal_rows(4000, seed)
    )


def recall_precision(flagged: Sequence[bool], truth: Sequence[bool]) -> tuple[float, float]:
    hits = sum(f and t for f, t in zip(flagged, truth, strict=True))
    recall = hits / max(sum(truth), 1)
    precision = hits / max(sum(flagged), 1)
    return recall, precision
