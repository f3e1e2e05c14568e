"""Serve handlers written for the official Kapacitor Python agent, unchanged.

A legacy handler (``kapacitor.udf.agent.Handler``) answers management requests
by returning ``udf_pb2.Response`` messages and emits data by calling
``self._agent.write_response(response)`` from inside its callbacks, or from any
thread it likes. This module is the load-time half of serving one: it tells
legacy classes from others (:func:`is_legacy_handler_class`), imports them from
files (:func:`load_legacy_file`, :func:`load_legacy`), and wraps one in a
:class:`udfd.Handler` subclass (:func:`legacy_handler`) so udfd's engine serves
it like any other. Info comes from the legacy ``info()``, called once here on a
throwaway instance (:func:`legacy_info`), so Kapacitor's start-up probe never
runs handler code.

What the wrapped class does once Kapacitor connects (one legacy instance per
connection, ``write_response`` output buffered and sent after each callback,
an ``ErrorResponse`` ending the connection, common mistakes tolerated with a
warning) is the runtime half, in :mod:`udfd.plugins.legacy_adapter`. Its public names
are re-exported here, so ``udfd.plugins.legacy`` stays the one import path for legacy
support.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, cast

from google.protobuf.message import Message

from udfd.errors import HandlerDefinitionError
from udfd.handler import Edge, Handler
from udfd.plugins.compat import UDF_PB2, install_kapacitor_shim
from udfd.plugins.compat import kapacitor_agent as stand_in_agent
from udfd.plugins.compat import kapacitor_udf_pb2 as stand_in_pb2
from udfd.plugins.importer import (
    LOAD_ERRORS,
    ImportFromStringError,
    describe_load_error,
    import_file,
    reraise_if_interrupt,
)
from udfd.plugins.legacy_adapter import (
    LegacyAdapter,
    LegacyHandlerError,
    ReportedError,
    UdfdAgent,
    management_result,
)
from udfd.protocol.proto import udf_pb2 as pb

log = logging.getLogger("udfd.plugins.legacy")

#: messages udfd hands to legacy callbacks (converted when the official package is used)
_INPUT_TYPES = ("Point", "BeginBatch", "EndBatch", "InitRequest", "RestoreRequest")
#: modules whose Handler base class defines the legacy callbacks (not overrides)
_BASE_MODULES = frozenset({"kapacitor.udf.agent", stand_in_agent.__name__})
#: what the official agent calls on any handler, whatever its edges; snapshot and
#: restore are left out because the adapter tolerates their absence
_REQUIRED_CALLBACKS = ("info", "init", "begin_batch", "point", "end_batch")


# ------------------------------------------------------------------ the load-time agent


class _LoadTimeAgent(stand_in_agent.Agent):
    """The throwaway agent of the instance that answers ``info()`` at load time."""

    def __init__(self, label: str) -> None:  # no super(): the stand-in refuses to start
        self.handler: Any = None
        self._label = label

    def write_response(self, response: Any, flush: bool = False) -> None:
        log.warning("%s: output written outside a connection (at load time) dropped", self._label)

    def start(self) -> None:
        """udfd runs the handler; nothing to start."""

    def wait(self) -> None:
        """udfd runs the handler; nothing to wait for."""


# ------------------------------------------------------------------ building adapters


def _overrides(cls: type[Any], name: str) -> bool:
    """True when ``cls`` defines ``name`` itself rather than inheriting the agent's base."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass.__module__ not in _BASE_MODULES
    return False


def is_legacy_handler_class(obj: object) -> bool:
    """True for a class written for the official agent: the plugin loader serves it adapted.

    The one test of "legacy" in udfd. A class qualifies when it subclasses the
    agent's ``Handler`` (the official one or udfd's stand-in), or, since the
    official agent never required that base, when it defines every callback
    the agent calls on any handler (``info``, ``init``, ``begin_batch``,
    ``point``, ``end_batch``). Having ``info`` and ``init`` alone is not
    enough: unrelated classes have those, and would be reported as broken
    legacy handlers instead of as what they are. A :class:`udfd.Handler` never
    qualifies.
    """
    if not isinstance(obj, type) or issubclass(obj, Handler):
        return False
    if any(
        klass.__name__ == "Handler" and klass.__module__ in _BASE_MODULES for klass in obj.__mro__
    ):
        return True
    return all(callable(getattr(obj, name, None)) for name in _REQUIRED_CALLBACKS)


def legacy_info(legacy_cls: type[Any], name: str = "") -> pb.InfoResponse:
    """Ask a legacy handler class for its Info, as udfd's own class.

    Creates a throwaway instance with an agent that drops output and calls
    ``info()``. Runs handler code: call it off the event loop. Raises
    :class:`HandlerDefinitionError` naming what failed.
    """
    label = name or legacy_cls.__qualname__
    where = f"{label}: info()"
    try:
        instance = legacy_cls(_LoadTimeAgent(label))
    except LOAD_ERRORS as exc:  # sys.exit() in a ported script fails this handler only
        reraise_if_interrupt(exc)
        raise HandlerDefinitionError(
            f"{label}: creating the handler with an agent failed: {describe_load_error(exc)}"
        ) from exc
    try:
        result = instance.info()
        info, notes = management_result(result, "info", where)
    except ReportedError as exc:
        raise HandlerDefinitionError(f"{where} returned an error: {exc}") from None
    except LOAD_ERRORS as exc:
        reraise_if_interrupt(exc)
        raise HandlerDefinitionError(f"{where} failed: {describe_load_error(exc)}") from exc
    for note in notes:
        log.warning("legacy handler %s: %s", label, note)
    if info is None:
        log.warning(
            "legacy handler %s: info() returned no InfoResponse; serving it as "
            "stream in, stream out, without options",
            label,
        )
        info = pb.InfoResponse()
    for attr in ("wants", "provides"):
        value = getattr(info, attr)
        if value not in (pb.STREAM, pb.BATCH):
            raise HandlerDefinitionError(f"{where} declares {attr}={value}: not STREAM or BATCH")
    own = pb.InfoResponse()
    own.CopyFrom(info)
    return own


def _legacy_types(legacy_cls: type[Any]) -> dict[str, type[Message]]:
    """The official package's classes when the legacy code uses them, else ``{}``."""
    module = sys.modules.get(legacy_cls.__module__)
    candidate = getattr(module, "udf_pb2", None)
    if not isinstance(getattr(candidate, "Point", None), type):
        candidate = sys.modules.get(UDF_PB2)
    if candidate is None or candidate is stand_in_pb2 or candidate is pb:
        return {}
    types: dict[str, type[Message]] = {}
    for type_name in _INPUT_TYPES:
        cls = getattr(candidate, type_name, None)
        ours = getattr(pb, type_name)
        if isinstance(cls, type) and issubclass(cls, Message) and cls is not ours:
            types[type_name] = cls
    return types


def legacy_handler(legacy_cls: type[Any], name: str = "") -> type[LegacyAdapter]:
    """Wrap a legacy handler class as a :class:`udfd.Handler` subclass.

    Installs the ``kapacitor.udf`` stand-ins (unless the official package is
    importable): a class can be legacy without its module importing
    ``kapacitor.udf`` at the top (a duck-typed handler that imports ``udf_pb2``
    inside its callbacks), and its callbacks will need them. Calls
    :func:`legacy_info` (handler code: keep it off the event loop).
    """
    label = name or getattr(legacy_cls, "__qualname__", repr(legacy_cls))
    if not isinstance(legacy_cls, type):
        raise HandlerDefinitionError(f"{label}: not a class")
    if issubclass(legacy_cls, Handler):
        raise HandlerDefinitionError(f"{label}: already a udfd.Handler; serve it directly")
    install_kapacitor_shim()
    info = legacy_info(legacy_cls, label)
    attrs: dict[str, Any] = {
        "__module__": legacy_cls.__module__,
        "__qualname__": legacy_cls.__qualname__,
        "__doc__": f"udfd adapter of the legacy handler {legacy_cls.__qualname__}.",
        "wants": Edge(info.wants),
        "provides": Edge(info.provides),
        "info_override": info,
        "legacy_class": legacy_cls,
        "legacy_types": _legacy_types(legacy_cls),
        "has_snapshot": _overrides(legacy_cls, "snapshot"),
        "has_restore": _overrides(legacy_cls, "restore"),
        "_warned": set(),
    }
    return cast("type[LegacyAdapter]", type(legacy_cls.__name__, (LegacyAdapter,), attrs))


# ------------------------------------------------------------------ loading files


def load_legacy_file(path: Path, class_name: str) -> type[Any]:
    """Import a legacy UDF file by path and return its handler class.

    Installs the ``kapacitor.udf`` stand-ins first (unless the official package
    is importable), then imports the file as any file reference is imported
    (:func:`udfd.plugins.importer.import_file`: once per path, under a name that is not
    ``__main__``, so the block that would start the official agent does not
    run), with the file's directory appended to ``sys.path`` so it can import
    its neighbours as it could when run as a script. Runs the file's top-level
    code: call it off the event loop. Raises :class:`HandlerDefinitionError`.
    """
    path = Path(path).absolute()
    install_kapacitor_shim()
    try:
        module = import_file(path, search_path=True)
    except ImportFromStringError as exc:
        raise HandlerDefinitionError(str(exc)) from exc.__cause__
    cls: object = module
    for part in class_name.split("."):  # a nested class may be named "Outer.Inner"
        cls = getattr(cls, part, None)
    if not isinstance(cls, type):
        found = sorted(
            k
            for k, v in vars(module).items()
            if is_legacy_handler_class(v) and v.__module__ == module.__name__
        )
        hint = f"; handler classes in it: {', '.join(found)}" if found else ""
        raise HandlerDefinitionError(f"{path}: defines no class {class_name!r}{hint}")
    return cls


def load_legacy(path: Path, class_name: str, name: str = "") -> type[LegacyAdapter]:
    """:func:`load_legacy_file` then :func:`legacy_handler`: a servable udfd handler class."""
    return legacy_handler(load_legacy_file(path, class_name), name or class_name)


__all__ = [
    "LegacyAdapter",
    "LegacyHandlerError",
    "UdfdAgent",
    "is_legacy_handler_class",
    "legacy_handler",
    "legacy_info",
    "load_legacy",
    "load_legacy_file",
]
