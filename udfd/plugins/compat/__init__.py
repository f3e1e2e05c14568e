"""Compatibility with handlers written for other UDF runtimes.

:func:`install_kapacitor_shim` lets a file written for the official Kapacitor
Python agent (``from kapacitor.udf.agent import Agent, Handler``,
``from kapacitor.udf import udf_pb2``) import unchanged although that package
is not on PyPI: it registers udfd's stand-ins under the official module names.
When the official package *is* installed it is left alone and used as it is;
udfd converts its messages (wire-identical, different Python classes).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types

#: the official module names, as legacy files import them
PACKAGE = "kapacitor"
UDF = "kapacitor.udf"
AGENT = "kapacitor.udf.agent"
UDF_PB2 = "kapacitor.udf.udf_pb2"

_MARK = "__udfd_shim__"
_lock = threading.Lock()


def _is_shim(module: object) -> bool:
    return bool(getattr(module, _MARK, False))


def shim_installed() -> bool:
    """True when ``kapacitor.udf`` currently resolves to udfd's stand-ins."""
    return _is_shim(sys.modules.get(UDF))


def real_kapacitor_available() -> bool:
    """True when the official ``kapacitor.udf`` package can be imported."""
    module = sys.modules.get(UDF)
    if module is not None:
        return not _is_shim(module)
    if _is_shim(sys.modules.get(PACKAGE)):
        return False
    try:
        return importlib.util.find_spec(UDF) is not None
    except (ImportError, ValueError):  # no `kapacitor` at all, or a broken one
        return False


def _package(name: str, doc: str) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__path__ = []
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    setattr(module, _MARK, True)
    return module


def install_kapacitor_shim() -> bool:
    """Make ``kapacitor.udf.agent`` and ``kapacitor.udf.udf_pb2`` importable.

    Returns True when udfd's stand-ins are in place (now or already), False when
    the official package is importable and is therefore used instead. Idempotent
    and thread-safe. An unrelated top-level ``kapacitor`` package (one without
    ``udf``) is kept; only the ``udf`` sub-package is added to it.
    """
    with _lock:
        if shim_installed():
            return True
        if real_kapacitor_available():
            return False
        from . import kapacitor_agent, kapacitor_udf_pb2

        parent = sys.modules.get(PACKAGE)
        if parent is None:
            parent = _package(PACKAGE, "udfd stand-in for the official kapacitor package")
            sys.modules[PACKAGE] = parent
        udf = _package(UDF, "udfd stand-in for kapacitor.udf (the official Python agent)")
        udf.agent = kapacitor_agent  # type: ignore[attr-defined]
        udf.udf_pb2 = kapacitor_udf_pb2  # type: ignore[attr-defined]
        sys.modules[AGENT] = kapacitor_agent
        sys.modules[UDF_PB2] = kapacitor_udf_pb2
        sys.modules[UDF] = udf
        parent.udf = udf  # type: ignore[attr-defined]
        return True


def uninstall_kapacitor_shim() -> None:
    """Remove the stand-ins again (tests); modules already imported keep their references."""
    with _lock:
        if not shim_installed():
            return
        for name in (AGENT, UDF_PB2, UDF):
            sys.modules.pop(name, None)
        parent = sys.modules.get(PACKAGE)
        if _is_shim(parent):
            del sys.modules[PACKAGE]
        elif parent is not None and _is_shim(getattr(parent, "udf", None)):
            delattr(parent, "udf")


__all__ = [
    "install_kapacitor_shim",
    "real_kapacitor_available",
    "shim_installed",
    "uninstall_kapacitor_shim",
]
