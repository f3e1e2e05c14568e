"""Socket files on shared ground: the stale-socket probe and a careful bind.

A socket path is shared between udfd, Kapacitor and whatever ran before: a stale
file left by a crash is removed (nobody accepts on it), a live one belongs to
someone else and is never taken over, and a path that is not a socket is never
deleted. Kept apart from ``site`` so configuration checks can use the limits
without importing the serving machinery.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import stat
from pathlib import Path

from udfd.errors import StartupError

log = logging.getLogger("udfd.serve.sockets")

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


def remove_socket_file(path: Path, inode: int | None) -> None:
    """Remove the socket file we created, and only that one (checked by inode)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("could not remove socket %s: %s", path, exc)
