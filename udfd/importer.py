"""Importing code by name or by file, with errors that say what is actually missing.

Like uvicorn's ``importer.py``: "module 'foo' not found" (your module is missing)
is told apart from "module 'foo' failed to import: No module named 'numpy'" (a
module it imports is missing), and an exception raised while importing is
reported with its type. Nothing here knows about handlers or entry points.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path

from .errors import UdfdError


class ImportFromStringError(UdfdError):
    """A module, file or attribute could not be imported; the message says which and why."""


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
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the daemon
        raise ImportFromStringError(
            f"module {name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def import_file(path: Path) -> types.ModuleType:
    """Import a Python file as a module of its own, once per path.

    The module is registered in ``sys.modules`` under a name derived from the
    path, because pydantic and dataclasses resolve annotations through it.
    """
    if not path.is_file():
        raise ImportFromStringError(f"file {str(path)!r} does not exist")
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_udfd_file_{stem}_{hashlib.sha1(os.fsencode(path)).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportFromStringError(f"file {str(path)!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise ImportFromStringError(
            f"file {str(path)!r} failed to import: {type(exc).__name__}: {exc}"
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
