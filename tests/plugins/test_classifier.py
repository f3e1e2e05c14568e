"""classifier through a real ``udfd serve``: predictions equal the estimator's own, from an
ONNX file and from a pinned pickle, streams and batches, classes keep their type."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sensors import FEATURES, normal_rows, points
from sklearn.ensemble import RandomForestClassifier
from udfd_ml.models.classifier_onnx import classifier_to_onnx

from udfd.testing import DaemonProcess, check_batch_framing, make_batch, run_task, short_socket_dir

pytestmark = pytest.mark.anyio


def room_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Temperature points of rooms, labelled cold / ok / hot by a noisy rule."""
    rows = normal_rows(n, seed)
    rows[:, 0] += np.random.default_rng(seed).normal(0, 2.0, n)  # spread the temperatures
    noise = np.random.default_rng(seed + 1).normal(0, 0.3, n)
    t = rows[:, 0] + noise
    labels = np.where(t < 20.0, "cold", np.where(t > 22.5, "hot", "ok"))
    return rows, labels


class Models:
    def __init__(self, root: Path) -> None:
        rows, labels = room_rows(3000, 1)
        self.estimator = RandomForestClassifier(n_estimators=40, random_state=0).fit(rows, labels)
        self.onnx = root / "rooms.onnx"
        self.onnx.write_bytes(classifier_to_onnx(self.estimator, 3))
        self.pickle = root / "rooms.pkl"
        self.pickle.write_bytes(pickle.dumps(self.estimator))
        self.sha256 = hashlib.sha256(self.pickle.read_bytes()).hexdigest()
        # integer classes stay integers
        self.numeric = RandomForestClassifier(n_estimators=10, random_state=0).fit(
            rows, (rows[:, 0] > 21).astype(int)
        )
        self.numeric_pickle = root / "numeric.pkl"
        self.numeric_pickle.write_bytes(pickle.dumps(self.numeric))
        config = """
[functions.classifier]
handler = "classifier"
[functions.classifier_batch]
handler = "classifier_batch"
"""
        (root / "d").mkdir()
        self.daemon = DaemonProcess(root / "d", config)
        try:
            self.daemon.wait_for("ready: 2 function(s) ready, 0 failed", timeout=90)
        except BaseException:
            self.daemon.close()  # the fixture never gets to its teardown
            raise


@pytest.fixture(scope="module")
def models() -> Iterator[Models]:
    root = short_socket_dir("ucl-")
    served = Models(root)
    try:
        yield served
    finally:
        served.daemon.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_onnx_predictions_equal_the_estimators_own(models: Models) -> None:
    rows, _ = room_rows(2000, 2)
    options = {"model": str(models.onnx), "field": FEATURES, "probability": ()}
    run = await run_task(models.daemon.socket("classifier"), options, points=points(rows))
    assert run.init.success, run.init.error
    assert run.errors == [] and len(run.points) == len(rows)
    predicted = [p.fieldsString["class"] for p in run.points]
    assert predicted == models.estimator.predict(rows).tolist()
    probability = np.array([p.fieldsDouble["probability"] for p in run.points])
    expected = models.estimator.predict_proba(rows).max(axis=1)
    assert np.max(np.abs(probability - expected)) < 1e-5  # ONNX computes in float32
    assert [p.fieldsDouble["temperature"] for p in run.points] == rows[:, 0].tolist()


async def test_exact_ties_go_to_the_first_class_as_in_scikit_learn(
    models: Models, tmp_path: Path
) -> None:
    # 50 trees, two classes: rows where 25 trees vote each way are common, and ONNX's
    # float32 sums of the votes break such ties at random
    rng = np.random.default_rng(0)
    train = rng.normal(size=(4000, 3))
    estimator = RandomForestClassifier(n_estimators=50, random_state=0).fit(
        train, (train[:, 0] + train[:, 1] > 0.3).astype(int)
    )
    model = tmp_path / "ties.onnx"
    model.write_bytes(classifier_to_onnx(estimator, 3))
    rows = rng.normal(size=(20_000, 3))
    expected = estimator.predict(rows)
    from udfd_ml.models.loaded import session

    raw = session(model.read_bytes()).run(None, {"X": rows.astype(np.float32)})[0]
    broken = int((raw != expected).sum())
    assert broken > 0  # the ONNX graph's own labels do differ on ties: this test can fail
    run = await run_task(
        models.daemon.socket("classifier"),
        {"model": str(model), "field": FEATURES},
        points=points(rows),
    )
    assert run.init.success, run.init.error
    print(f"\nONNX's own labels differ from scikit-learn's on {broken} of 20000 rows; served: 0")
    assert [p.fieldsInt["class"] for p in run.points] == expected.tolist()


async def test_a_pinned_pickle_predicts_exactly_as_scikit_learn(models: Models) -> None:
    rows, _ = room_rows(500, 3)
    options = {
        "model": str(models.pickle),
        "sha256": models.sha256,
        "field": FEATURES,
        "probability": (),
        "classField": "comfort",
        "probabilityField": "confidence",
    }
    run = await run_task(models.daemon.socket("classifier"), options, points=points(rows))
    assert run.init.success, run.init.error
    assert [p.fieldsString["comfort"] for p in run.points] == models.estimator.predict(
        rows
    ).tolist()
    confidence = [p.fieldsDouble["confidence"] for p in run.points]
    assert confidence == models.estimator.predict_proba(rows).max(axis=1).tolist()
    unpinned = await run_task(models.daemon.socket("classifier"), {"model": str(models.pickle)})
    assert not unpinned.init.success and "runs code" in unpinned.init.error


async def test_integer_classes_stay_integers(models: Models) -> None:
    rows, _ = room_rows(200, 4)
    digest = hashlib.sha256(models.numeric_pickle.read_bytes()).hexdigest()
    options = {"model": str(models.numeric_pickle), "sha256": digest, "field": FEATURES}
    run = await run_task(models.daemon.socket("classifier"), options, points=points(rows))
    assert run.init.success, run.init.error
    assert [p.fieldsInt["class"] for p in run.points] == models.numeric.predict(rows).tolist()


async def test_batches_keep_their_framing_and_drop_only_bad_points(models: Models) -> None:
    rows, _ = room_rows(300, 5)
    batches = []
    for b in range(3):
        part = rows[b * 100 : (b + 1) * 100]
        data = [(i, dict(zip(FEATURES, map(float, r), strict=True))) for i, r in enumerate(part)]
        if b == 1:
            data[7] = (7, {"temperature": 1.0})  # lacks two features: dropped alone
        batches.append(make_batch("rooms", data, tags={"room": str(b)}, group=f"rooms\nroom={b}"))
    run = await run_task(
        models.daemon.socket("classifier_batch"),
        {"model": str(models.onnx), "field": FEATURES},
        batches=batches,
    )
    assert run.init.success, run.init.error
    per_batch = check_batch_framing(run.output, batches)
    assert [len(b) for b in per_batch] == [100, 99, 100]
    for got, (_, sent, _) in zip(per_batch, batches, strict=True):
        kept = [p for p in sent if len(p.fieldsDouble) == 3]
        matrix = np.array([[p.fieldsDouble[f] for f in FEATURES] for p in kept])
        assert [p.fieldsString["class"] for p in got] == models.estimator.predict(matrix).tolist()


async def test_option_mistakes_are_init_errors(models: Models) -> None:
    socket = models.daemon.socket("classifier")
    clash = await run_task(
        socket, {"model": str(models.onnx), "field": FEATURES, "classField": "humidity"}
    )
    assert "would overwrite a feature" in clash.init.error
    narrow = await run_task(socket, {"model": str(models.onnx), "field": ["temperature"]})
    assert "takes 3 features" in narrow.init.error
    missing = await run_task(socket, {"field": FEATURES})
    assert "option 'model' is required" in missing.init.error
