"""Socket files on shared ground: the stale-socket probe and a careful bind.

A socket path is shared between udfd, Kapacitor and whatever ran before: a stale
file left by a crash is removed (nobody accepts on it), a live one belongs to
someone else and is never taken over, and a path that is not a socket is never
deleted. Kept apart from ``site`` so configuration checks can use the limits
without importing the serving machinery.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import secrets
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
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False  # someone else cleared it meanwhile
        except OSError as exc:
            raise StartupError(f"{path}: stale socket, but cannot remove it: {exc}") from None
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


def _ours(st: os.stat_result) -> bool:
    return st.st_uid in (os.getuid(), 0)


def ensure_socket_dir(directory: Path) -> None:
    """Create ``directory`` if needed and check it without following symlinks.

    Every component udfd creates is checked right after ``mkdir`` with ``lstat``
    (a real directory, ours). The directory itself may be a symlink only if the
    link and its target both belong to us or root: a link owned by someone else
    can be re-pointed by them later, as in a sticky ``/tmp`` where only a link's
    owner may replace it, which is how ``/tmp/udfd-$UID`` would be intercepted.
    """
    missing: list[Path] = []
    current = directory
    while True:
        try:
            os.lstat(current)
            break
        except FileNotFoundError:
            missing.append(current)
            current = current.parent
        except OSError as exc:
            raise StartupError(f"cannot check socket directory {current}: {exc}") from None
    for component in reversed(missing):
        try:
            os.mkdir(component, 0o755)
        except FileExistsError:
            pass  # made meanwhile: checked below like the rest
        except OSError as exc:
            raise StartupError(f"cannot create socket directory {component}: {exc}") from None
        st = os.lstat(component)
        if not stat.S_ISDIR(st.st_mode) or not _ours(st):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a directory"
            raise StartupError(
                f"socket directory {component} was replaced while udfd created it "
                f"(uid {st.st_uid}, {kind}); refusing to serve from it"
            )
    try:
        link = os.lstat(directory)
        target = os.stat(directory)
    except OSError as exc:
        raise StartupError(f"cannot check socket directory {directory}: {exc}") from None
    checks = [("the directory", target)]
    if stat.S_ISLNK(link.st_mode):
        checks.insert(0, ("the symlink", link))
    for what, st in checks:
        if not _ours(st):
            # e.g. /tmp/udfd-$UID made first by another user to intercept Kapacitor
            raise StartupError(
                f"socket directory {directory}: {what} belongs to uid {st.st_uid}, not to us "
                f"(uid {os.getuid()}) or root; refusing to serve from it"
            )
    if not stat.S_ISDIR(target.st_mode):
        raise StartupError(f"socket directory {directory} is not a directory")


#: the groups ``socket_mode = "auto"`` looks for: the one Kapacitor's packages create
KAPACITOR_GROUPS = ("kapacitor",)


def usable_group(names: tuple[str, ...] | None = None) -> str | None:
    """The first of ``names`` that exists and that udfd may give its sockets: as root any
    group, otherwise one of its own groups (chown to another group would fail)."""
    own = {os.getegid(), *os.getgroups()}
    for name in KAPACITOR_GROUPS if names is None else names:
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            continue
        if os.geteuid() == 0 or gid in own:
            return name
    return None


def _temporary_name(path: Path) -> Path:
    """A fresh name beside ``path`` to bind and set up under before it is published."""
    token = f".{os.getpid()}.{secrets.token_hex(4)}"
    candidate = path.with_name(f"{token}.{path.name}")
    if len(os.fsencode(candidate)) > MAX_SOCKET_PATH:
        candidate = path.with_name(token)
    return candidate


def bind_unix(
    path: Path, *, mode: int | None = None, group: str | None = None, backlog: int = 1024
) -> socket.socket:
    """Bind and listen on ``path`` after clearing a stale socket; apply mode and group.

    The socket is bound under a temporary name, given its mode and group, set
    listening, and only then published under ``path`` with ``link()``, which fails
    if the name exists. So ``path`` never names a socket that is bound but not yet
    listening (another daemon's stale-socket probe would take that for stale and
    delete it), and two daemons starting together cannot both claim it.
    """
    check_socket_path(path)
    ensure_socket_dir(path.parent)
    clear_stale_socket(path)
    temporary = _temporary_name(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(temporary))
        try:
            if mode is not None:
                os.chmod(temporary, mode)
            if group is not None:
                try:
                    gid = grp.getgrnam(group).gr_gid
                except KeyError:
                    raise StartupError(f"{path}: group {group!r} does not exist") from None
                os.chown(temporary, -1, gid)
            sock.listen(backlog)
            _publish(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        sock.setblocking(False)
    except StartupError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc}") from None
    return sock


def _publish(temporary: Path, path: Path) -> None:
    """Give the listening socket its real name, unless someone else has it by now."""
    for _ in range(2):
        try:
            os.link(temporary, path)
            return
        except FileExistsError:
            # appeared since the probe: stale (then cleared, and try once more) or live
            clear_stale_socket(path)
    raise StartupError(f"{path}: another process keeps creating this socket; stop it first")


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
