"""Reading a model file: whole, once, hashed, and only if it may be trusted.

Two formats are accepted, and the difference between them is the point:

* ``.onnx``: a protobuf graph of operators. Loading it builds data structures
  and runs no code of the file's author, so any readable ONNX file may be used.
* ``.pkl`` / ``.pickle`` / ``.joblib``: a pickle, and unpickling *runs code*
  that the file chooses. Such a file is loaded only when its sha256 is pinned
  (``sha256`` in the task or the config) and matches, or when it lies in one of
  the directories the operator's config lists as trusted (``trusted_dirs``, a
  config-only option a TICKscript cannot set). Anything else is refused before a
  byte of it is unpickled.

The bytes that are hashed are the bytes that are parsed: the file is read once,
completely, and the read is repeated if the file changed meanwhile, so a model
being rewritten on disk is never half-read. (Writers should still replace model
files atomically, as ``udfd train`` does: write a temporary file, then rename.)
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from udfd import InitFailed

SAFE_SUFFIXES = (".onnx",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
#: attempts at a stable read of a file that keeps changing
READ_ATTEMPTS = 5

Format = Literal["onnx", "pickle"]


class ModelRefused(InitFailed):
    """A model file that may not, or cannot, be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ModelBytes:
    path: Path
    data: bytes
    sha256: str
    format: Format


def normalise_sha256(value: str) -> str:
    text = value.strip().lower().removeprefix("sha256:")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{value!r} is not a sha256 (64 hex digits)")
    return text


def model_format(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        return "onnx"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    raise ModelRefused(
        f"model {str(path)!r}: unknown model format {suffix or '(no suffix)'!r}; use .onnx "
        "(loads no code; `udfd train` writes it) or a pinned .joblib/.pkl"
    )


def read_stable(path: Path) -> bytes:
    """The file's whole content, from a read during which it did not change."""
    for _ in range(READ_ATTEMPTS):
        try:
            with open(path, "rb") as f:
                before = os.fstat(f.fileno())
                if not stat.S_ISREG(before.st_mode):
                    raise ModelRefused(f"model {str(path)!r} is not a regular file")
                data = f.read()
                after = os.fstat(f.fileno())
            # the name may have been pointed at a new file (an atomic replace) meanwhile:
            # that is fine, what was read is one whole version
        except FileNotFoundError:
            raise ModelRefused(f"model {str(path)!r} does not exist") from None
        except PermissionError:
            raise ModelRefused(
                f"model {str(path)!r} cannot be read by udfd (permission denied)"
            ) from None
        except IsADirectoryError:
            raise ModelRefused(f"model {str(path)!r} is a directory") from None
        if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) and len(
            data
        ) == after.st_size:
            return data
        time.sleep(0.05)  # being written in place: wait for the writer
    raise ModelRefused(
        f"model {str(path)!r} kept changing while udfd read it; replace model files "
        "atomically (write elsewhere, then rename)"
    )


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _trusted_dir(path: Path, trusted_dirs: Sequence[str]) -> Path | None:
    for entry in trusted_dirs:
        directory = Path(entry).expanduser().resolve()
        if _inside(path, directory):
            return directory
    return None


def _writable_by_others(path: Path) -> bool:
    mode = path.stat().st_mode
    return bool(mode & (stat.S_IWOTH | stat.S_IWGRP))


def read_model(
    name: str,
    *,
    sha256: str | None = None,
    trusted_dirs: Sequence[str] = (),
) -> ModelBytes:
    """Read and check the model file ``name``; raises :class:`ModelRefused` with the reason."""
    if not name:
        raise ModelRefused("no model file given: .model('/path/to/model.onnx')")
    path = Path(name).expanduser().resolve()  # symlinks resolved: trust is about the target
    fmt = model_format(path)
    pinned = None
    if sha256 is not None:
        try:
            pinned = normalise_sha256(sha256)
        except ValueError as exc:
            raise ModelRefused(f"option sha256: {exc}") from None
    trusted = _trusted_dir(path, trusted_dirs) if fmt == "pickle" else None
    if fmt == "pickle" and pinned is None:
        if trusted is None:
            raise ModelRefused(
                f"model {str(path)!r} is a pickle, and loading a pickle runs code: refused. "
                "Pin it with .sha256('<hex>') (sha256sum prints it), list its directory in "
                "the function's trusted_dirs in the udfd config, or use an .onnx model"
            )
        for where in (path.parent, path):
            if where.exists() and _writable_by_others(where):
                raise ModelRefused(
                    f"model {str(path)!r}: {str(where)!r} is writable by group or others, so "
                    "anyone there could swap the pickle: refused even in a trusted directory"
                )
    data = read_stable(path)
    digest = hashlib.sha256(data).hexdigest()
    if pinned is not None and digest != pinned:
        raise ModelRefused(
            f"model {str(path)!r} has sha256 {digest}, but {pinned} is pinned: refused "
            "(the file changed, or the pin is wrong)"
        )
    return ModelBytes(path, data, digest, fmt)
