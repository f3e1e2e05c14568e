"""One function's socket: the accept loop and draining its connections.

A site owns exactly one listening socket (bound by ``sockets.bind_unix``) and
every connection accepted on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from .connection import Connection, Limits, Stats
from .errors import StartupError
from .handler import ErrorPolicy, HandlerSpec
from .sockets import MAX_SOCKET_PATH, bind_unix, check_socket_path, clear_stale_socket

__all__ = ["MAX_SOCKET_PATH", "Site", "bind_unix", "check_socket_path", "clear_stale_socket"]

log = logging.getLogger("udfd.site")


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
    ) -> None:
        self.name = name
        self.path = path
        self.spec = spec
        self.defaults = dict(defaults or {})
        self.error_policy = error_policy
        self.limits = limits or Limits()
        self.init_error = init_error
        self.stats = Stats()
        # The socket is bound before the handler is imported (imports can be slow);
        # connections accepted meanwhile wait here for the spec.
        self._loaded = anyio.Event()
        if spec is not None:
            self._loaded.set()
        self._sock: socket.socket | None = None
        self._inode: int | None = None  # of the socket file we created, removed on exit
        self._accept_scope = anyio.CancelScope()
        self._idle = anyio.Event()
        self._idle.set()
        self._waiting = 0

    def set_handler(self, spec: HandlerSpec, init_error: str | None = None) -> None:
        """Provide the handler after binding; waiting connections proceed with it."""
        self.spec = spec
        self.init_error = init_error
        self._loaded.set()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def bind(self, *, mode: int | None = None, group: str | None = None) -> None:
        self._sock = bind_unix(self.path, mode=mode, group=group)
        self._inode = os.lstat(self.path).st_ino

    def adopt(self, sock: socket.socket) -> None:
        """Serve an already listening socket (bound by the daemon, or socket activation)."""
        sock.setblocking(False)
        self._sock = sock
        with contextlib.suppress(OSError):
            self._inode = os.lstat(self.path).st_ino

    def close_unserved(self) -> None:
        """Release a socket that was bound but will never be served (start-up failed)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._remove_socket_file()

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
        listener = await anyio.abc.SocketListener.from_socket(self._sock)
        try:
            async with anyio.create_task_group() as tg:
                with self._accept_scope:
                    async with listener:
                        task_status.started()
                        while True:
                            stream = await listener.accept()
                            tg.start_soon(self._run_connection, stream)
                with anyio.move_on_after(grace):
                    await self._idle.wait()
                tg.cancel_scope.cancel()
        finally:
            self._remove_socket_file()

    async def _run_connection(self, stream: anyio.abc.SocketStream) -> None:
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._waiting += 1
        try:
            await self._loaded.wait()
        except BaseException:
            await stream.aclose()
            raise
        finally:
            self._waiting -= 1
        assert self.spec is not None
        connection = Connection(
            stream,
            self.spec,
            function=self.name,
            defaults=self.defaults,
            error_policy=self.error_policy,
            limits=self.limits,
            stats=self.stats,
            init_error=self.init_error,
        )
        try:
            await connection.serve()
        except Exception:
            # Connection handles its own failures; anything here is a udfd bug, and it
            # must still not take the other connections of this function down.
            log.exception("%s: connection failed unexpectedly", self.name)
        finally:
            if self.stats.connections_active == 0 and self._waiting == 0:
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
