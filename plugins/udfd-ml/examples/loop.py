"""The whole loop, for real: history -> ``udfd train`` -> config -> ``udfd serve`` -> points.

Run: ``python plugins/udfd-ml/examples/loop.py`` (the README's output comes from
here). It writes a week of a sensor's readings as line protocol (fixed seed),
trains an Isolation Forest from it with the ``udfd train`` command line, starts
``udfd serve`` with the config that command printed, and sends the function
five new readings as Kapacitor would, two of them faulty. What the UDF answers
is printed as line protocol.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import numpy as np
from udfd import fields, make_point
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import DaemonProcess, run_task

START = 1_780_000_000_000_000_000  # 2026-05-28T20:26:40Z
MINUTE = 60_000_000_000


def history(path: Path, rows: int = 10_080) -> None:
    rng = np.random.default_rng(2026)
    temperature = rng.normal(21.0, 0.5, rows)
    humidity = 45.0 - 2.0 * (temperature - 21.0) + rng.normal(0.0, 1.5, rows)
    pressure = rng.normal(1013.0, 1.5, rows)
    with open(path, "w") as f:
        for i in range(rows):
            f.write(
                f"sensors,sensor=hall temperature={temperature[i]:.3f},"
                f"humidity={humidity[i]:.2f},pressure={pressure[i]:.2f} {START + i * MINUTE}\n"
            )


def line(point: pb.Point) -> str:
    tags = "".join(f",{k}={v}" for k, v in sorted(point.tags.items()))
    parts = []
    for key, value in fields(point).items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, float):
            parts.append(f"{key}={round(value, 4)!r}")
        else:
            parts.append(f"{key}={value!r}")
    return f"{point.name}{tags} {','.join(parts)} {point.time}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="udfd-loop-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "sensors.lp"
    history(data)
    model = root / "models" / "sensors.onnx"
    command = [
        "udfd", "train", "isolation_forest", "--input", str(data),
        "--fields", "temperature,humidity,pressure", "--measurement", "sensors",
        "--contamination", "0.002", "--output", str(model),
    ]  # fmt: skip
    print("$ " + " ".join(command).replace(str(root), "."))
    trained = subprocess.run(
        [sys.executable, "-m", "udfd", *command[1:]], capture_output=True, text=True, check=True
    )
    print(trained.stderr.replace(str(root), "."), end="")
    print(trained.stdout.replace(str(root), "."))
    config = trained.stdout.split("then `udfd reload`\n")[1].split("\n# TICKscript")[0]
    (root / "daemon").mkdir(exist_ok=True)
    daemon = DaemonProcess(root / "daemon", config)
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed", timeout=90)
        readings = [
            (21.1, 44.9, 1012.8),
            (20.7, 45.8, 1013.9),
            (24.9, 36.1, 1013.1),  # faulty: far too warm and dry at once
            (21.3, 44.1, 1012.2),
            (21.0, 45.2, 1001.0),  # faulty: pressure 8 sigma low
        ]
        sent = [
            make_point(
                "sensors",
                START + (10_080 + i) * MINUTE,
                dict(zip(("temperature", "humidity", "pressure"), r, strict=True)),
                {"sensor": "hall"},
                group="sensors\nsensor=hall",
                dimensions=["sensor"],
            )
            for i, r in enumerate(readings)
        ]
        run = anyio.run(lambda: run_task(daemon.socket("sensors"), {}, points=sent))
        assert run.init.success, run.init.error
    finally:
        daemon.close()
    print("# five new readings in, what @sensors() sends on:")
    for point in run.points:
        print(line(point))


if __name__ == "__main__":
    main()
