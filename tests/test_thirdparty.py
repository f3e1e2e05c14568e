"""A third-party plugin distribution, pip-installed into a fresh virtual environment.

This is what a udfd user does with someone else's handler package: ``pip install``
it next to udfd and configure ``handler = "<entry point>"``. Here a distribution
``acme-udf`` (its own ``pyproject.toml``, one module, one ``udfd.handlers`` entry
point) is created in a temporary directory and installed by pip into a virtual
environment made for this module, then found through its entry point by
``udfd list`` and by the daemon running on that environment's interpreter.

Offline, on purpose: nothing is downloaded.

* udfd and its dependencies come from the environment running the tests: a
  ``.pth`` file in the fresh environment lists this environment's site-packages,
  the repository root (udfd is installed editable here, and ``.pth`` files inside
  a directory added by a ``.pth`` are not processed, so the editable finder would
  not run) and ``plugins/udfd-handlers`` (same reason; its metadata is visible
  through the site-packages entry, so its module must be importable too).
* The distribution is built by pip through PEP 517, with ``--no-build-isolation
  --no-deps --no-index``. Its build backend is not setuptools but a small in-tree
  backend (``backend-path``, the standard mechanism for a project that builds
  itself): the fresh venv's bundled setuptools cannot build a wheel offline.
  Python 3.11's venv bundles setuptools 65.5, whose ``bdist_wheel`` lives in the
  separate ``wheel`` package (setuptools vendors it only from 70.1), and there is
  no ``wheel`` to install without an index; Python 3.12+ venvs bundle no
  setuptools at all. pip still does everything else as for any package: it runs
  the backend's hooks, unpacks the wheel, writes ``RECORD``/``INSTALLER`` and the
  ``entry_points.txt`` that udfd reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProcess

import udfd
from udfd.protocol.client import connect
from udfd.protocol.proto import udf_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
Factory = Callable[..., DaemonProcess]

PYPROJECT = """\
[build-system]
requires = []
build-backend = "acme_backend"
backend-path = ["_build"]

[project]
name = "acme-udf"
version = "1.2.3"
description = "Acme's Kapacitor UDFs for udfd"
requires-python = ">=3.11"
dependencies = ["udfd>=0.1"]

[project.entry-points."udfd.handlers"]
acme_scale = "acme_udf:Scale"
"""

MODULE = '''\
"""Acme's handlers: a field times a factor."""

import udfd


class ScaleOptions(udfd.Options):
    field: str = "value"
    factor: float = 3.0


class Scale(udfd.Handler[ScaleOptions]):
    def point(self, point):
        value = udfd.get_number(point, self.options.field) * self.options.factor
        return udfd.derive(point, {self.options.field: value})
'''

# PEP 517 hooks pip calls for a local directory: build a pure-Python wheel of the
# top-level modules, with metadata and entry points taken from pyproject.toml.
BACKEND = '''\
"""An in-tree PEP 517 backend: a py3-none-any wheel of the project's top-level modules."""

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path


def _project():
    return tomllib.loads(Path("pyproject.toml").read_text())["project"]


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = _project()
    dist = project["name"].replace("-", "_")
    version = project["version"]
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\\nName: {project['name']}\\nVersion: {version}\\n"
    metadata += "".join(f"Requires-Dist: {r}\\n" for r in project.get("dependencies", []))
    entries = ""
    for group, items in project.get("entry-points", {}).items():
        entries += f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in items.items()) + "\\n"
    files = {p.name: p.read_bytes() for p in sorted(Path(".").glob("*.py"))}
    files[f"{info}/METADATA"] = metadata.encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\\nGenerator: acme_backend\\nRoot-Is-Purelib: true\\n"
        b"Tag: py3-none-any\\n"
    )
    files[f"{info}/entry_points.txt"] = entries.encode()
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel
'''


@dataclass(frozen=True)
class FreshVenv:
    python: Path
    site_packages: Path


def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "UDFD_CONFIG")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )
    assert result.returncode == 0, (
        f"{cmd}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """A new venv with udfd importable from this checkout and acme-udf pip-installed."""
    base = tmp_path_factory.mktemp("thirdparty")
    dist = base / "acme-udf"
    (dist / "_build").mkdir(parents=True)
    (dist / "pyproject.toml").write_text(PYPROJECT)
    (dist / "acme_udf.py").write_text(MODULE)
    (dist / "_build" / "acme_backend.py").write_text(BACKEND)

    venv = base / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    assert site.is_relative_to(venv)
    ours = Path(sysconfig.get_paths()["purelib"])
    (site / "udfd_checkout.pth").write_text(
        f"{ROOT}\n{ROOT / 'plugins' / 'udfd-handlers'}\n{ours}\n"
    )
    probe = _run(
        python,
        "-c",
        "import sys, udfd, udfd_handlers, anyio, google.protobuf, pydantic_settings\n"
        "print(udfd.__file__); print(sys.prefix)",
    ).stdout.split()
    assert probe == [str(ROOT / "udfd" / "__init__.py"), str(venv)]

    _run(
        python,
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        dist,
    )
    return FreshVenv(python, site)


def _listing(python: Path | str) -> list[dict[str, Any]]:
    listing = json.loads(_run(python, "-m", "udfd", "list", "--json").stdout)
    rows: list[dict[str, Any]] = listing["handlers"]
    return rows


def test_pip_installed_the_distribution_into_the_fresh_venv(fresh: FreshVenv) -> None:
    info = fresh.site_packages / "acme_udf-1.2.3.dist-info"
    assert (info / "INSTALLER").read_text().strip() == "pip"
    assert "[udfd.handlers]\nacme_scale = acme_udf:Scale" in (info / "entry_points.txt").read_text()
    record = (info / "RECORD").read_text()
    assert "acme_udf.py," in record
    assert (fresh.site_packages / "acme_udf.py").read_text() == MODULE


def test_list_in_the_fresh_venv_shows_the_entry_point(fresh: FreshVenv) -> None:
    rows = {row["name"]: row for row in _listing(fresh.python)}
    assert rows["acme_scale"] == {
        "name": "acme_scale",
        "value": "acme_udf:Scale",
        "distribution": "acme-udf",
        "version": "1.2.3",
        "allowed": True,
        "wants": "stream",
        "provides": "stream",
        "options": {"factor": ["float"], "field": ["string"]},
    }
    # udfd's own first-party handlers are listed (and load) there too
    assert rows["moving_average"]["distribution"] == "udfd-handlers"
    assert "error" not in rows["moving_average"]


def pts(values: list[float]) -> list[udfd.Point]:
    return [
        udfd.make_point("cpu", 1000 + i, {"value": v}, {"host": "h1"}, group="host=h1")
        for i, v in enumerate(values)
    ]


CONFIG = """
    [functions.scaled]
    handler = "acme_scale"
    [functions.tenfold]
    handler = "acme_scale"
    [functions.tenfold.options]
    factor = 10.0
"""


async def _scaled(path: Path, options: dict[str, Any], values: list[float]) -> list[pb.Point]:
    async with connect(path) as client:
        info = await client.info()
        assert dict(info.options)["factor"].valueTypes == [pb.DOUBLE]
        response = await client.init(options)
        assert response.success, response.error
        await client.send_points(pts(values))
        out = await client.finish()
        assert client.errors == []
    return [p for p in out if isinstance(p, pb.Point)]


@pytest.mark.anyio
async def test_daemon_on_the_fresh_venv_serves_the_plugin(
    fresh: FreshVenv, daemon: Factory
) -> None:
    d = daemon(CONFIG, python=str(fresh.python))
    assert "ready: 2 function(s) ready, 0 failed" in d.wait_for("ready:"), d.log
    assert "scaled: serving entry point acme_scale = acme_udf:Scale (acme-udf 1.2.3)" in d.log
    values = [0.0, 1.5, -2.0, 4.0]

    default = await _scaled(d.socket("scaled"), {}, values)
    assert [p.fieldsDouble["value"] for p in default] == [0.0, 4.5, -6.0, 12.0]
    assert [p.time for p in default] == [1000, 1001, 1002, 1003]
    assert all(dict(p.tags) == {"host": "h1"} and p.group == "host=h1" for p in default)

    chosen = await _scaled(d.socket("scaled"), {"factor": 0.5}, values)
    assert [p.fieldsDouble["value"] for p in chosen] == [0.0, 0.75, -1.0, 2.0]

    configured = await _scaled(d.socket("tenfold"), {}, values)
    assert [p.fieldsDouble["value"] for p in configured] == [0.0, 15.0, -20.0, 40.0]
    assert d.stop() == 0


@pytest.mark.anyio
async def test_the_main_venv_does_not_see_the_plugin(fresh: FreshVenv, daemon: Factory) -> None:
    """Only the fresh venv's install made acme_scale discoverable."""
    assert "acme_scale" not in {ep.name for ep in entry_points(group="udfd.handlers")}
    rows = _listing(sys.executable)
    assert "moving_average" in {row["name"] for row in rows}  # the listing itself works
    assert "acme_scale" not in {row["name"] for row in rows}
    assert "acme-udf" not in {row["distribution"] for row in rows}

    d = daemon(CONFIG)  # the same config, on the interpreter running the tests
    assert "ready: 0 function(s) ready, 2 failed" in d.wait_for("ready:"), d.log
    async with connect(d.socket("scaled")) as client:
        await client.info()
        response = await client.init()
    assert not response.success
    assert "acme_scale" in response.error
    assert d.stop() == 0


def test_fresh_venv_is_separate(fresh: FreshVenv) -> None:
    """The venv is really new: its prefix is its own and nothing else installed acme_udf."""
    out = _run(
        fresh.python,
        "-c",
        "import sys, acme_udf; print(sys.prefix != sys.base_prefix); print(acme_udf.__file__)",
        cwd=ROOT,
    ).stdout.split()
    assert out == ["True", str(fresh.site_packages / "acme_udf.py")]
    with pytest.raises(ImportError):
        __import__("acme_udf")
