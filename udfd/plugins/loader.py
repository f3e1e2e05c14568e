"""Finding and loading handlers, in two steps and in isolation.

1. :func:`discover` reads entry-point metadata (group ``udfd.handlers``) without
   importing anything, so listing plugins and resolving the config stay cheap.
2. :func:`load_function` imports one configured function's handler, checks the
   handler contract and returns :class:`Loaded` or :class:`Failed`. A handler
   that cannot be imported or breaks the contract fails only its own function:
   :class:`Failed` carries the reason (Init fails with it) and a fallback Info —
   the handler's declaration if it could be read, else the Info last served for
   the function (:class:`InfoStore`), else a neutral one — so Kapacitor, which
   asks every function for Info at start-up, still starts.

A handler reference is an entry-point name, ``package.module:Class``, or
``path/file.py:Class`` (relative paths: from the config file's directory).
Errors tell "your module is missing" from "a module it imports is missing".
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import types
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pydantic

from udfd.config import Function, normalize_distribution
from udfd.errors import HandlerDefinitionError, UdfdError
from udfd.handler import Handler, HandlerSpec, inspect_handler
from udfd.options import is_config_only
from udfd.plugins.compat import install_kapacitor_shim, shim_installed
from udfd.plugins.fallback import InfoRecord, declared_info, neutral_info, placeholder_spec
from udfd.plugins.importer import (
    LOAD_ERRORS,
    ImportFromStringError,
    describe_load_error,
    get_attribute,
    import_file,
    import_module,
    reraise_if_interrupt,
    split_target,
)
from udfd.protocol.proto import udf_pb2 as pb

log = logging.getLogger("udfd.plugins.loader")

GROUP = "udfd.handlers"
#: a file written for the official agent: imported with the stand-ins in place and
#: its directory on sys.path, as it ran as a script (see udfd.plugins.legacy.load_legacy_file)
_LEGACY_SOURCE = re.compile(r"^\s*(from|import)\s+kapacitor\.udf", re.MULTILINE)


class PluginError(UdfdError):
    """A handler could not be loaded; ``declared`` is its Info when it could be read."""

    def __init__(self, message: str, declared: pb.InfoResponse | None = None) -> None:
        super().__init__(message)
        self.declared = declared


# ---------------------------------------------------------------- discovery


@dataclass(frozen=True)
class InstalledHandler:
    """One entry point of group ``udfd.handlers``, read from metadata only."""

    name: str
    value: str  # "package.module:Class"
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.name} = {self.value} ({self.distribution} {self.version})".strip()


def discover(*, autoload: bool = True) -> tuple[InstalledHandler, ...]:
    """Every installed handler entry point, sorted by name; nothing is imported.

    With ``autoload`` False (``UDFD_DISABLE_PLUGIN_AUTOLOAD``) entry points are
    not consulted at all and the result is empty.
    """
    if not autoload:
        return ()
    found = {
        InstalledHandler(
            name=ep.name,
            value=ep.value,
            distribution=ep.dist.name if ep.dist is not None else "",
            version=ep.dist.version if ep.dist is not None else "",
        )
        for ep in importlib.metadata.entry_points(group=GROUP)
    }
    return tuple(sorted(found, key=lambda h: (h.name, h.distribution)))


# ---------------------------------------------------------------- importing


def _is_legacy(obj: object) -> bool:
    """:func:`udfd.plugins.legacy.is_legacy_handler_class`, importing udfd.plugins.legacy only for a
    class that is not a udfd handler (udfd handlers never pay for the adapter)."""
    if not isinstance(obj, type) or issubclass(obj, Handler):
        return False
    from udfd.plugins.legacy import is_legacy_handler_class

    return is_legacy_handler_class(obj)


def _get_class(module: types.ModuleType, attr: str, where: str) -> object:
    """The class ``attr``; when missing, name the handler classes the module does define."""
    if hasattr(module, attr.partition(".")[0]):
        return get_attribute(module, attr, where)
    handlers = sorted(
        n for n, v in vars(module).items()
        if isinstance(v, type) and (issubclass(v, Handler) or _is_legacy(v))
        and v.__module__ == module.__name__
    )  # fmt: skip
    hint = f" (it defines: {', '.join(handlers)})" if handlers else ""
    return get_attribute(module, attr, where, hint=hint)


def _import_handler_module(name: str) -> types.ModuleType:
    """Import a handler module; one written for Kapacitor's agent gets udfd's stand-in.

    The stand-ins are installed only once a ``kapacitor.udf...`` import fails
    (then the import is retried once), not up front: a process-wide fake
    ``kapacitor`` package would mislead any plugin that checks whether the real
    one is installed. The missing name is ``kapacitor`` when no such package
    exists and ``kapacitor.udf`` when an unrelated ``kapacitor`` package does;
    the shim covers both.
    """
    try:
        return import_module(name)
    except ImportFromStringError as exc:
        cause = exc.__cause__
        missing = (cause.name or "") if isinstance(cause, ModuleNotFoundError) else ""
        if missing.partition(".")[0] != "kapacitor" or shim_installed():
            raise
        if not install_kapacitor_shim():  # the official package is there: not our problem
            raise
    return import_module(name)


# ---------------------------------------------------------------- resolving references


@dataclass(frozen=True)
class _Found:
    obj: object
    origin: str


def _from_file(ref: str, target: str, attr: str, base_dir: Path) -> _Found:
    path = Path(target) if Path(target).is_absolute() else base_dir / target
    if not path.is_file():
        raise PluginError(f"file {str(path)!r} does not exist")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise PluginError(f"{attr!r} in {ref!r} is not a class name")
    if _LEGACY_SOURCE.search(path.read_text("utf-8", errors="replace")):
        from udfd.plugins import legacy  # the stand-in agent, sibling imports, no __main__ block

        try:
            return _Found(legacy.load_legacy_file(path, attr), f"legacy file {path}:{attr}")
        except HandlerDefinitionError as exc:
            raise PluginError(str(exc)) from exc.__cause__
    return _Found(_get_class(import_file(path), attr, f"file {str(path)!r}"), f"{path}:{attr}")


def _from_module(ref: str, allowed: set[str]) -> _Found:
    module_name, attr = split_target(ref, "handler")
    if allowed:  # code of a distribution that is not allowed stays out, however named
        top = module_name.partition(".")[0]
        dists = importlib.metadata.packages_distributions().get(top, [])
        if dists and not any(normalize_distribution(d) in allowed for d in dists):
            raise PluginError(
                f"module {module_name!r} belongs to {', '.join(dists)}, "
                "which allow_distributions does not list"
            )
    module = _import_handler_module(module_name)
    return _Found(_get_class(module, attr, f"module {module_name!r}"), ref)


def _from_entry_point(
    name: str, installed: Sequence[InstalledHandler], autoload: bool, allowed: set[str]
) -> _Found:
    if not autoload:
        raise PluginError(
            f"entry point {name!r}: plugin autoload is disabled (UDFD_DISABLE_PLUGIN_AUTOLOAD); "
            "reference the handler as 'package.module:Class' or 'path/file.py:Class'"
        )
    matches = [h for h in installed if h.name == name]
    if not matches:
        names = sorted({h.name for h in installed})
        raise PluginError(
            f"entry point {name!r} not found in group {GROUP!r} "
            f"(installed: {', '.join(names) if names else 'none'})"
        )
    if len(matches) > 1:
        raise PluginError(
            f"entry point {name!r} is provided by several distributions: "
            + ", ".join(f"{h.distribution} {h.version}" for h in matches)
        )
    ep = matches[0]
    if allowed and normalize_distribution(ep.distribution) not in allowed:
        raise PluginError(
            f"entry point {name!r} comes from distribution {ep.distribution!r}, "
            f"which allow_distributions does not list ({', '.join(sorted(allowed))})"
        )
    try:
        module_name, attr = split_target(ep.value, "value")
        obj = _get_class(_import_handler_module(module_name), attr, f"module {module_name!r}")
    except ImportFromStringError as exc:
        raise PluginError(f"entry point {ep.describe()}: {exc}") from exc.__cause__
    return _Found(obj, f"entry point {ep.describe()}")


def _resolve(
    ref: str,
    *,
    base_dir: Path,
    installed: Sequence[InstalledHandler],
    autoload: bool,
    allow: Collection[str],
) -> _Found:
    """Find the class ``ref`` names: a file, a module, or an entry point, in that order."""
    allowed = {normalize_distribution(d) for d in allow}
    target, sep, attr = ref.strip().rpartition(":")
    try:
        if sep and (target.endswith(".py") or "/" in target):
            return _from_file(ref, target, attr, base_dir)
        if sep:
            return _from_module(ref, allowed)
    except ImportFromStringError as exc:
        raise PluginError(str(exc)) from exc.__cause__
    if ref.endswith(".py") or "/" in ref:
        raise PluginError(f"file reference {ref!r} needs the class: 'path/file.py:Class'")
    return _from_entry_point(ref.strip(), installed, autoload, allowed)


def load_handler(
    ref: str,
    *,
    function: str,
    base_dir: Path | None = None,
    installed: Sequence[InstalledHandler] | None = None,
    autoload: bool = True,
    allow_distributions: Collection[str] = (),
    threaded: bool = False,
) -> tuple[HandlerSpec, str]:
    """Import the handler ``ref`` and check its contract: (spec, where it came from).

    Raises :class:`PluginError` (without the function's name; callers add it),
    whatever went wrong, even in plugin code that raised something unexpected.
    """
    try:
        return _load_handler(
            ref, function, base_dir, installed, autoload, allow_distributions, threaded
        )
    except PluginError:
        raise
    except LOAD_ERRORS as exc:  # even sys.exit() in plugin code fails only this handler
        reraise_if_interrupt(exc)
        log.warning("%s: unexpected error loading handler %r", function, ref, exc_info=exc)
        raise PluginError(f"handler {ref!r}: {describe_load_error(exc)}") from exc


def _load_handler(
    ref: str,
    function: str,
    base_dir: Path | None,
    installed: Sequence[InstalledHandler] | None,
    autoload: bool,
    allow_distributions: Collection[str],
    threaded: bool,
) -> tuple[HandlerSpec, str]:
    found = _resolve(
        ref,
        base_dir=base_dir or Path.cwd(),
        installed=discover(autoload=autoload) if installed is None else installed,
        autoload=autoload,
        allow=allow_distributions,
    )
    obj = found.obj
    if _is_legacy(obj):
        from udfd.plugins import legacy

        try:
            obj = legacy.legacy_handler(cast("type[Any]", obj), function)
        except HandlerDefinitionError as exc:
            detail = str(exc).removeprefix(f"{function}: ")
            raise PluginError(f"legacy handler {ref!r}: {detail}") from exc.__cause__
    if threaded and isinstance(obj, type) and issubclass(obj, Handler) and not obj.threaded:
        obj = type(obj.__name__, (obj,), {"threaded": True, "__module__": obj.__module__})
    try:
        spec = inspect_handler(obj, function)
    except HandlerDefinitionError as exc:
        detail = str(exc).removeprefix(f"{function}: ")
        raise PluginError(f"handler {ref!r}: {detail}", declared_info(obj)) from None
    return spec, found.origin


# ---------------------------------------------------------------- load results


@dataclass(frozen=True)
class Loaded:
    function: str
    spec: HandlerSpec
    origin: str
    error: None = None


@dataclass(frozen=True)
class Failed:
    """A function whose handler did not load: serve ``spec`` with ``init_error=error``."""

    function: str
    error: str
    info: pb.InfoResponse
    info_source: Literal["declaration", "last-served", "neutral"]
    spec: HandlerSpec = field(repr=False)


def load_function(
    function: Function,
    *,
    installed: Sequence[InstalledHandler] | None = None,
    autoload: bool = True,
    allow_distributions: Collection[str] = (),
    store: InfoRecord | None = None,
) -> Loaded | Failed:
    """Load one function's handler; never raises for a broken plugin.

    Blocking (imports): the daemon calls it in a worker thread after every socket
    is bound. On success the Info is recorded in ``store`` for later fallbacks.
    """
    try:
        spec, origin = load_handler(
            function.handler,
            function=function.name,
            base_dir=function.base_dir,
            installed=installed,
            autoload=autoload,
            allow_distributions=allow_distributions,
            threaded=function.threaded,
        )
        _check_option_defaults(function, spec)
    except PluginError as exc:  # whatever a plugin does, only its own function fails
        error, info = f"{function.name}: {exc}", exc.declared
        source: Literal["declaration", "last-served", "neutral"] = "declaration"
        if info is None:
            source, info = "last-served", store.get(function.name) if store else None
        if info is None:
            source, info = "neutral", neutral_info()
        spec = placeholder_spec(function.name, info, error)
        return Failed(function.name, error, info, source, spec)
    if store is not None:
        store.put(function.name, spec.info)
    return Loaded(function.name, spec, origin)


def _check_option_defaults(function: Function, spec: HandlerSpec) -> None:
    """Configured option defaults must fit the handler's options, or every Init would fail.

    Unknown names are errors; values are validated by the options model itself
    (errors about options the TICKscript must still give are not ours to report).
    """
    if spec.cls.raw_options or not function.options:
        return
    model = spec.cls.options_model
    config_only = {
        name for name, info in model.model_fields.items() if is_config_only(info.metadata)
    }
    known = set(spec.options) | {s.field for s in spec.options.values()} | config_only
    unknown = sorted(set(function.options) - known)
    where = f"functions.{function.name}.options"
    if unknown:
        has = ", ".join(sorted(spec.options)) or "none"
        raise PluginError(
            f"{where}: the handler has no option {', '.join(map(repr, unknown))} (it has: {has})",
            spec.info,
        )
    given = {  # model field -> the key as written in the config
        (spec.options[key].field if key in spec.options else key): key for key in function.options
    }
    data = {f: function.options[key] for f, key in given.items()}
    report = given | {model.model_fields[f].alias or f: key for f, key in given.items()}
    try:
        model.model_validate(data)  # runs the plugin's own validators
    except pydantic.ValidationError as exc:
        problems = [
            f"{where}.{report[err['loc'][0]]}: {err['msg']} (got {err['input']!r})"
            for err in exc.errors(include_url=False)
            if err["loc"] and err["loc"][0] in report and err["type"] != "missing"
        ]
        if problems:
            raise PluginError("; ".join(problems), spec.info) from None
    except LOAD_ERRORS as exc:  # a validator that raises anything else, or sys.exit()s
        reraise_if_interrupt(exc)
        raise PluginError(
            f"{where}: validating the configured defaults failed: {describe_load_error(exc)}",
            spec.info,
        ) from exc
