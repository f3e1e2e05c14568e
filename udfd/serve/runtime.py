"""One function inside a serving process: its handler (once loaded) and its connections.

``FunctionRuntime`` is the engine's ``HandlerSource`` for a function: the socket
is served before the handler is imported, so connections start at once and
their runners wait here. ``Connections`` is the set of a process's open
connections of a function, with the drain that shutdown and reload use. Both
the in-process ``Site`` (``udfd.testing``) and the worker processes use them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from udfd.engine.connection import Connection
from udfd.engine.limits import Limits
from udfd.engine.source import THREADS_PER_FUNCTION
from udfd.engine.stats import Stats
from udfd.handler import ErrorPolicy, HandlerSpec
from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["ABORT_FLUSH", "Connections", "FunctionRuntime"]

#: after the grace period, how long aborted connections get to flush their ErrorResponse
ABORT_FLUSH = 1.0

log = logging.getLogger("udfd.serve")


class FunctionRuntime:
    """A function's handler source and settings in one process."""

    def __init__(
        self,
        name: str,
        spec: HandlerSpec | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.ERROR,
        limits: Limits | None = None,
        init_error: str | None = None,
        early_info: pb.InfoResponse | None = None,
    ) -> None:
        self.name = name
        self.defaults = dict(defaults or {})
        self.error_policy = error_policy
        self.limits = limits or Limits()
        self.stats = Stats()
        self._spec = spec
        self._init_error = init_error
        #: Info served while the handler is still loading (the one last served)
        self._early_info = early_info
        self._loaded = anyio.Event()
        if spec is not None:
            self._loaded.set()
        self._threads = anyio.CapacityLimiter(THREADS_PER_FUNCTION)

    # ---- the HandlerSource a Connection reads

    @property
    def spec(self) -> HandlerSpec | None:
        return self._spec

    @property
    def init_error(self) -> str | None:
        return self._init_error

    @property
    def early_info(self) -> pb.InfoResponse | None:
        return self._early_info

    @property
    def thread_limiter(self) -> anyio.CapacityLimiter:
        return self._threads

    async def wait_loaded(self) -> None:
        await self._loaded.wait()

    def set_handler(self, spec: HandlerSpec, init_error: str | None = None) -> None:
        """Provide the handler after binding; waiting connections proceed with it."""
        self._spec = spec
        self._init_error = init_error
        self._loaded.set()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def connection(self, stream: anyio.abc.ByteStream, initial: bytes = b"") -> Connection:
        return Connection(
            stream,
            self,
            function=self.name,
            defaults=self.defaults,
            error_policy=self.error_policy,
            limits=self.limits,
            stats=self.stats,
            initial=initial,
        )


class Connections:
    """The open connections of one process (or one site), and draining them."""

    def __init__(self) -> None:
        self._open: set[Connection] = set()
        self._idle = anyio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: Connection) -> None:
        """Count a connection before its task starts, so draining never misses it."""
        self._open.add(connection)
        self._idle = anyio.Event()

    async def serve(self, connection: Connection, label: str) -> None:
        try:
            await connection.serve()
        except Exception:
            # Connection handles its own failures; anything here is a udfd bug, and it
            # must still not take the other connections down.
            log.exception("%s: connection failed unexpectedly", label)
        finally:
            self.discard(connection)

    def discard(self, connection: Connection) -> None:
        self._open.discard(connection)
        if not self._open:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def drain(self, grace: float, label: str, reason: str = "udfd is shutting down") -> None:
        """Give open connections ``grace`` seconds, then end the rest with ``reason``.

        Kapacitor half-closes a connection when it stops a task, so most end by
        themselves; the rest get an ErrorResponse, so the task's error says why.
        """
        with anyio.move_on_after(grace):
            await self._idle.wait()
        if self._open:
            log.warning(
                "%s: %d connection(s) still open after %.1fs; ending them",
                label,
                len(self._open),
                grace,
            )
            self.abort_all(reason)
            with anyio.move_on_after(ABORT_FLUSH):
                await self._idle.wait()

    def abort_all(self, reason: str) -> None:
        for connection in list(self._open):
            connection.abort(reason)

    async def close_unstarted(self) -> None:
        """Close the sockets of connections whose tasks were cancelled before they ran."""
        for connection in list(self._open):
            await connection.close_unstarted()
        self._open.clear()
        self._idle.set()
