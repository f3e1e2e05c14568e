"""``udfd new``: the plugin it writes installs into a fresh virtual environment, passes its
own tests there (on udfd's pytest plugin), and is served by ``udfd serve`` from that
environment through its entry point.

The fresh environment sees udfd and its dependencies the way tests/test_thirdparty.py
arranges it (a ``.pth`` file naming this checkout and this environment's site-packages).
The plugin itself is installed by pip as a user would: ``pip install`` of the directory,
with build isolation, so pip fetches the build backend the generated pyproject asks for
(setuptools) from the package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import anyio
import pytest

from udfd.protocol.client import probe_info
from udfd.testing import DaemonProcess

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def _run(*cmd: object, cwd: Path | None = None, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDFD_", "PYTEST_"))}
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def test_udfd_new_writes_a_plugin_that_installs_tests_and_serves(tmp_path: Path) -> None:
    out = _run(sys.executable, "-m", "udfd", "new", "acme-sum", "-o", tmp_path / "acme-sum")
    assert "pyproject.toml" in out
    plugin = tmp_path / "acme-sum"
    assert (plugin / "src" / "acme_sum" / "handler.py").is_file()
    refused = subprocess.run(
        [sys.executable, "-m", "udfd", "new", "acme-sum", "-o", str(plugin)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "exists already" in refused.stderr

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())  # fmt: skip
    ours = Path(sysconfig.get_paths()["purelib"])
    (site / "udfd_checkout.pth").write_text(f"{ROOT}\n{ours}\n")
    _run(python, "-m", "pip", "install", "--no-deps", "--quiet", plugin)
    assert (site / "acme_sum" / "handler.py").is_file()  # installed, not the source tree

    # its own tests, on udfd's pytest plugin (found through the pytest11 entry point)
    tests = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=plugin)
    assert "4 passed" in tests, tests

    # udfd on the fresh environment's interpreter finds it by its entry point and serves it
    listed = _run(python, "-m", "udfd", "list")
    assert "acme_sum  (acme-sum 0.1.0: acme_sum.handler:AcmeSum)" in listed
    workdir = Path(tempfile.mkdtemp(prefix="udfd-n-", dir="/tmp"))
    daemon = DaemonProcess(
        workdir, '[functions.acme_sum]\nhandler = "acme_sum"\n', python=str(python)
    )
    try:
        daemon.wait_for("ready: 1 function(s) ready, 0 failed")
        info = anyio.run(probe_info, daemon.socket("acme_sum"))
        assert set(info.options) == {"field", "size", "as"}
        lp = "cpu,host=a usage=1 1\ncpu,host=a usage=2 2\n"
        done = subprocess.run(
            [str(python), "-m", "udfd", "run", "--socket", str(daemon.socket("acme_sum")),
             "--opt", "field=usage", "--opt", "size=2"],
            input=lp, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.stdout.splitlines() == ["cpu,host=a sum=1.0 1", "cpu,host=a sum=3.0 2"], done
        assert daemon.stop() == 0
    finally:
        daemon.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_names_that_cannot_be_a_function_are_refused(tmp_path: Path) -> None:
    for name, why in (("9lives", "not a usable name"), ("class", "Python keyword"),
                      ("pydantic", "shadows"), ("json", "shadows")):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "udfd", "new", name, "-o", str(tmp_path / "x")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and why in done.stderr, (name, done.stderr)
        assert not (tmp_path / "x").exists()
