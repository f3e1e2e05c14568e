"""The daemon's state as a small JSON file, for ``udfd check`` and people.

A function whose handler failed to load still answers Info (so Kapacitor starts),
which makes a socket probe alone report it healthy. The daemon therefore writes
what it knows — per function: loading, ready or failed, the reason, counters —
to ``<state_dir>/status.json``, and ``udfd check`` reads it next to probing the
sockets. The file names the daemon's pid; a file left by a daemon that is gone
is ignored. Writes are atomic (temp file, rename), reads never raise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("udfd.serve.status")

STATUS_FILE = "status.json"


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace the status file atomically; failures are logged, never raised."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
        os.fchmod(fd, 0o644)  # readable by monitoring that runs as another user
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "written_at": time.time(), **status}, f, indent=1)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("could not write status file %s: %s", path, exc)
    finally:
        if tmp is not None:  # a full disk: never leave the half-written temp file behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def remove_status(path: Path) -> None:
    """Remove our status file (only if it still names this process)."""
    current = _load(path)
    if current is not None and current.get("pid") == os.getpid():
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove status file %s: %s", path, exc)


def read_status(path: Path, max_age: float) -> dict[str, Any] | None:
    """The status of a running daemon, or None (no file, daemon gone, file too old).

    A running daemon rewrites the file every few seconds, so an old file was left
    by one that crashed; its pid may belong to another process by now (after a
    reboot, say), which the age check catches. Raises PermissionError when the
    file exists but cannot be read, so callers can say so instead of guessing.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        if isinstance(exc, PermissionError):
            raise
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    written = data.get("written_at")
    if not isinstance(written, (int, float)) or time.time() - written > max_age:
        return None
    try:
        os.kill(data["pid"], 0)
    except ProcessLookupError:
        return None  # left behind by a daemon that is not running
    except PermissionError:
        pass  # running as another user
    return data


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
