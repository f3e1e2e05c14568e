"""``udfd new NAME``: a minimal third-party plugin distribution, ready to test and serve.

What it writes is what a plugin needs and no more: a ``pyproject.toml`` whose
``udfd.handlers`` entry point names the handler (so ``pip install`` and a line of
config are all it takes), one handler with typed options and per-group state, its
tests on udfd's pytest plugin (including the conformance check), and a README
that says how to run, test and serve it. The names follow from ``NAME``: the
distribution ``NAME`` with dashes, the package and the function (the TICKscript's
``@NAME()``) with underscores.
"""

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path

from udfd import __version__

__all__ = ["ScaffoldError", "write_plugin"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
#: packages a plugin must not shadow
RESERVED = frozenset({
    "udfd", "kapacitor", "anyio", "google", "pydantic", "pydantic_settings", "pydantic_core",
    "influxdb_client", "pytest", "setuptools", "pip", "tests", "test", "src",
})  # fmt: skip


class ScaffoldError(Exception):
    pass


PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A Kapacitor UDF for udfd: {function}"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["udfd>={udfd_version}"]

[project.optional-dependencies]
test = ["pytest>=8"]

# udfd finds the handler through this entry point: `udfd list` shows it, and the
# function is served as @{function}() in TICKscripts
[project.entry-points."udfd.handlers"]
{function} = "{package}.handler:{cls}"

[tool.setuptools.packages.find]
where = ["src"]
"""

HANDLER = '''\
"""@{function}(): a moving sum of one field, per group.

Stream in, stream out. Each output point is the input point (so Kapacitor keeps its
group) with one field added. The state lives in a GroupState, so it is bounded per
group, and it survives a task restart through Kapacitor's snapshots.
"""

from __future__ import annotations

from pydantic import Field

import udfd


class {cls}Options(udfd.Options):
    """The TICKscript's options: @{function}().field('usage').size(10).as('usage_sum')."""

    #: the field to sum
    field: str
    #: how many points to sum over
    size: int = Field(default=5, ge=1)
    #: the name of the new field
    as_: str = Field(default="sum", alias="as")


class {cls}(udfd.Handler[{cls}Options]):
    def init(self) -> None:
        self.windows = udfd.GroupState(list)

    def point(self, point: udfd.Point) -> udfd.Output:
        window = self.windows[udfd.group_key(point)]
        window.append(udfd.get_number(point, self.options.field))
        del window[: -self.options.size]
        return udfd.derive(point, {{self.options.as_: sum(window)}})
'''

INIT = '''\
"""{dist}: a udfd plugin."""

from {package}.handler import {cls}

__all__ = ["{cls}"]
'''

TESTS = '''\
"""Tests of @{function}() on udfd's pytest plugin: real sockets, udfd's real engine."""

from {package} import {cls}

LP = """\\
cpu,host=a usage=1 1000000000
cpu,host=b usage=10 1000000000
cpu,host=a usage=2 2000000000
cpu,host=a usage=3 3000000000
"""


def test_sums_per_group(udf):
    run = udf.run({cls}, {{"field": "usage", "size": 2}}, points=udf.points(LP, group_by=["host"]))
    assert udf.lines(run) == [
        "cpu,host=a sum=1.0 1000000000",
        "cpu,host=b sum=10.0 1000000000",
        "cpu,host=a sum=3.0 2000000000",
        "cpu,host=a sum=5.0 3000000000",
    ]


def test_a_wrong_option_fails_init_readably(udf):
    run = udf.run({cls}, {{"field": "usage", "size": 0}})
    assert not run.init.success and "size" in run.init.error


def test_state_survives_a_restart(udf):
    points = udf.points(LP, group_by=["host"])
    options = {{"field": "usage", "size": 3}}
    first = udf.run({cls}, options, points=points[:3], snapshot=True)
    second = udf.run({cls}, options, points=points[3:], restore=first.snapshot)
    assert udf.lines(second) == ["cpu,host=a sum=6.0 3000000000"]


def test_conforms_to_what_kapacitor_expects(udf):
    udf.conformance({cls}, {{"field": "usage"}}, points=udf.points(LP, group_by=["host"]))
'''

README = """\
# {dist}

A Kapacitor UDF served by [udfd](https://github.com/udfd/udfd): `@{function}()` adds a
moving sum of one field, per group.

    pip install -e '.[test]'          # next to udfd, in the same environment
    pytest                            # the tests run it through udfd's engine
    udfd list                         # shows {function} and its options
    udfd run {function} --opt field=usage --opt size=3 < data.lp    # try it on line protocol

Serve it: `udfd serve` serves every installed handler with the embedded default
config, or add it to a config file:

```toml
[functions.{function}]
handler = "{function}"
```

`udfd kapacitor-conf` prints the `[udf.functions.{function}]` section for kapacitor.conf,
and a TICKscript calls it as:

```
stream
    |from().measurement('cpu')
    |groupBy('host')
    @{function}().field('usage').size(10).as('usage_sum')
```
"""


def write_plugin(name: str, directory: Path) -> list[Path]:
    """Write the distribution ``name`` into ``directory`` (which must not exist)."""
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a usable name: start with a letter; letters, digits, - and _"
        )
    module = name.replace("-", "_").lower()
    if keyword.iskeyword(module) or module in RESERVED or module in sys.stdlib_module_names:
        raise ScaffoldError(
            f"{name!r} would make a package {module!r} that is a Python keyword or shadows "
            "a module udfd, its dependencies or Python need; choose another name"
        )
    if directory.exists():
        raise ScaffoldError(f"{directory} exists already; choose another name or directory")
    function = name.replace("-", "_").lower()
    names = {
        "dist": name.replace("_", "-").lower(),
        "function": function,
        "package": function,
        "cls": "".join(part.capitalize() for part in function.split("_")),
        "udfd_version": __version__,
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{function}/__init__.py": INIT,
        f"src/{function}/handler.py": HANDLER,
        "tests/test_handler.py": TESTS,
    }
    written = []
    for relative, template in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**names))
        written.append(path)
    return written
