"""Points/s and keepalive latency of the handlers people run, next to the trivial mirror.

Every first-party handler, and the legacy path with the project's own files in the
style of the official agent's examples (``tests/legacy_handlers/mirror.py`` and
``moving_avg.py``), served by one ``udfd serve`` with one worker, one connection
at a time. The trivial native mirror, measured in the same run, is the ceiling:
what the engine costs with a handler that does nothing.

    python benchmarks/bench_handlers.py            # 200k points, best of 3 runs
    python benchmarks/bench_handlers.py --short    # the quick table CI prints
    python benchmarks/bench_handlers.py --kdrive ../shared/tools/kdrive
                                                   # cross-check with an independent driver

The data is kdrive's: one ``cpu`` series whose ``value`` grows by 1 each point, so
``state_change`` sees a change on every point (its worst case: every point is
emitted) and ``outliers`` finds none. It prints numbers and asserts nothing about
them, except that every handler answered and no connection failed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from driver import OptionValue, Run, batch_frames, drive, stream_frames

from udfd.testing import DaemonProcess

HERE = Path(__file__).resolve().parent
LEGACY = HERE.parent / "tests" / "legacy_handlers"


@dataclass(frozen=True)
class Case:
    name: str
    handler: str
    options: dict[str, OptionValue | Sequence[OptionValue]] = field(default_factory=dict)
    #: points per batch; 0 for a stream
    batch: int = 0
    note: str = ""


CASES = (
    Case("mirror", f"{HERE / 'isolation_handlers.py'}:Mirror", note="ceiling: returns its input"),
    Case("state_change", "state_change", {"field": "value"}, note="a change on every point"),
    Case("moving_average", "moving_average", {"field": "value", "size": 10}),
    Case("threshold", "threshold", {"range": ("value", 0.0, 1e12)}, note="filter, keeps all"),
    Case("outliers", "outliers", {"field": "value"}, batch=100, note="batches of 100"),
    Case("normalize", "normalize", {"scale": ("value", 2.0, 1.0)}, note="scale one field"),
    Case(
        "legacy_mirror",
        f"{LEGACY / 'mirror.py'}:MirrorHandler",
        note="official-agent API, unmodified",
    ),
    Case(
        "legacy_moving_avg",
        f"{LEGACY / 'moving_avg.py'}:AvgHandler",
        {"field": "value", "size": 10, "as": "avg"},
        note="official-agent API, unmodified",
    ),
)


def model_cases(workdir: Path) -> list[Case]:
    """The model handlers' rows: models fitted here on the driver's data (value = 0, 1, ...).

    Skipped, with a line saying so, where udfd-ml's models extra is not installed.
    """
    try:
        import numpy as np
        from sklearn.ensemble import IsolationForest, RandomForestClassifier
        from udfd_ml.models.classifier_onnx import classifier_to_onnx
        from udfd_ml.models.iforest_onnx import isolation_forest_to_onnx
    except ImportError as exc:
        print(f"(model handlers skipped: {exc})")
        return []
    values = np.arange(0, 200_000, 7, dtype=np.float64).reshape(-1, 1)
    forest = IsolationForest(n_estimators=100, random_state=0).fit(values)
    forest_file = workdir / "forest.onnx"
    forest_file.write_bytes(isolation_forest_to_onnx(forest, ["value"]))
    labels = (values[:, 0] // 50_000).astype(int)
    trees = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0).fit(values, labels)
    classifier_file = workdir / "classifier.onnx"
    classifier_file.write_bytes(classifier_to_onnx(trees, 1))
    forest_note = "100 trees, scored per chunk"
    return [
        Case("isolation_forest", "isolation_forest", {"model": str(forest_file)}, note=forest_note),
        Case(
            "isolation_forest_batch",
            "isolation_forest_batch",
            {"model": str(forest_file)},
            batch=1000,
            note="100 trees, batches of 1000",
        ),
        Case(
            "classifier",
            "classifier",
            {"model": str(classifier_file), "field": "value", "probability": ()},
            note="50 trees (ONNX), class + probability",
        ),
    ]


def config(cases: Sequence[Case]) -> str:
    lines = ["workers = 1", 'shutdown_grace = "1s"']
    for case in cases:
        lines += [f"[functions.{case.name}]", f'handler = "{case.handler}"']
    return "\n".join(lines) + "\n"


def run_kdrive(kdrive: str, socket: Path, case: Case, points: int, every: int) -> Run:
    """One run of the independent driver, its JSON read back into a :class:`Run`."""
    cmd = [kdrive, "batch" if case.batch else "stream", "-socket", str(socket)]
    cmd += ["-n", str(points), "-k", str(every), "-runs", "1"]
    if case.batch:
        cmd += ["-b", str(case.batch)]
    for name, raw in case.options.items():
        for value in raw if isinstance(raw, (list, tuple)) else [raw]:
            typed = f"float:{value}" if isinstance(value, float) else str(value)
            cmd += ["-opt", f"{name}={typed}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"kdrive failed on {case.name}: {out.stderr.strip() or out.stdout}")
    result = json.loads(out.stdout)["runs"][0]
    ka = result["keepalive"]
    return Run(
        points_in=result["points_sent"],
        points_out=result["points_received"],
        seconds=result["wall_s"],
        reported_ms={50: ka["p50_us"] / 1e3, 99: ka["p99_us"] / 1e3},
        max_gap_ms=result["max_response_gap_ms"],
    )


def measure(
    daemon: DaemonProcess, case: Case, args: argparse.Namespace, frames: list[bytes]
) -> Run:
    best: Run | None = None
    socket = daemon.socket(case.name)
    for _ in range(args.runs):
        if args.kdrive:
            run = run_kdrive(args.kdrive, socket, case, args.points, args.keepalive_every)
        else:
            run = anyio.run(
                functools.partial(drive, options=case.options),
                socket,
                frames,
                args.keepalive_every,
            )
        if run.error:
            raise SystemExit(f"{case.name}: the connection failed: {run.error}")
        if best is None or run.rate > best.rate:
            best = run
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", "-n", type=int, default=200_000)
    parser.add_argument("--keepalive-every", "-k", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="20k points, 1 run")
    parser.add_argument("--kdrive", metavar="PATH", help="drive with kdrive instead")
    parser.add_argument("--only", action="append", metavar="NAME", help="just these cases")
    args = parser.parse_args()
    if args.short:
        args.points, args.runs = 20_000, 1
    workdir = Path(tempfile.mkdtemp(prefix="ubh-", dir="/tmp"))
    cases = [c for c in (*CASES, *model_cases(workdir)) if not args.only or c.name in args.only]
    daemon = DaemonProcess(workdir, config(cases))
    try:
        daemon.wait_for(f"ready: {len(cases)} function(s) ready, 0 failed")
        print(
            f"{args.points} points per case, one connection, a keepalive every "
            f"{args.keepalive_every}, best of {args.runs} run(s); {os.cpu_count()} cores; "
            f"driver: {'kdrive' if args.kdrive else 'benchmarks/driver.py'}"
        )
        header = ("handler", "points/s", "of mirror", "out", "ka p50 ms", "ka p99 ms", "gap ms")
        widths = (23, 11, 10, 8, 10, 10, 8)
        print(
            "".join(
                f"{h:>{w}}" if i else f"{h:<{w}}"
                for i, (h, w) in enumerate(zip(header, widths, strict=True))
            )
            + "  note"
        )
        stream = stream_frames(args.points)
        ceiling = 0.0
        for case in cases:
            frames = batch_frames(args.points, case.batch) if case.batch else stream
            run = measure(daemon, case, args, frames)
            ceiling = ceiling or run.rate
            note = case.note
            if case.batch:
                per_batch = run.seconds / max(run.points_in // case.batch, 1) * 1000
                note += f"; {per_batch:.2f} ms per batch"
            row = (
                f"{case.name:<23}{run.rate:>11,.0f}{run.rate / ceiling:>10.0%}"
                f"{run.points_out:>8}{run.keepalive_pct(50):>10.2f}"
                f"{run.keepalive_pct(99):>10.2f}{run.max_gap_ms:>8.1f}"
            )
            print(f"{row}  {note}", flush=True)
    finally:
        daemon.stop()
        problems = [line for line in daemon.lines if " ERROR " in line or " WARNING " in line]
        daemon.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if problems:
        print("the daemon logged:\n  " + "\n  ".join(problems[:10]))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
