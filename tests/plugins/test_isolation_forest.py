"""isolation_forest through a real ``udfd serve`` over real sockets: injected anomalies are
found, scores are scikit-learn's, batches are scored whole while keepalives are answered,
models are loaded once per worker and only when trusted, and warm-up fits survive a
snapshot and restore."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from sensors import FEATURES, fitted_forest, normal_rows, points, recall_precision, with_anomalies
from udfd_ml.models.iforest_onnx import isolation_forest_to_onnx

from udfd.protocol.client import connect
from udfd.testing import DaemonProcess, check_batch_framing, make_batch, run_task, short_socket_dir

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """One daemon for this module, its model files, and its live /health counters."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.trusted = root / "trusted"
        self.models.mkdir()
        self.trusted.mkdir(mode=0o755)
        self.forest = fitted_forest()
        self.onnx = self.models / "sensors.onnx"
        self.onnx.write_bytes(isolation_forest_to_onnx(self.forest, FEATURES))
        self.pickle = self.models / "sensors.pkl"
        self.pickle.write_bytes(pickle.dumps(self.forest))
        (self.trusted / "sensors.pkl").write_bytes(pickle.dumps(self.forest))
        os.chmod(self.trusted / "sensors.pkl", 0o644)
        self.port = free_port()
        config = f"""
health = "127.0.0.1:{self.port}"
[functions.isolation_forest]
handler = "isolation_forest"
[functions.isolation_forest_batch]
handler = "isolation_forest_batch"
[functions.trusted_forest]
handler = "isolation_forest"
[functions.trusted_forest.options]
trusted_dirs = ["{self.trusted}"]
"""
        self.daemon = DaemonProcess(root / "d", config)
        try:
            self.daemon.wait_for("ready: 3 function(s) ready, 0 failed", timeout=90)
        except BaseException:
            self.daemon.close()  # the fixture never gets to its teardown
            raise

    def socket(self, name: str = "isolation_forest") -> Path:
        return self.daemon.socket(name)

    def health(self, function: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/health"
        with urllib.request.urlopen(url, timeout=10) as response:
            entry: dict[str, Any] = json.loads(response.read())["functions"][function]
            return entry

    def counters_after(
        self, function: str, points_in: int, key: str = "points_in"
    ) -> dict[str, Any]:
        """/health once the worker reported ``key`` >= the value (reports come each second)."""
        deadline = time.monotonic() + 15
        while True:
            entry = self.health(function)
            if entry[key] >= points_in or time.monotonic() > deadline:
                return entry
            time.sleep(0.05)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    root = short_socket_dir("uif-")
    (root / "d").mkdir()
    served = Served(root)
    try:
        yield served
    finally:
        served.daemon.close()
        shutil.rmtree(root, ignore_errors=True)


def scores_of(run_points: list[Any]) -> np.ndarray:
    return np.array([p.fieldsDouble["anomaly_score"] for p in run_points])


async def test_injected_anomalies_are_flagged_with_scikit_learns_scores(served: Served) -> None:
    rows, truth = with_anomalies(3000, 60, seed=7)
    run = await run_task(served.socket(), {"model": str(served.onnx)}, points=points(rows))
    assert run.init.success, run.init.error
    assert run.errors == [] and len(run.points) == len(rows)
    flagged = [p.fieldsBool["anomaly"] for p in run.points]
    recall, precision = recall_precision(flagged, truth.tolist())
    print(
        f"\nisolation_forest on {len(rows)} points, {truth.sum()} injected anomalies: "
        f"recall {recall:.3f}, precision {precision:.3f}"
    )
    assert recall >= 0.9 and precision >= 0.6
    # the scores are scikit-learn's own (the paper's score, -score_samples)
    reference = -served.forest.score_samples(rows)
    assert np.max(np.abs(scores_of(run.points) - reference)) < 1e-6
    assert flagged == (served.forest.predict(rows) == -1).tolist()
    # identity is kept: Kapacitor regroups by it
    assert [p.time for p in run.points] == [p.time for p in points(rows)]
    assert {p.group for p in run.points} == {"sensors\nsensor=s1"}


async def test_anomalies_only_names_and_threshold(served: Served) -> None:
    rows, _ = with_anomalies(500, 10, seed=8)
    options = {
        "model": str(served.onnx),
        "anomaliesOnly": (),
        "scoreField": "iso_score",
        "anomalyField": "is_odd",
        "threshold": 0.7,
    }
    run = await run_task(served.socket(), options, points=points(rows))
    assert run.init.success, run.init.error
    reference = -served.forest.score_samples(rows)
    assert [p.time // 1_000_000_000 for p in run.points] == np.nonzero(reference > 0.7)[0].tolist()
    assert all(p.fieldsBool["is_odd"] and p.fieldsDouble["iso_score"] > 0.7 for p in run.points)
    assert "anomaly_score" not in run.points[0].fieldsDouble


async def test_a_point_without_a_feature_is_dropped_and_counted(served: Served) -> None:
    good = points(normal_rows(20, 1))
    bad = points(normal_rows(1, 2), start=99)[0]
    del bad.fieldsDouble["pressure"]
    bad.fieldsString["pressure"] = "n/a"
    before = served.health("isolation_forest")["dropped"]
    run = await run_task(
        served.socket(), {"model": str(served.onnx)}, points=[*good[:10], bad, *good[10:]]
    )
    assert run.errors == [] and len(run.points) == 20
    entry = served.counters_after("isolation_forest", before + 1, key="dropped")
    assert entry["dropped"] == before + 1


async def test_batches_are_scored_whole_and_framed_as_they_came(served: Served) -> None:
    batches = []
    for b in range(3):
        rows, _ = with_anomalies(200, 4, seed=20 + b)
        batch_rows = [
            (i * 1_000_000_000, dict(zip(FEATURES, map(float, r), strict=True)))
            for i, r in enumerate(rows)
        ]
        batches.append(
            make_batch(
                "sensors", batch_rows, tags={"sensor": f"s{b}"}, group=f"sensors\nsensor=s{b}"
            )
        )
    run = await run_task(
        served.socket("isolation_forest_batch"),
        {"model": str(served.onnx), "anomaliesOnly": ()},
        batches=batches,
    )
    assert run.init.success and run.errors == []
    per_batch = check_batch_framing(run.output, batches)
    for (_, sent, _), got in zip(batches, per_batch, strict=True):
        rows = np.array([[p.fieldsDouble[f] for f in FEATURES] for p in sent])
        expected = np.nonzero(served.forest.predict(rows) == -1)[0].tolist()
        assert [p.time // 1_000_000_000 for p in got] == expected and expected


async def test_a_model_is_loaded_once_for_several_connections(served: Served) -> None:
    # a model of its own, so the counts are this test's
    forest = fitted_forest(seed=11)
    model = served.models / "shared.onnx"
    model.write_bytes(isolation_forest_to_onnx(forest, FEATURES))
    copy = served.models / "same-content.onnx"
    shutil.copy(model, copy)
    before = served.health("isolation_forest")
    data = points(normal_rows(100, 3))

    async def task(path: Path) -> int:
        run = await run_task(served.socket(), {"model": str(path)}, points=data)
        assert run.init.success, run.init.error
        return len(run.points)

    async with anyio.create_task_group() as tg:
        for path in (model, model, model, copy):
            tg.start_soon(task, path)
    after = served.counters_after("isolation_forest", before["points_in"] + 400)
    print(
        f"\n4 tasks on one model: loads {after['resource_loads'] - before['resource_loads']}, "
        f"hits {after['resource_hits'] - before['resource_hits']}"
    )
    assert after["resource_loads"] - before["resource_loads"] == 1
    assert after["resource_hits"] - before["resource_hits"] == 3


async def test_a_hash_mismatch_and_an_untrusted_pickle_are_refused(served: Served) -> None:
    digest = hashlib.sha256(served.pickle.read_bytes()).hexdigest()
    wrong = "0" * 64
    data = points(normal_rows(50, 4))
    mismatch = await run_task(served.socket(), {"model": str(served.onnx), "sha256": wrong})
    assert not mismatch.init.success
    assert "is pinned: refused" in mismatch.init.error and wrong in mismatch.init.error
    untrusted = await run_task(served.socket(), {"model": str(served.pickle)})
    assert not untrusted.init.success
    assert "loading a pickle runs code: refused" in untrusted.init.error
    # a task cannot declare its own directory trusted: the option is the config's alone
    sneaky = await run_task(
        served.socket(), {"model": str(served.pickle), "trusted_dirs": str(served.models)}
    )
    assert not sneaky.init.success and "unknown option 'trusted_dirs'" in sneaky.init.error
    # a forest fitted on a plain array does not know its features' names: the task says
    pinned = await run_task(
        served.socket(),
        {"model": str(served.pickle), "sha256": digest, "field": FEATURES},
        points=data,
    )
    assert pinned.init.success, pinned.init.error
    trusted = await run_task(
        served.socket("trusted_forest"),
        {"model": str(served.trusted / "sensors.pkl"), "field": FEATURES},
        points=data,
    )
    assert trusted.init.success, trusted.init.error
    rows = normal_rows(50, 4)
    for run in (pinned, trusted):
        assert np.max(np.abs(scores_of(run.points) + served.forest.score_samples(rows))) < 1e-6
    # a pickle anyone may replace is not trusted, even in a trusted directory
    os.chmod(served.trusted / "sensors.pkl", 0o666)
    try:
        swappable = await run_task(
            served.socket("trusted_forest"),
            {"model": str(served.trusted / "sensors.pkl"), "field": FEATURES},
        )
    finally:
        os.chmod(served.trusted / "sensors.pkl", 0o644)
    assert not swappable.init.success and "writable by group or others" in swappable.init.error


async def test_unusable_model_files_get_a_clear_init_error(served: Served) -> None:
    half = served.models / "half.onnx"
    half.write_bytes(served.onnx.read_bytes()[: served.onnx.stat().st_size // 2])
    unknown = served.models / "model.bin"
    unknown.write_bytes(b"\x00" * 10)
    cases = {
        str(half): "is not a valid ONNX model",
        str(unknown): "unknown model format '.bin'",
        str(served.models / "missing.onnx"): "does not exist",
    }
    for path, expected in cases.items():
        run = await run_task(served.socket(), {"model": path})
        assert not run.init.success and expected in run.init.error, run.init.error
    wrong_fields = await run_task(
        served.socket(),
        {"model": str(served.onnx), "field": ["humidity", "temperature", "pressure"]},
    )
    assert "was trained on temperature, humidity, pressure" in wrong_fields.init.error
    both = await run_task(served.socket(), {"model": str(served.onnx), "warmup": 100})
    assert "either .model('file.onnx') or .warmup(N)" in both.init.error
    assert "is not a valid ONNX model" in served.daemon.log  # also in udfd's own log


async def test_a_replaced_model_file_is_picked_up_by_the_next_task(served: Served) -> None:
    model = served.models / "rolling.onnx"
    old, new = fitted_forest(seed=30), fitted_forest(seed=31, trees=50)
    model.write_bytes(isolation_forest_to_onnx(old, FEATURES))
    rows = normal_rows(30, 5)
    first = await run_task(served.socket(), {"model": str(model)}, points=points(rows))
    # replaced as `udfd train` does it: a new file renamed over the old name
    staged = served.models / ".rolling.tmp"
    staged.write_bytes(isolation_forest_to_onnx(new, FEATURES))
    staged.replace(model)
    second = await run_task(served.socket(), {"model": str(model)}, points=points(rows))
    assert np.max(np.abs(scores_of(first.points) + old.score_samples(rows))) < 1e-6
    assert np.max(np.abs(scores_of(second.points) + new.score_samples(rows))) < 1e-6


async def test_keepalives_are_answered_while_a_large_batch_is_scored(served: Served) -> None:
    big = served.models / "big.onnx"
    big.write_bytes(isolation_forest_to_onnx(fitted_forest(seed=40, trees=400), FEATURES))
    rows = normal_rows(150_000, 6)
    batch_rows = [(i, dict(zip(FEATURES, map(float, r), strict=True))) for i, r in enumerate(rows)]
    begin, batch, end = make_batch("sensors", batch_rows, group="g")
    async with connect(served.socket("isolation_forest_batch")) as client:
        client.timeout = 120
        await client.info()
        assert (await client.init({"model": str(big)})).success
        await client.send_batch(begin, batch, end)
        started = time.perf_counter()
        during: list[float] = []  # answered before any of the batch came back
        latencies: list[float] = []
        while len(client.output) < len(rows) + 2:
            assert time.perf_counter() - started < 60, f"only {len(client.output)} outputs"
            latency = await client.keepalive()
            latencies.append(latency)
            if len(client.output) == 0:
                during.append(latency)
            await anyio.sleep(0.02)
        scoring = time.perf_counter() - started
        output = await client.finish()
    assert len(output) == len(rows) + 2
    print(
        f"\n{len(rows)} points scored as one batch in {scoring:.2f}s by 400 trees; "
        f"{len(during)} keepalives answered meanwhile, worst {max(during) * 1000:.1f} ms "
        f"(worst overall {max(latencies) * 1000:.1f} ms: an answer queued behind the "
        "batch's 150k points waits for this Python client to read them)"
    )
    assert len(during) >= 3  # the keepalives really overlapped the scoring
    assert max(during) < 0.5  # generous: scoring happens off the event loop


async def test_warm_up_fits_per_group_and_survives_snapshot_and_restore(served: Served) -> None:
    options = {"warmup": 300, "field": FEATURES, "contamination": 0.01, "seed": 3}
    first_rows, _ = with_anomalies(800, 8, seed=50)
    later_rows, truth = with_anomalies(400, 8, seed=51)
    sensors_a = points(first_rows, "a")
    sensors_b = points(first_rows[:200], "b")  # still warming up at the snapshot
    async with connect(served.socket()) as client:
        await client.info()
        assert (await client.init(options)).success
        await client.send_points([*sensors_a, *sensors_b])
        snapshot = await client.snapshot()
        await client.send_points(points(later_rows, "a", start=10**12))
        out = await client.finish()
    scored = [p for p in out if p.tags["sensor"] == "a"]
    assert len(scored) == 500 + 400  # the first 300 of group a trained it
    assert not [p for p in out if p.tags["sensor"] == "b"]  # b never finished warming up
    restored = await run_task(
        served.socket(), options, restore=snapshot, points=points(later_rows, "a", start=10**12)
    )
    assert restored.restore is not None and restored.restore.success, restored.restore
    assert [p.time for p in restored.points] == [p.time for p in scored[500:]]
    # the same forest after the restart: same points, same seed, same scores
    assert scores_of(restored.points).tolist() == scores_of(scored[500:]).tolist()
    recall, precision = recall_precision(
        [p.fieldsBool["anomaly"] for p in restored.points], truth.tolist()
    )
    print(
        f"\nwarm-up (300 points) then 400 points with 8 anomalies: recall {recall:.3f}, "
        f"precision {precision:.3f}"
    )
    assert recall >= 0.6 and precision >= 0.5
    # group b resumes its warm-up where the snapshot left it: 100 more points train it
    resumed = await run_task(
        served.socket(),
        options,
        restore=snapshot,
        points=points(normal_rows(150, 9), "b", start=10**13),
    )
    assert len(resumed.points) == 50


async def test_a_new_pinned_model_is_taken_on_reload_and_running_tasks_keep_theirs() -> None:
    root = short_socket_dir("uir-")
    old, new = fitted_forest(seed=60), fitted_forest(seed=61)
    model = root / "sensors.onnx"
    model.write_bytes(isolation_forest_to_onnx(old, FEATURES))

    def config(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        return (
            '[functions.sensors]\nhandler = "isolation_forest"\n'
            f'[functions.sensors.options]\nmodel = "{model}"\nsha256 = "{digest}"\n'
        )

    (root / "d").mkdir()
    daemon = DaemonProcess(root / "d", config(model.read_bytes()))
    rows = normal_rows(40, 12)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed", timeout=90)
        async with connect(daemon.socket("sensors")) as running:
            await running.info()
            assert (await running.init({})).success
            await running.send_points(points(rows[:20]))
            # a new model lands on disk (atomically): the old pin refuses it
            staged = root / ".sensors.tmp"
            staged.write_bytes(isolation_forest_to_onnx(new, FEATURES))
            staged.replace(model)
            refused = await run_task(daemon.socket("sensors"), {})
            assert not refused.init.success and "is pinned: refused" in refused.init.error
            # the operator pins the new content and reloads
            daemon.config.write_text(
                daemon.config.read_text().split("[functions.sensors]")[0]
                + config(model.read_bytes())
            )
            reloaded = await anyio.run_process(
                [sys.executable, "-m", "udfd", "reload", "--config", str(daemon.config)],
                check=False,
            )
            assert reloaded.returncode == 0, reloaded.stderr
            fresh = await run_task(daemon.socket("sensors"), {}, points=points(rows))
            await running.send_points(points(rows[20:], start=20 * 1_000_000_000))
            kept = await running.finish()
    finally:
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)
    assert fresh.init.success, fresh.init.error
    assert np.max(np.abs(scores_of(fresh.points) + new.score_samples(rows))) < 1e-6
    # the task that was running scored all its points with the model it had loaded
    assert len(kept) == 40
    assert np.max(np.abs(scores_of(list(kept)) + old.score_samples(rows))) < 1e-6


async def test_trust_covers_every_directory_below_the_trusted_one_and_the_owner(
    served: Served,
) -> None:
    socket_path = served.socket("trusted_forest")
    shared = served.trusted / "shared"
    team = shared / "team"
    team.mkdir(parents=True)
    os.chmod(shared, 0o777)  # anyone may rename team/ away and put their own in its place
    model = team / "sensors.pkl"
    model.write_bytes(pickle.dumps(served.forest))
    os.chmod(model, 0o644)
    options = {"model": str(model), "field": FEATURES}
    try:
        deep = await run_task(socket_path, options)
    finally:
        os.chmod(shared, 0o755)
    assert not deep.init.success and f"{str(shared)!r} is writable" in deep.init.error
    os.chown(model, 4321, 4321)  # someone else's file can be rewritten by them
    try:
        foreign = await run_task(socket_path, options)
    finally:
        os.chown(model, 0, 0)
    assert not foreign.init.success and "belongs to uid 4321" in foreign.init.error
    ok = await run_task(socket_path, options, points=points(normal_rows(5, 1)))
    assert ok.init.success, ok.init.error


async def test_a_fifo_under_a_models_name_is_refused_at_once(served: Served) -> None:
    fifo = served.models / "pipe.onnx"
    os.mkfifo(fifo)
    started = time.monotonic()
    with anyio.fail_after(10):  # open() would block forever without O_NONBLOCK
        run = await run_task(served.socket(), {"model": str(fifo)})
    assert not run.init.success and "is not a regular file" in run.init.error
    print(f"\nFIFO refused in {(time.monotonic() - started) * 1000:.0f} ms")


async def test_task_pins_can_be_left_to_the_config(workdir: Path) -> None:
    forest = fitted_forest(seed=70)
    model = workdir / "sensors.pkl"
    model.write_bytes(pickle.dumps(forest))
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    config = f"""
[functions.strict]
handler = "isolation_forest"
[functions.strict.options]
task_pins = false
[functions.pinned]
handler = "isolation_forest"
[functions.pinned.options]
task_pins = false
model = "{model}"
sha256 = "{digest}"
field = {json.dumps(FEATURES)}
"""
    (workdir / "d").mkdir()
    daemon = DaemonProcess(workdir / "d", config)
    try:
        daemon.wait_for("ready: 2 function(s) ready, 0 failed", timeout=90)
        by_task = await run_task(
            daemon.socket("strict"), {"model": str(model), "sha256": digest, "field": FEATURES}
        )
        by_config = await run_task(daemon.socket("pinned"), {}, points=points(normal_rows(5, 2)))
    finally:
        daemon.close()
    assert not by_task.init.success and "task_pins = false" in by_task.init.error
    assert by_config.init.success, by_config.init.error


async def test_a_model_file_that_vanishes_fails_new_tasks_only(served: Served) -> None:
    model = served.models / "vanishing.onnx"
    model.write_bytes(isolation_forest_to_onnx(fitted_forest(seed=80), FEATURES))
    rows = normal_rows(20, 13)
    async with connect(served.socket()) as running:
        await running.info()
        assert (await running.init({"model": str(model)})).success
        await running.send_points(points(rows[:10]))
        model.unlink()  # deleted under the running task
        refused = await run_task(served.socket(), {"model": str(model)})
        await running.send_points(points(rows[10:], start=10 * 1_000_000_000))
        kept = await running.finish()
    assert not refused.init.success and "does not exist" in refused.init.error
    assert len(kept) == 20  # the running task scores with the model it loaded
    assert served.health("isolation_forest")["state"] == "serving"
