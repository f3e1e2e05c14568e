"""docs/first-udf.md, followed as written: every ``sh`` block runs, in order, in a fresh
virtual environment, and what the page shows as output is what the commands print.

The environment is made as tests/test_new.py makes it: udfd is importable through a
``.pth`` file, and a ``udfd`` command in its ``bin`` stands in for the console script
``pip install udfd`` would write. The plugin is pip-installed (editable, with build
isolation, so pip fetches setuptools from the package index). The page's last section
needs a Kapacitor, which cannot be installed here; it is the one part not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "first-udf.md"
pytestmark = pytest.mark.timeout(600)


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.DOTALL)


def test_the_page_runs_as_written(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "udfd_checkout.pth").write_text(f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n")
    command = venv / "bin" / "udfd"
    command.write_text(f"#!{venv / 'bin' / 'python'}\nfrom udfd.cli import main\nmain()\n")
    command.chmod(0o755)
    work = tmp_path / "first"
    work.mkdir()
    script = "set -eu\n" + "\n".join(blocks("sh"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UDFD_", "PYTEST_"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # the plugin's own tests passed
    assert re.search(r"\b4 passed\b", out), out
    # udfd run printed what the page shows, and the typo got Init's error
    shown = [b for b in blocks("text") if b.startswith("cpu,host=")]
    assert shown and shown[0] in out
    assert "Init failed: cpu_sum: unknown option 'feild' (known options: as, field, size)" in (
        done.stderr
    )
    # the running daemon's function, driven with size=3: the sums over three points
    assert "cpu,host=a sum=60.0 3000000000" in out
    assert "1 function(s) valid, 0 invalid" in out
    conf = (work / "kapacitor-udf.conf").read_text()
    expected = next(b for b in blocks("text") if b.startswith("# udfd functions"))
    assert conf == expected.replace("/path/to", str(work))
    assert "ready: 1 function(s) ready, 0 failed" in (work / "serve.log").read_text()
