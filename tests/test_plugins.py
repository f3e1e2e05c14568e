"""udfd.plugins: discovery from metadata, loading in isolation, precise errors, fallback Info.

Installed distributions are faked the way pip leaves them: a ``*.dist-info``
directory with ``METADATA`` and ``entry_points.txt`` in a directory on
``sys.path``, read by the real ``importlib.metadata``; the handler modules are
plain files beside it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from udfd import client, plugins
from udfd.config import Function, load_config, resolve_functions
from udfd.fallback import InfoStore, declared_info, neutral_info, placeholder_spec
from udfd.handler import Edge, ErrorPolicy
from udfd.plugins import Failed, InstalledHandler, Loaded, discover, load_function
from udfd.proto import udf_pb2 as pb
from udfd.testing import serve_handler

GOOD = """
    from udfd import Edge, Handler, Options

    class AvgOptions(Options):
        field: str = "value"
        size: int = 10

    class Avg(Handler[AvgOptions]):
        pass

    class BatchAvg(Handler[AvgOptions]):
        wants = Edge.BATCH
        provides = Edge.BATCH
"""


@dataclass
class FakeSite:
    """A site-packages-like directory on sys.path."""

    root: Path

    def module(self, dotted: str, source: str) -> Path:
        *packages, last = dotted.split(".")
        where = self.root
        for package in packages:
            where = where / package
            where.mkdir(exist_ok=True)
            (where / "__init__.py").touch()
        path = where / f"{last}.py"
        path.write_text(textwrap.dedent(source))
        return path

    def dist(self, name: str, entry_points: dict[str, str], version: str = "1.0") -> None:
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[udfd.handlers]\n{lines}")

    def installed(self) -> tuple[InstalledHandler, ...]:
        """Only the fake distributions' handlers (the venv has first-party ones too)."""
        return tuple(h for h in discover() if h.distribution.startswith("fake-"))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSite]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield FakeSite(root)
    for name in set(sys.modules) - before:
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(tmp_path)):
            del sys.modules[name]


def function(handler: str, name: str = "fn", **kwargs: Any) -> Function:
    defaults: dict[str, Any] = {
        "name": name,
        "handler": handler,
        "socket": Path(f"/tmp/udfd-test/{name}.sock"),
        "socket_mode": None,
        "socket_group": None,
        "timeout": timedelta(seconds=10),
        "error_policy": ErrorPolicy.ERROR,
        "threaded": False,
        "options": MappingProxyType({}),
        "base_dir": Path("/nonexistent"),
        "origin": "config",
    }
    defaults.update(kwargs)
    if isinstance(defaults["options"], dict):
        defaults["options"] = MappingProxyType(defaults["options"])
    return Function(**defaults)


def loaded(result: Loaded | Failed) -> Loaded:
    assert isinstance(result, Loaded), result.error
    return result


def failed(result: Loaded | Failed) -> Failed:
    assert isinstance(result, Failed), f"unexpectedly loaded: {result}"
    return result


# ---------------------------------------------------------------- discovery


def test_discover_reads_metadata_without_importing(site: FakeSite) -> None:
    site.module("fake_heavy", "raise RuntimeError('imported at discovery')\n")
    site.dist("fake-heavy", {"heavy": "fake_heavy:Heavy", "other": "fake_heavy:Other"}, "2.3")
    assert site.installed() == (
        InstalledHandler("heavy", "fake_heavy:Heavy", "fake-heavy", "2.3"),
        InstalledHandler("other", "fake_heavy:Other", "fake-heavy", "2.3"),
    )
    assert "fake_heavy" not in sys.modules


def test_discover_with_autoload_disabled_is_empty(site: FakeSite) -> None:
    site.dist("fake-x", {"x": "fake_x:X"})
    assert discover(autoload=False) == ()


def test_first_party_handlers_are_entry_points_too() -> None:
    assert "state_change" in {h.name for h in discover()}


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["udfd.toml", "adsl.toml"])
def test_example_configs_load_their_handlers(name: str) -> None:
    config = load_config(Path(__file__).parent.parent / "config" / name, env={})
    installed = discover()
    for fn in resolve_functions(config, installed):
        result = load_function(
            fn, installed=installed, allow_distributions=config.allow_distributions
        )
        loaded(result)


def test_load_by_entry_point(site: FakeSite) -> None:
    site.module("fake_avg.handlers", GOOD)
    site.dist("fake-avg", {"avg": "fake_avg.handlers:Avg"})
    result = loaded(load_function(function("avg", "smooth"), installed=site.installed()))
    assert result.function == "smooth"
    assert result.error is None
    assert result.spec.name == "smooth"
    assert set(result.spec.info.options) == {"field", "size"}
    assert result.origin == "entry point avg = fake_avg.handlers:Avg (fake-avg 1.0)"


def test_load_by_entry_point_discovers_by_default(site: FakeSite) -> None:
    site.module("fake_avg2", GOOD)
    site.dist("fake-avg2", {"avg2": "fake_avg2:Avg"})
    assert loaded(load_function(function("avg2"))).spec.cls.__name__ == "Avg"


def test_load_by_module_reference(site: FakeSite) -> None:
    site.module("fake_mod.sub", GOOD)
    result = loaded(load_function(function("fake_mod.sub:BatchAvg")))
    assert result.spec.wants is Edge.BATCH
    assert result.origin == "fake_mod.sub:BatchAvg"


def test_load_by_file_relative_to_the_config(tmp_path: Path) -> None:
    handlers = tmp_path / "conf" / "handlers"
    handlers.mkdir(parents=True)
    (handlers / "avg.py").write_text(textwrap.dedent(GOOD))
    result = loaded(load_function(function("handlers/avg.py:Avg", base_dir=tmp_path / "conf")))
    assert result.spec.cls.__name__ == "Avg"
    # the same file by its absolute path is the same module, not a second copy
    again = loaded(load_function(function(f"{handlers / 'avg.py'}:Avg")))
    assert again.spec.cls is result.spec.cls


def test_forced_threads(site: FakeSite) -> None:
    site.module("fake_thr", GOOD)
    result = loaded(load_function(function("fake_thr:Avg", threaded=True)))
    assert result.spec.threaded is True
    assert result.spec.cls.options_model.__name__ == "AvgOptions"


# ---------------------------------------------------------------- precise errors


def test_entry_point_not_found_lists_installed(site: FakeSite) -> None:
    site.dist("fake-a", {"alpha": "m:A", "beta": "m:B"})
    result = failed(load_function(function("gamma", "adsl"), installed=site.installed()))
    assert result.error == (
        "adsl: entry point 'gamma' not found in group 'udfd.handlers' (installed: alpha, beta)"
    )
    assert failed(load_function(function("gamma"), installed=())).error.endswith(
        "(installed: none)"
    )


def test_your_module_is_missing(site: FakeSite) -> None:
    result = failed(load_function(function("fake_nothere.mod:X")))
    assert result.error == "fn: module 'fake_nothere.mod' not found"
    site.module("fake_pkg_only.other", "")
    result = failed(load_function(function("fake_pkg_only.mod:X")))
    assert result.error == "fn: module 'fake_pkg_only.mod' not found"


def test_a_module_it_imports_is_missing(site: FakeSite) -> None:
    site.module("fake_needs_numpy", "import numpy_not_installed_xyz\n")
    site.dist("fake-np", {"np": "fake_needs_numpy:H"}, "0.3")
    direct = failed(load_function(function("fake_needs_numpy:H")))
    assert direct.error == (
        "fn: module 'fake_needs_numpy' failed to import: No module named 'numpy_not_installed_xyz'"
    )
    via_ep = failed(load_function(function("np"), installed=site.installed()))
    assert via_ep.error == (
        "fn: entry point np = fake_needs_numpy:H (fake-np 0.3): module 'fake_needs_numpy' "
        "failed to import: No module named 'numpy_not_installed_xyz'"
    )


def test_module_raising_at_import(site: FakeSite) -> None:
    site.module("fake_boom", "raise ValueError('bad config in module')\n")
    result = failed(load_function(function("fake_boom:X")))
    assert (
        result.error == "fn: module 'fake_boom' failed to import: ValueError: bad config in module"
    )
    site.module("fake_exit", "import sys\nsys.exit(3)\n")
    assert "SystemExit: 3" in failed(load_function(function("fake_exit:X"))).error


def test_class_not_found_names_the_handlers_it_has(site: FakeSite) -> None:
    site.module("fake_cls", GOOD)
    result = failed(load_function(function("fake_cls:Average")))
    assert result.error == (
        "fn: class 'Average' not found in module 'fake_cls' (it defines: Avg, BatchAvg)"
    )


def test_file_errors(tmp_path: Path) -> None:
    missing = failed(load_function(function("nope.py:X", base_dir=tmp_path)))
    assert missing.error == f"fn: file '{tmp_path / 'nope.py'}' does not exist"
    no_class = failed(load_function(function("handlers/avg.py")))
    assert (
        no_class.error
        == "fn: file reference 'handlers/avg.py' needs the class: 'path/file.py:Class'"
    )
    (tmp_path / "broken.py").write_text("def (:\n")
    syntax = failed(load_function(function("broken.py:X", base_dir=tmp_path)))
    assert syntax.error.startswith(
        f"fn: file '{tmp_path / 'broken.py'}' failed to import: SyntaxError"
    )


def test_contract_errors(site: FakeSite) -> None:
    site.module(
        "fake_bad",
        """
        class NotAHandler:
            pass
        """,
    )
    result = failed(load_function(function("fake_bad:NotAHandler")))
    assert result.error == "fn: handler 'fake_bad:NotAHandler': not a subclass of udfd.Handler"
    assert result.info_source == "neutral"


def test_entry_point_without_class(site: FakeSite) -> None:
    site.dist("fake-noclass", {"nc": "fake_module_only"})
    result = failed(load_function(function("nc"), installed=site.installed()))
    assert "must name a class" in result.error


def test_one_name_from_two_distributions(site: FakeSite) -> None:
    site.dist("fake-one", {"dup": "a:A"})
    site.dist("fake-two", {"dup": "b:B"}, "2.0")
    result = failed(load_function(function("dup"), installed=site.installed()))
    assert result.error == (
        "fn: entry point 'dup' is provided by several distributions: fake-one 1.0, fake-two 2.0"
    )


def test_unknown_option_default_fails_at_load(site: FakeSite) -> None:
    site.module("fake_opts", GOOD)
    fn = function("fake_opts:Avg", options={"fild": "x", "size": 3})
    result = failed(load_function(fn))
    assert result.error == (
        "fn: functions.fn.options: the handler has no option 'fild' (it has: field, size)"
    )
    assert result.info_source == "declaration"
    assert set(result.info.options) == {"field", "size"}


def test_option_default_values_are_validated_at_load(site: FakeSite) -> None:
    site.module(
        "fake_alias",
        """
        from pydantic import Field
        from udfd import Handler, Options

        class AsOptions(Options):
            field: list[str] = Field(min_length=1)
            as_: int = Field(1, alias="as")
            label: str

        class Aliased(Handler[AsOptions]):
            pass
        """,
    )
    # "label" is required but may still come from the TICKscript: not an error here
    loaded(load_function(function("fake_alias:Aliased", options={"field": ["a"], "as": 2})))
    bad = failed(
        load_function(function("fake_alias:Aliased", options={"field": "a", "as_": "many"}))
    )
    assert bad.error == (
        "fn: functions.fn.options.field: Input should be a valid list (got 'a'); "
        "functions.fn.options.as_: Input should be a valid integer, unable to parse string "
        "as an integer (got 'many')"
    )
    assert bad.info_source == "declaration"


# ---------------------------------------------------------------- allow-list and autoload switch


def test_allow_list(site: FakeSite) -> None:
    site.module("fake_allowed", GOOD)
    site.dist("fake-good", {"good": "fake_allowed:Avg"})
    site.dist("fake-evil", {"evil": "fake_allowed:Avg"})
    installed = site.installed()
    allow = ["Fake_Good"]  # compared PEP 503-normalised
    ok = load_function(function("good"), installed=installed, allow_distributions=allow)
    loaded(ok)
    refused = failed(
        load_function(function("evil"), installed=installed, allow_distributions=allow)
    )
    assert refused.error == (
        "fn: entry point 'evil' comes from distribution 'fake-evil', "
        "which allow_distributions does not list (fake-good)"
    )


def test_allow_list_covers_module_references_of_installed_distributions() -> None:
    # udfd_handlers belongs to the installed first-party distribution "udfd-handlers"
    ref = "udfd_handlers.state_change:StateChange"
    refused = failed(load_function(function(ref), allow_distributions=["other"]))
    assert "belongs to udfd-handlers, which allow_distributions does not list" in refused.error
    loaded(load_function(function(ref), allow_distributions=["udfd-handlers"]))


def test_autoload_switch(site: FakeSite) -> None:
    site.module("fake_auto", GOOD)
    site.dist("fake-auto", {"auto": "fake_auto:Avg"})
    result = failed(load_function(function("auto"), installed=site.installed(), autoload=False))
    assert "plugin autoload is disabled (UDFD_DISABLE_PLUGIN_AUTOLOAD)" in result.error
    loaded(load_function(function("fake_auto:Avg"), autoload=False))


# ---------------------------------------------------------------- fallback Info


def test_state_file_records_and_falls_back(site: FakeSite, tmp_path: Path) -> None:
    site.module("fake_state", GOOD)
    store = InfoStore(tmp_path / "state" / "info.json")
    good = loaded(load_function(function("fake_state:Avg", "adsl"), store=store))
    data = json.loads((tmp_path / "state" / "info.json").read_text())
    assert data["format"] == 1
    assert set(data["functions"]["adsl"]["info"]["options"]) == {"field", "size"}
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["info.json"]  # no temp left

    # next start: the plugin is gone; a fresh store reads what the last one wrote
    fresh = InfoStore(tmp_path / "state" / "info.json")
    result = failed(load_function(function("fake_gone:Avg", "adsl"), store=fresh))
    assert result.info_source == "last-served"
    assert result.info == good.spec.info
    assert result.spec.info == good.spec.info
    # nothing known about another function: neutral
    other = failed(load_function(function("fake_gone:Avg", "other"), store=fresh))
    assert other.info_source == "neutral"
    assert other.info == neutral_info()


def test_unchanged_info_is_not_rewritten(site: FakeSite, tmp_path: Path) -> None:
    site.module("fake_same", GOOD)
    path = tmp_path / "info.json"
    store = InfoStore(path)
    loaded(load_function(function("fake_same:Avg"), store=store))
    path.write_text(path.read_text() + " ")  # a marker a rewrite would remove
    loaded(load_function(function("fake_same:Avg"), store=store))
    assert path.read_text().endswith(" ")


def test_unreadable_state_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "info.json"
    path.write_text("{not json")
    result = failed(load_function(function("fake_gone:X"), store=InfoStore(path)))
    assert result.info_source == "neutral"
    assert "ignoring unreadable Info state file" in caplog.text


def test_state_file_with_impossible_edges_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"format": 1, "functions": {"fn": {"info": {"wants": 7}}}}))
    result = failed(load_function(function("fake_gone:X"), store=InfoStore(path)))
    assert result.info_source == "neutral"


def test_unexpected_errors_fail_only_their_function(
    site: FakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.module("fake_weird", GOOD)

    def explode(cls: object, name: str = "") -> None:
        raise RuntimeError("plugin did something odd")

    monkeypatch.setattr(plugins, "inspect_handler", explode)
    result = failed(load_function(function("fake_weird:Avg")))
    assert result.error == "fn: handler 'fake_weird:Avg': RuntimeError: plugin did something odd"
    assert result.info_source == "neutral"


def test_unwritable_state_dir_does_not_fail_the_function(
    site: FakeSite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site.module("fake_ro", GOOD)
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = InfoStore(blocker / "info.json")  # its directory is a file
    loaded(load_function(function("fake_ro:Avg"), store=store))
    assert "cannot record Info" in caplog.text


def test_declaration_fallback_for_a_class_failing_its_contract(site: FakeSite) -> None:
    site.module(
        "fake_threaded_async",
        GOOD
        + """
    class Mixed(Handler[AvgOptions]):
        threaded = True
        wants = Edge.BATCH

        async def point(self, point):
            return None
    """,
    )
    result = failed(load_function(function("fake_threaded_async:Mixed")))
    assert "threaded handlers need plain callbacks" in result.error
    assert result.info_source == "declaration"
    assert result.info.wants == pb.BATCH
    assert set(result.info.options) == {"field", "size"}


def test_declared_info_of_unreadable_declarations() -> None:
    assert declared_info(object) is None
    assert declared_info("not a class") is None


@pytest.mark.anyio
async def test_failed_function_answers_info_and_refuses_init(tmp_path: Path) -> None:
    store = InfoStore(tmp_path / "info.json")
    info = pb.InfoResponse(wants=pb.BATCH, provides=pb.STREAM)
    info.options["field"].valueTypes.append(pb.STRING)
    store.put("adsl", info)
    result = failed(load_function(function("fake_gone.mod:X", "adsl"), store=store))
    assert result.error == "adsl: module 'fake_gone.mod' not found"
    async with serve_handler(result.spec, name="adsl", init_error=result.error) as served:
        async with client.connect(served.path) as kapacitor:
            assert await kapacitor.info() == info
            init = await kapacitor.init({"field": "x"})
            assert not init.success
            assert init.error == "adsl: module 'fake_gone.mod' not found"
    # the spec alone (without init_error) refuses Init with the reason too
    async with serve_handler(result.spec, name="adsl") as served:
        async with client.connect(served.path) as kapacitor:
            init = await kapacitor.init({"field": "x"})
            assert (init.success, init.error) == (False, "adsl: module 'fake_gone.mod' not found")


def test_placeholder_spec_follows_the_info() -> None:
    spec = placeholder_spec("f", pb.InfoResponse(wants=pb.BATCH, provides=pb.BATCH), "why")
    assert (spec.wants, spec.provides) == (Edge.BATCH, Edge.BATCH)
    assert spec.name == "f"
    assert spec.cls.raw_options


# ---------------------------------------------------------------- legacy handlers

LEGACY = """
    from kapacitor.udf.agent import Agent, Handler
    from kapacitor.udf import udf_pb2


    class Mirror(Handler):
        def __init__(self, agent):
            self._agent = agent

        def info(self):
            response = udf_pb2.Response()
            response.info.wants = udf_pb2.STREAM
            response.info.provides = udf_pb2.STREAM
            response.info.options["field"].valueTypes.append(udf_pb2.STRING)
            return response

        def init(self, init_req):
            response = udf_pb2.Response()
            response.init.success = True
            return response

        def snapshot(self):
            response = udf_pb2.Response()
            response.snapshot.snapshot = b""
            return response

        def restore(self, restore_req):
            response = udf_pb2.Response()
            response.restore.success = True
            return response

        def begin_batch(self, begin_req):
            raise Exception("not supported")

        def point(self, point):
            response = udf_pb2.Response()
            response.point.CopyFrom(point)
            self._agent.write_response(response, True)

        def end_batch(self, end_req):
            raise Exception("not supported")


    if __name__ == "__main__":
        agent = Agent()
        agent.handler = Mirror(agent)
        agent.start()
        agent.wait()
"""


def test_legacy_handler_by_file(tmp_path: Path) -> None:
    pytest.importorskip("udfd.legacy", reason="udfd.legacy (legacy adapter) not available")
    (tmp_path / "mirror.py").write_text(textwrap.dedent(LEGACY))
    result = loaded(load_function(function("mirror.py:Mirror", "mirror", base_dir=tmp_path)))
    assert result.origin.startswith("legacy file ")
    assert list(result.spec.info.options) == ["field"]
    assert result.spec.threaded


def test_legacy_handler_by_module(site: FakeSite) -> None:
    pytest.importorskip("udfd.legacy", reason="udfd.legacy (legacy adapter) not available")
    site.module("fake_legacy_mirror", LEGACY)
    result = loaded(load_function(function("fake_legacy_mirror:Mirror", "mirror")))
    assert list(result.spec.info.options) == ["field"]
