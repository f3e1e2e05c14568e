"""What a function serves when its handler cannot be loaded.

Kapacitor asks every configured function for Info at start-up and refuses to
start if one does not answer, and it checks TICKscripts against that Info. So a
function whose plugin is broken must still answer Info, as closely as possible
to what the working handler would say, while its Init fails with the reason:

1. the handler's declaration, when the class imported but failed a later check;
2. else the Info last served for the function, kept by :class:`InfoStore`;
3. else :func:`neutral_info` (stream in, stream out, no options).

:func:`placeholder_spec` turns that Info and the reason into a servable spec.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format

from udfd.errors import HandlerDefinitionError, InitFailed
from udfd.handler import Edge, Handler, HandlerSpec, inspect_handler
from udfd.plugins.importer import LOAD_ERRORS, reraise_if_interrupt
from udfd.protocol.proto import udf_pb2 as pb

log = logging.getLogger("udfd.plugins.fallback")


def neutral_info() -> pb.InfoResponse:
    """Stream in, stream out, no options: the Info of a function nothing is known about."""
    return pb.InfoResponse(wants=pb.STREAM, provides=pb.STREAM)


def declared_info(cls: object) -> pb.InfoResponse | None:
    """Info from a handler class's declaration alone, or None when it cannot be read.

    For a class that imported but failed a later check: its wants, provides and
    options are still known. The Info is derived by
    :func:`udfd.handler.inspect_handler`, the one derivation udfd has, so a
    fallback can never differ from what the working handler would serve. Its
    only check that does not concern the Info is "threaded handlers need plain
    callbacks"; a class failing just that is inspected as if not threaded.
    Every other failure means the declaration itself is unusable: no Info.
    """
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        return None
    try:
        try:
            return inspect_handler(cls).info
        except HandlerDefinitionError:
            if not cls.threaded:
                return None
        unthreaded = type(cls.__name__, (cls,), {"threaded": False, "__module__": cls.__module__})
        return inspect_handler(unthreaded).info
    except LOAD_ERRORS as exc:  # an unreadable declaration only means: no fallback from it
        reraise_if_interrupt(exc)
        return None


class _Unavailable(Handler[Any]):
    """Stands in for a handler that failed to load: answers Info, refuses Init."""

    raw_options = True
    info_override = pb.InfoResponse()
    reason = "handler not loaded"

    def init(self) -> None:
        # The site passes init_error too; this keeps the spec safe on its own.
        raise InitFailed(self.reason)


def placeholder_spec(function: str, info: pb.InfoResponse, reason: str) -> HandlerSpec:
    """A spec whose Info is ``info`` and whose Init fails with ``reason``."""
    own = pb.InfoResponse()
    own.CopyFrom(info)
    cls = type(
        f"Unavailable_{function}",
        (_Unavailable,),
        {
            "info_override": own,
            "reason": reason,
            "wants": Edge(own.wants),
            "provides": Edge(own.provides),
        },
    )
    return inspect_handler(cls, function)


class InfoRecord(Protocol):
    """Where :func:`udfd.plugins.loader.load_function` finds and records served Info."""

    def get(self, function: str) -> pb.InfoResponse | None: ...

    def put(self, function: str, info: pb.InfoResponse) -> None: ...


class InfoStore:
    """The Info last served per function, in one small JSON file (``Config.state_file``).

    ``{"format": 1, "functions": {NAME: {"info": <InfoResponse as proto JSON>}}}``,
    readable by people. Written atomically (temp file, fsync, rename) when a
    function loads with an Info different from the stored one; read when a
    handler fails to load. Thread-safe: functions load in worker threads.
    Problems with the file are logged and otherwise ignored: it is a fallback,
    never a reason for a function to fail.
    """

    FORMAT = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                raw = json.loads(self.path.read_text("utf-8"))
                functions = raw.get("functions") if isinstance(raw, dict) else None
                self._data = functions if isinstance(functions, dict) else {}
            except FileNotFoundError:
                self._data = {}
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable Info state file %s: %s", self.path, exc)
                self._data = {}
        return self._data

    def get(self, function: str) -> pb.InfoResponse | None:
        """The Info last recorded for ``function``, or None."""
        with self._lock:
            entry = self._load().get(function)
        if not isinstance(entry, dict) or not isinstance(entry.get("info"), dict):
            return None
        try:
            info = json_format.ParseDict(entry["info"], pb.InfoResponse())
            if not {info.wants, info.provides} <= {pb.STREAM, pb.BATCH}:
                raise ValueError(f"wants/provides not STREAM or BATCH: {entry['info']}")
        except (json_format.ParseError, ValueError, TypeError) as exc:
            log.warning("ignoring stored Info of %s in %s: %s", function, self.path, exc)
            return None
        return info

    def put(self, function: str, info: pb.InfoResponse) -> None:
        """Record ``info`` for ``function``; rewrites the file only when it changed."""
        entry = {"info": json_format.MessageToDict(info, always_print_fields_with_no_presence=True)}
        with self._lock:
            data = self._load()
            if data.get(function) == entry:
                return
            data[function] = entry
            text = json.dumps({"format": self.FORMAT, "functions": data}, indent=2, sort_keys=True)
            try:
                self._write(text + "\n")
            except OSError as exc:
                log.warning("cannot record Info of %s in %s: %s", function, self.path, exc)

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".info-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
