"""Importing code by name or by file, with errors that say what is actually missing.

Like uvicorn's ``importer.py``: "module 'foo' not found" (your module is missing)
is told apart from "module 'foo' failed to import: No module named 'numpy'" (a
module it imports is missing), and an exception raised while importing is
reported with its type. Nothing here knows about handlers or entry points.

It also defines what code run at load time may raise without ending the
daemon (:data:`LOAD_ERRORS`), so every load path (import, a legacy ``info()``,
an option validator) contains the same things and words them the same way.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import threading
import types
from pathlib import Path

from udfd.errors import UdfdError

#: What handler code run at load time may raise and still fail only its own function.
#: ``SystemExit`` (``sys.exit()`` in code ported from a standalone script),
#: ``KeyboardInterrupt`` and ``GeneratorExit`` are included: raised by plugin code
#: they say nothing about the daemon. Cancellation (anyio's, asyncio's) is not:
#: it is never raised inside the worker threads handlers load in.
LOAD_ERRORS: tuple[type[BaseException], ...] = (
    Exception,
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
)

_path_lock = threading.Lock()
#: one lock per file module name: functions load concurrently, and a second load of
#: a file must wait for the first rather than find its half-run module in sys.modules
_file_locks: dict[str, threading.RLock] = {}
_file_locks_lock = threading.Lock()


class ImportFromStringError(UdfdError):
    """A module, file or attribute could not be imported; the message says which and why."""


def reraise_if_interrupt(exc: BaseException) -> None:
    """Re-raise a ``KeyboardInterrupt`` caught in the main thread.

    There it may be a real Ctrl-C (``udfd list`` loads in the main thread), which
    must stop the program rather than mark one handler failed. In a worker
    thread, where the daemon loads handlers, it can only come from handler code.
    """
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        raise exc


def describe_load_error(exc: BaseException) -> str:
    """``Type: message`` for a load-time failure; ``sys.exit()`` is named as such."""
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else repr(exc.code)
        return f"called sys.exit({code}) while loading"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def split_target(target: str, what: str = "reference") -> tuple[str, str]:
    """'package.module:Class' → (module, attribute path); entry-point extras are dropped."""
    module, sep, attr = target.partition(":")
    attr = re.sub(r"\s*\[.*\]\s*$", "", attr).strip()
    module = module.strip()
    if not sep or not attr:
        raise ImportFromStringError(f"{what} {target!r} must name a class: 'package.module:Class'")
    if not all(part.isidentifier() for part in [*module.split("."), *attr.split(".")]):
        raise ImportFromStringError(f"{what} {target!r} is not of the form 'package.module:Class'")
    return module, attr


def import_module(name: str) -> types.ModuleType:
    """Import ``name``; a missing ``name`` and a failing ``name`` give different errors."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name or name.startswith(missing + "."):
            raise ImportFromStringError(f"module {name!r} not found") from None
        raise ImportFromStringError(f"module {name!r} failed to import: {exc}") from exc
    except LOAD_ERRORS as exc:  # a plugin's sys.exit() must not end the daemon
        reraise_if_interrupt(exc)
        raise ImportFromStringError(
            f"module {name!r} failed to import: {describe_load_error(exc)}"
        ) from exc


def _append_search_path(directory: Path) -> None:
    """Let a file import modules next to it, as it could when run as a script.

    Appended, not prepended: a stray ``json.py`` next to a UDF must not shadow
    the standard library for the whole daemon.
    """
    entry = str(directory)
    with _path_lock:
        if entry not in sys.path:
            sys.path.append(entry)


def import_file(path: Path, *, search_path: bool = False) -> types.ModuleType:
    """Import a Python file as a module of its own, once per path.

    The module is registered in ``sys.modules`` under a name derived from the
    path, because pydantic and dataclasses resolve annotations through it; the
    name is never ``__main__``, so an ``if __name__ == "__main__":`` block does
    not run. With ``search_path`` the file's directory is appended to
    ``sys.path`` first, for files written to run as scripts (legacy UDFs) that
    import their neighbours.
    """
    if not path.is_file():
        raise ImportFromStringError(f"file {str(path)!r} does not exist")
    if search_path:
        _append_search_path(path.parent)
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_udfd_file_{stem}_{hashlib.sha1(os.fsencode(path)).hexdigest()[:10]}"
    with _file_locks_lock:
        lock = _file_locks.setdefault(name, threading.RLock())
    with lock:
        if name in sys.modules:
            return sys.modules[name]
        return _exec_file(path, name)


def _exec_file(path: Path, name: str) -> types.ModuleType:
    """Run the file as module ``name``; it stays in ``sys.modules`` only if it ran to the end."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportFromStringError(f"file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except LOAD_ERRORS as exc:
        del sys.modules[name]
        reraise_if_interrupt(exc)
        raise ImportFromStringError(
            f"file {str(path)!r} failed to import: {describe_load_error(exc)}"
        ) from exc
    return module


def get_attribute(module: types.ModuleType, attr: str, where: str, *, hint: str = "") -> object:
    """``module.<attr>`` for a dotted ``attr``; ``hint`` is added to the 'not found' error."""
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportFromStringError(f"class {attr!r} not found in {where}{hint}") from None
    return obj
