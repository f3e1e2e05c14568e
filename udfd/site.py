"""One function's socket: safe binding, the accept loop, and draining its connections.

A site owns exactly one listening socket and every connection accepted on it.
Binding is careful because the socket path is shared ground: a stale file left
by a crash is removed (nobody accepts on it), a live one belongs to someone else
and is never taken over, and a path that is not a socket is never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import grp
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

from .connection import Connection, ErrorPolicy, Limits, Stats
from .errors import StartupError
from .handler import HandlerSpec

log = logging.getLogger("udfd.site")

#: sun_path is 108 bytes on Linux, including the terminating NUL
MAX_SOCKET_PATH = 107


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise StartupError(
            f"socket path {str(path)!r} is {len(os.fsencode(path))} bytes; "
            f"unix sockets allow at most {MAX_SOCKET_PATH}"
        )


def clear_stale_socket(path: Path) -> bool:
    """Make ``path`` free for bind; return True when a stale socket was removed.

    * nothing there: free;
    * a socket nobody accepts on (connection refused): stale, removed;
    * a socket someone accepts on: refuse, it belongs to another process;
    * anything that is not a socket: refuse, never delete it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale socket %s (nobody was listening)", path)
        return True
    except FileNotFoundError:
        return False
    except (TimeoutError, BlockingIOError) as exc:
        raise StartupError(
            f"{path}: a process owns this socket but does not accept (backlog full?): {exc}"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            raise StartupError(
                f"{path}: a process owns this socket (its backlog is full)"
            ) from None
        raise StartupError(f"{path}: cannot probe existing socket: {exc}") from None
    finally:
        probe.close()
    raise StartupError(
        f"{path}: another process is accepting connections on this socket "
        "(another udfd or UDF?); stop it or choose another path"
    )


def bind_unix(path: Path, *, mode: int | None = None, group: str | None = None) -> socket.socket:
    """Bind and listen on ``path`` after clearing a stale socket; apply mode and group."""
    check_socket_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = path.parent.stat().st_uid
    except OSError as exc:
        raise StartupError(f"cannot create socket directory {path.parent}: {exc}") from None
    if owner not in (os.getuid(), 0):
        # e.g. /tmp/udfd-$UID made first by another user to intercept Kapacitor
        raise StartupError(
            f"socket directory {path.parent} belongs to uid {owner}, not to us "
            f"(uid {os.getuid()}) or root; refusing to serve from it"
        )
    clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        if mode is not None:
            os.chmod(path, mode)
        if group is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise StartupError(f"{path}: group {group!r} does not exist") from None
            os.chown(path, -1, gid)
        sock.listen(128)
        sock.setblocking(False)
    except StartupError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc}") from None
    return sock


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
