"""udfd without scikit-learn and ONNX Runtime: it starts, ``normalize`` serves, and the model
handlers are listed as unavailable with the reason and the install command.

The packages are made absent with a ``sitecustomize`` that refuses to import them, as a
missing package would (ModuleNotFoundError): a stand-in for a venv without the extra,
which would cost this suite a second install of udfd. Everything else is the real
daemon and the real ``udfd list``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from udfd import make_point
from udfd.testing import DaemonProcess, run_task

pytestmark = pytest.mark.anyio

BLOCKER = """
import importlib.abc, sys
ABSENT = {"sklearn", "onnxruntime", "onnx", "skl2onnx"}
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Absent())
"""


def without_models(workdir: Path) -> dict[str, str]:
    site = workdir / "absent"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_udfd_list_says_why_and_what_to_install(workdir: Path) -> None:
    env = {**os.environ, **without_models(workdir)}
    listed = subprocess.run(
        [sys.executable, "-m", "udfd", "list"], capture_output=True, text=True, env=env, check=True
    )
    entries = listed.stdout.split("\n")
    for name in ("isolation_forest", "isolation_forest_batch", "classifier", "classifier_batch"):
        at = next(i for i, line in enumerate(entries) if line.startswith(f"{name}  "))
        reason = entries[at + 1]
        assert "cannot load:" in reason and "which is not installed" in reason, reason
        assert "pip install 'udfd-ml[models]'" in reason
    at = next(i for i, line in enumerate(entries) if line.startswith("normalize  "))
    assert "cannot load" not in entries[at + 1]


async def test_the_daemon_starts_and_normalize_serves(workdir: Path) -> None:
    (workdir / "d").mkdir()
    config = (
        '[functions.normalize]\nhandler = "normalize"\n'
        '[functions.isolation_forest]\nhandler = "isolation_forest"\n'
    )
    daemon = DaemonProcess(workdir / "d", config, env=without_models(workdir))
    try:
        daemon.wait_for("ready: 1 function(s) ready, 1 failed", timeout=90)
        point = make_point("adsl", 1, {"state": "SHOWTIME"})
        normalized = await run_task(
            daemon.socket("normalize"),
            {"field": "state", "map": [("SHOWTIME", 1.0)]},
            points=[point],
        )
        refused = await run_task(daemon.socket("isolation_forest"), {"warmup": 100})
    finally:
        daemon.close()
    assert normalized.points[0].fieldsDouble["state"] == 1.0
    assert not refused.init.success
    assert "pip install 'udfd-ml[models]'" in refused.init.error
    assert "which is not installed" in daemon.log


def test_udfd_train_says_what_to_install(workdir: Path) -> None:
    data = workdir / "d.lp"
    data.write_text("m a=1,b=2 1\nm a=2,b=3 2\n")
    env = {**os.environ, **without_models(workdir)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "udfd",
            "train",
            "isolation_forest",
            "--input",
            str(data),
            "--fields",
            "a,b",
            "--output",
            str(workdir / "m.onnx"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1 and "pip install 'udfd-ml[models]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
