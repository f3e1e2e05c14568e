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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from udfd.engine.limits import Limits
from udfd.errors import StartupError
from udfd.handler import ErrorPolicy, HandlerSpec
from udfd.protocol.proto import udf_pb2 as pb
from udfd.serve.runtime import Connections, FunctionRuntime
from udfd.serve.sockets import bind_unix, remove_socket_file

__all__ = ["Site"]

log = logging.getLogger("udfd.serve.site")


class Site(FunctionRuntime):
    """Serves one function in this process: accepts on its socket, a Connection per peer.

    What ``udfd.testing`` uses; the daemon's supervisor accepts instead and hands
    each connection to a worker process.
    """

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
        super().__init__(
            name,
            spec,
            defaults=defaults,
            error_policy=error_policy,
            limits=limits,
            init_error=init_error,
            early_info=early_info,
        )
        self.path = path
        self._sock: socket.socket | None = None
        self._inode: int | None = None  # of the socket file we created, removed on exit
        self._accept_scope = anyio.CancelScope()
        self._connections = Connections()
        self._accept_errors_logged = -math.inf
        #: set once the listening socket is closed: no new connection can arrive
        self.stopped_accepting = anyio.Event()

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
        """Accept until :meth:`stop_accepting`, then give connections ``grace`` seconds."""
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
                await self._connections.drain(grace, self.name)
                tg.cancel_scope.cancel()
        finally:
            self.stopped_accepting.set()
            if self._sock is not None:
                self._sock.close()  # normally closed with the listener already; a no-op then
            await self._connections.close_unstarted()
            remove_socket_file(self.path, self._inode)

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
            connection = self.connection(stream)
            self._connections.add(connection)
            tg.start_soon(self._connections.serve, connection, self.name)
