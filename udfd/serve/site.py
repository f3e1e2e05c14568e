"""One function's socket: the accept loop, its connections, and draining them.

A site owns exactly one listening socket (bound by ``sockets.bind_unix``) and
every connection accepted on it. It is also where those connections get their
handler: the socket is served before the handler is imported, so connections
start at once (Info and keepalives answered) and their runners wait here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from udfd.engine.connection import Connection
from udfd.engine.limits import Limits
from udfd.engine.source import THREADS_PER_FUNCTION
from udfd.engine.stats import Stats
from udfd.errors import StartupError
from udfd.handler import ErrorPolicy, HandlerSpec
from udfd.protocol.proto import udf_pb2 as pb
from udfd.serve.sockets import bind_unix

__all__ = ["Site"]

#: after the grace period, how long aborted connections get to flush their ErrorResponse
ABORT_FLUSH = 1.0

log = logging.getLogger("udfd.serve.site")


class Site:
    """Serves one function: accepts on its socket and runs a Connection per peer."""

    def __init__(
        self,
        name: str,
        path: Path,
        spec: HandlerSpec | None,
        *,
        defaults: Mapping[str, Any] | None = None,
        error_policy: ErrorPolicy = ErrorPolicy.ERROR,
        limits: Limits | None = None,
        init_error: str | None = None,
        early_info: pb.InfoResponse | None = None,
    ) -> None:
        self.name = name
        self.path = path
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
        self._sock: socket.socket | None = None
        self._inode: int | None = None  # of the socket file we created, removed on exit
        self._accept_scope = anyio.CancelScope()
        self._connections: set[Connection] = set()
        self._idle = anyio.Event()
        self._idle.set()
        self._accept_errors_logged = -math.inf
        self._threads = anyio.CapacityLimiter(THREADS_PER_FUNCTION)
        #: set once the listening socket is closed: no new connection can arrive
        self.stopped_accepting = anyio.Event()

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

    # ---- the socket

    def bind(self, *, mode: int | None = None, group: str | None = None) -> None:
        self.adopt(bind_unix(self.path, mode=mode, group=group))

    def adopt(self, sock: socket.socket) -> None:
        """Serve a socket already bound to ``path`` and listening; its file is ours to remove."""
        sock.setblocking(False)
        self._sock = sock
        with contextlib.suppress(OSError):
            self._inode = os.lstat(self.path).st_ino

    def stop_accepting(self) -> None:
        self._accept_scope.cancel()

    async def serve(
        self,
        *,
        grace: float = 10.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until :meth:`stop_accepting`, then give connections ``grace`` seconds.

        Connections still open after the grace get an ErrorResponse saying udfd is
        shutting down (so Kapacitor's task error says why), then are cancelled.
        """
        if self._sock is None:
            raise StartupError(f"{self.name}: serve() before bind()")
        try:
            listener = await anyio.abc.SocketListener.from_socket(self._sock)
            async with anyio.create_task_group() as tg:
                with self._accept_scope:
                    async with listener:
                        task_status.started()
                        await self._accept_loop(listener, tg)
                self.stopped_accepting.set()
                with anyio.move_on_after(grace):
                    await self._idle.wait()
                if self._connections:
                    log.warning(
                        "%s: %d connection(s) still open after %.1fs; ending them",
                        self.name,
                        len(self._connections),
                        grace,
                    )
                    for connection in list(self._connections):
                        connection.abort("udfd is shutting down")
                    with anyio.move_on_after(ABORT_FLUSH):
                        await self._idle.wait()
                tg.cancel_scope.cancel()
        finally:
            self.stopped_accepting.set()
            if self._sock is not None:
                self._sock.close()  # normally closed with the listener already; a no-op then
            # a connection cancelled before its task ran still owns an open socket
            for connection in list(self._connections):
                await connection.close_unstarted()
            self._connections.clear()
            self._remove_socket_file()

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.BrokenResourceError, OSError) as exc:
                # EMFILE and friends: keep the function up and retry shortly
                now = time.monotonic()
                if now - self._accept_errors_logged > 10:
                    self._accept_errors_logged = now
                    log.error("%s: accept failed (%s); retrying", self.name, exc)
                await anyio.sleep(0.1)
                continue
            connection = Connection(
                stream,
                self,
                function=self.name,
                defaults=self.defaults,
                error_policy=self.error_policy,
                limits=self.limits,
                stats=self.stats,
            )
            # counted before its task starts, so draining never misses it
            self._connections.add(connection)
            self._idle = anyio.Event()
            tg.start_soon(self._run_connection, connection, stream)

    async def _run_connection(self, connection: Connection, stream: anyio.abc.SocketStream) -> None:
        try:
            await connection.serve()
        except Exception:
            # Connection handles its own failures; anything here is a udfd bug, and it
            # must still not take the other connections of this function down.
            log.exception("%s: connection failed unexpectedly", self.name)
        finally:
            self._connections.discard(connection)
            if not self._connections:
                self._idle.set()

    def _remove_socket_file(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
            try:
                os.unlink(self.path)
            except OSError as exc:
                log.warning("could not remove socket %s: %s", self.path, exc)
