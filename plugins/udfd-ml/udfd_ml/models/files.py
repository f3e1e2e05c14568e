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

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Sequence
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


_OPEN_FILE = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _opened(path: Path, how: Callable[[], int]) -> int:
    """``how()``'s descriptor, with the reasons a user can act on as ModelRefused."""
    try:
        return how()
    except FileNotFoundError:
        raise ModelRefused(f"model {str(path)!r} does not exist") from None
    except PermissionError:
        raise ModelRefused(
            f"model {str(path)!r} cannot be read by udfd (permission denied)"
        ) from None
    except NotADirectoryError:
        raise ModelRefused(f"model {str(path)!r}: a part of the path is not a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink put there after resolving
            raise ModelRefused(f"model {str(path)!r} turned into a symlink: refused") from None
        raise ModelRefused(f"model {str(path)!r} cannot be opened: {exc.strerror}") from None


def _read_whole(fd: int, path: Path) -> bytes | None:
    """The content of the regular file ``fd``, or None if it changed while being read.

    Opened non-blocking, so a FIFO or a device under a model's name is refused at
    the fstat instead of blocking the handler thread forever in open().
    """
    before = os.fstat(fd)
    if stat.S_ISDIR(before.st_mode):
        raise ModelRefused(f"model {str(path)!r} is a directory")
    if not stat.S_ISREG(before.st_mode):
        raise ModelRefused(f"model {str(path)!r} is not a regular file")
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    data = b"".join(chunks)
    after = os.fstat(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None
    return data if len(data) == after.st_size else None


def read_stable(path: Path, opener: Callable[[], int] | None = None) -> bytes:
    """The file's whole content, from a read during which it did not change.

    The name may be pointed at a new file (an atomic replace) meanwhile: that is
    fine, what was read is one whole version. A file written in place is read again.
    """
    for _ in range(READ_ATTEMPTS):
        fd = _opened(path, opener or (lambda: os.open(path, _OPEN_FILE)))
        try:
            data = _read_whole(fd, path)
        finally:
            os.close(fd)
        if data is not None:
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
        if _inside(path, directory) and path != directory:
            return directory
    return None


def _check_owner_and_mode(fd: int, where: Path, path: Path) -> None:
    """Nobody but root and udfd's own user may be able to change what ``fd`` is."""
    st = os.fstat(fd)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ModelRefused(
            f"model {str(path)!r}: {str(where)!r} is writable by group or others, so anyone "
            "there could swap the pickle: refused even in a trusted directory"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise ModelRefused(
            f"model {str(path)!r}: {str(where)!r} belongs to uid {st.st_uid}, neither root nor "
            "udfd's user, who could swap the pickle: refused even in a trusted directory"
        )


def _trusted_opener(path: Path, root: Path) -> Callable[[], int]:
    """Open ``path`` by walking down from ``root``, checking every directory on the way
    and the file itself, on the very descriptors that are then read: what was checked
    is what is read, even if names change meanwhile."""

    def open_checked() -> int:
        parts = path.relative_to(root).parts
        directory = _opened(path, lambda: os.open(root, _OPEN_DIR))
        try:
            _check_owner_and_mode(directory, root, path)
            where = root
            for part in parts[:-1]:
                parent = directory
                directory = _opened(path, lambda: os.open(part, _OPEN_DIR, dir_fd=parent))  # noqa: B023
                os.close(parent)
                where = where / part
                _check_owner_and_mode(directory, where, path)
            final = directory
            fd = _opened(path, lambda: os.open(parts[-1], _OPEN_FILE, dir_fd=final))
        finally:
            os.close(directory)
        try:
            _check_owner_and_mode(fd, path, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return open_checked


def read_model(
    name: str,
    *,
    sha256: str | None = None,
    trusted_dirs: Sequence[str] = (),
    pin_from_config: bool = True,
    task_pins: bool = True,
) -> ModelBytes:
    """Read and check the model file ``name``; raises :class:`ModelRefused` with the reason.

    ``pin_from_config``: the ``sha256`` came from the operator's config, not from a
    TICKscript. ``task_pins``: whether a TICKscript's pin may authorise a pickle.
    """
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
    opener = None
    if fmt == "pickle":
        trusted = _trusted_dir(path, trusted_dirs)
        if trusted is not None:
            opener = _trusted_opener(path, trusted)
        elif pinned is None:
            raise ModelRefused(
                f"model {str(path)!r} is a pickle, and loading a pickle runs code: refused. "
                "Pin it with .sha256('<hex>') (sha256sum prints it), list its directory in "
                "the function's trusted_dirs in the udfd config, or use an .onnx model"
            )
        elif not (pin_from_config or task_pins):
            raise ModelRefused(
                f"model {str(path)!r} is a pickle pinned by the task, and this function "
                "takes pickle pins from the udfd config only (task_pins = false): refused"
            )
    data = read_stable(path, opener)
    digest = hashlib.sha256(data).hexdigest()
    if pinned is not None and digest != pinned:
        raise ModelRefused(
            f"model {str(path)!r} has sha256 {digest}, but {pinned} is pinned: refused "
            "(the file changed, or the pin is wrong)"
        )
    return ModelBytes(path, data, digest, fmt)
