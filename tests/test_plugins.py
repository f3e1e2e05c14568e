"""udfd.plugins.loader: discovery from metadata, loading in isolation, precise errors, fallback Info.

Installed distributions are faked the way pip leaves them: a ``*.dist-info``
directory with ``METADATA`` and ``entry_points.txt`` in a directory on
``sys.path``, read by the real ``importlib.metadata``; the handler modules are
plain files beside it.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from udfd.config import Function, load_config, resolve_functions
from udfd.errors import UdfdError
from udfd.handler import Edge, ErrorPolicy, Handler, inspect_handler
from udfd.plugins import loader as plugins
from udfd.plugins.compat import shim_installed, uninstall_kapacitor_shim
from udfd.plugins.fallback import InfoStore, declared_info, neutral_info, placeholder_spec
from udfd.plugins.importer import ImportFromStringError
from udfd.plugins.loader import Failed, InstalledHandler, Loaded, discover, load_function
from udfd.protocol import client
from udfd.protocol.proto import udf_pb2 as pb
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


def in_worker(load: Callable[[], Loaded | Failed]) -> Loaded | Failed | BaseException:
    """Run ``load`` in a worker thread, as the daemon loads handlers.

    Whatever escapes is returned, not re-raised: a ``KeyboardInterrupt`` or
    ``SystemExit`` re-raised here would end the test session, not fail a test.
    """
    box: list[Loaded | Failed | BaseException] = []

    def run() -> None:
        try:
            box.append(load())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box[0]


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
    functions = resolve_functions(config, installed)
    assert functions, f"{name} configures no function"
    for fn in functions:
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


def test_one_file_loaded_by_two_functions_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the daemon loads functions concurrently; the second load of a file must wait
    # for the first, not take its half-run module from sys.modules
    signals = types.ModuleType("udfd_test_signals")
    signals.STARTED, signals.GO = threading.Event(), threading.Event()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "udfd_test_signals", signals)
    (tmp_path / "slow.py").write_text(
        "import udfd_test_signals as s\ns.STARTED.set()\ns.GO.wait(10)\n" + textwrap.dedent(GOOD)
    )
    results: dict[str, Loaded | Failed | BaseException] = {}

    def load(name: str) -> None:
        results[name] = in_worker(lambda: load_function(function(f"{tmp_path}/slow.py:Avg", name)))

    first = threading.Thread(target=load, args=("first",))
    first.start()
    assert signals.STARTED.wait(10)  # type: ignore[attr-defined]
    second = threading.Thread(target=load, args=("second",))
    second.start()
    second.join(0.5)  # without the wait it has failed by now
    signals.GO.set()  # type: ignore[attr-defined]
    first.join()
    second.join()
    a, b = results["first"], results["second"]
    assert isinstance(a, Loaded) and isinstance(b, Loaded), (a, b)
    assert a.spec.cls is b.spec.cls


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
    assert failed(load_function(function("fake_exit:X"))).error == (
        "fn: module 'fake_exit' failed to import: called sys.exit(3) while loading"
    )


EXITS = [
    pytest.param("sys.exit(3)", "called sys.exit(3) while loading", id="sys.exit"),
    pytest.param("raise KeyboardInterrupt", "KeyboardInterrupt", id="KeyboardInterrupt"),
    pytest.param("raise GeneratorExit('bye')", "GeneratorExit: bye", id="GeneratorExit"),
    pytest.param("raise RuntimeError('odd')", "RuntimeError: odd", id="RuntimeError"),
]

LEGACY_EXITING = """
    import sys

    from kapacitor.udf import udf_pb2
    from kapacitor.udf.agent import Handler

    {module}


    class H(Handler):
        def __init__(self, agent):
            {init}

        def info(self):
            {info}
            return udf_pb2.Response()
"""

VALIDATOR_EXITING = """
    import sys

    from pydantic import field_validator
    from udfd import Handler, Options

    {module}


    class O(Options):
        size: int = 1

        @field_validator("size")
        @classmethod
        def _size(cls, value):
            {validator}


    class H(Handler[O]):
        pass
"""


@pytest.mark.parametrize(("statement", "description"), EXITS)
@pytest.mark.parametrize(
    ("kind", "where", "prefix"),
    [
        pytest.param("module", "module", "fn: module 'fake_exiting' failed to import: ",
                     id="module-import"),
        pytest.param("file", "module", "fn: file '{path}' failed to import: ", id="file-import"),
        pytest.param("legacy file", "module", "fn: file '{path}' failed to import: ",
                     id="legacy-file-import"),
        pytest.param("legacy module", "module", "fn: module 'fake_exiting' failed to import: ",
                     id="legacy-module-import"),
        pytest.param("legacy file", "init", "fn: legacy handler '{ref}': creating the handler "
                     "with an agent failed: ", id="legacy-init"),
        pytest.param("legacy file", "info", "fn: legacy handler '{ref}': info() failed: ",
                     id="legacy-file-info"),
        pytest.param("legacy module", "info", "fn: legacy handler '{ref}': info() failed: ",
                     id="legacy-module-info"),
        pytest.param("file", "validator", "fn: functions.fn.options: validating the configured "
                     "defaults failed: ", id="option-validator"),
    ],
)  # fmt: skip
def test_handler_code_that_exits_at_load_time_fails_only_its_function(
    site: FakeSite, kind: str, where: str, prefix: str, statement: str, description: str
) -> None:
    code = {"module": "", "init": "pass", "info": "pass", "validator": "return value"}
    code[where] = statement
    template = LEGACY_EXITING if kind.startswith("legacy") else VALIDATOR_EXITING
    source = textwrap.dedent(template).format(**code)
    path = site.root / "exiting.py"
    if kind.endswith("module"):
        site.module("fake_exiting", source)
        ref = "fake_exiting:H"
    else:
        path.write_text(source)
        ref = f"{path}:H"
    options = {"size": 2} if where == "validator" else {}
    result = in_worker(lambda: load_function(function(ref, options=options)))
    assert isinstance(result, Failed), f"escaped the loader: {result!r}"
    assert result.error == prefix.format(path=path, ref=ref) + description
    # a declaration that got as far as its option defaults still gives the Info
    assert result.info_source == ("declaration" if where == "validator" else "neutral")


def test_a_keyboard_interrupt_in_the_main_thread_is_not_contained(site: FakeSite) -> None:
    # there it may be a real Ctrl-C (``udfd list`` loads in the main thread)
    site.module("fake_ctrl_c", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_function(function("fake_ctrl_c:H"))


def test_load_errors_are_udfd_errors() -> None:
    assert issubclass(plugins.PluginError, UdfdError)
    assert issubclass(ImportFromStringError, UdfdError)


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

    class BadEdge(Handler):
        wants = 7  # type: ignore[assignment]

    assert declared_info(BadEdge) is None


def test_declared_info_is_what_the_handler_would_serve(site: FakeSite) -> None:
    site.module("fake_decl", GOOD)
    module = sys.modules[loaded(load_function(function("fake_decl:Avg"))).spec.cls.__module__]
    for cls in (module.Avg, module.BatchAvg):
        assert declared_info(cls) == inspect_handler(cls).info


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
    pytest.importorskip(
        "udfd.plugins.legacy", reason="udfd.plugins.legacy (legacy adapter) not available"
    )
    (tmp_path / "mirror.py").write_text(textwrap.dedent(LEGACY))
    result = loaded(load_function(function("mirror.py:Mirror", "mirror", base_dir=tmp_path)))
    assert result.origin.startswith("legacy file ")
    assert list(result.spec.info.options) == ["field"]
    assert result.spec.threaded


@pytest.fixture
def no_shim() -> Iterator[None]:
    """No ``kapacitor.udf`` stand-ins installed (earlier tests may have left them)."""
    uninstall_kapacitor_shim()
    yield
    uninstall_kapacitor_shim()


@pytest.mark.usefixtures("no_shim")
def test_legacy_handler_by_module(site: FakeSite) -> None:
    site.module("fake_legacy_mirror", LEGACY)
    site.dist("fake-legacy", {"legacy_mirror": "fake_legacy_mirror:Mirror"})
    assert not shim_installed()
    result = loaded(load_function(function("fake_legacy_mirror:Mirror", "mirror")))
    assert list(result.spec.info.options) == ["field"]
    assert result.spec.threaded
    assert shim_installed()
    # by entry point too, again without the stand-ins in place beforehand
    uninstall_kapacitor_shim()
    del sys.modules["fake_legacy_mirror"]
    via_ep = loaded(load_function(function("legacy_mirror"), installed=site.installed()))
    assert list(via_ep.spec.info.options) == ["field"]


@pytest.mark.usefixtures("no_shim")
def test_legacy_handler_by_module_beside_an_unrelated_kapacitor_package(site: FakeSite) -> None:
    # a ``kapacitor`` package without ``udf`` (say, an API client): the import then
    # misses ``kapacitor.udf``, not ``kapacitor``, and the stand-ins must still step in
    site.module("kapacitor.client", "NAME = 'an unrelated kapacitor package'\n")
    site.module("fake_legacy_beside", LEGACY)
    result = loaded(load_function(function("fake_legacy_beside:Mirror", "mirror")))
    assert list(result.spec.info.options) == ["field"]
    # the package is kept, with the stand-ins added beside what it has
    kapacitor = sys.modules["kapacitor"]
    assert Path(kapacitor.__file__ or "").parent == site.root / "kapacitor"
    assert shim_installed() and kapacitor.udf is sys.modules["kapacitor.udf"]


@pytest.mark.anyio
@pytest.mark.usefixtures("no_shim")
async def test_legacy_handler_by_module_serves_on_a_socket(site: FakeSite) -> None:
    site.module("fake_legacy_served", LEGACY)
    result = loaded(load_function(function("fake_legacy_served:Mirror", "mirror")))
    sent = pb.Point(name="cpu", time=1, fieldsDouble={"v": 1.0})
    async with serve_handler(result.spec, name="mirror") as served:
        async with client.connect(served.path) as kapacitor:
            assert list((await kapacitor.info()).options) == ["field"]
            assert (await kapacitor.init({"field": "value"})).success
            await kapacitor.send_point(sent)
            assert await kapacitor.wait_output(1) == [sent]
            await kapacitor.finish()
    assert kapacitor.errors == []


NOT_LEGACY = """
    class InfoAndInit:
        # has info and init, as many classes do; not written for Kapacitor's agent

        def info(self):
            return {}

        def init(self, request):
            return None


    class DuckTyped:
        # written for the official agent without subclassing its Handler

        def __init__(self, agent):
            self._agent = agent

        def info(self):
            from kapacitor.udf import udf_pb2

            response = udf_pb2.Response()
            response.info.wants = udf_pb2.STREAM
            response.info.provides = udf_pb2.STREAM
            return response

        def init(self, init_req):
            return None

        def begin_batch(self, begin_req):
            pass

        def point(self, point):
            pass

        def end_batch(self, end_req):
            pass
"""


def test_only_legacy_handler_classes_go_to_the_legacy_adapter(site: FakeSite) -> None:
    site.module("fake_not_legacy", NOT_LEGACY)
    plain = failed(load_function(function("fake_not_legacy:InfoAndInit")))
    assert plain.error == (
        "fn: handler 'fake_not_legacy:InfoAndInit': not a subclass of udfd.Handler"
    )
    duck = loaded(load_function(function("fake_not_legacy:DuckTyped")))
    assert duck.spec.threaded and duck.spec.cls.raw_options  # the adapter
    missing = failed(load_function(function("fake_not_legacy:Nope")))
    assert missing.error.endswith("(it defines: DuckTyped)")
