"""Sockets handed over by systemd (socket activation), matched to functions.

With socket units, systemd binds the sockets at boot: they exist before
Kapacitor starts, and they stay bound (queueing Kapacitor's connects) while udfd
restarts. udfd then receives them as file descriptors 3, 4, ... with
``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` (sd_listen_fds(3)), and
binds only what was not passed.

A passed socket belongs to a function when its name (``FileDescriptorName=``)
is the function's name, or else when it is bound to the function's socket path.
The variables are removed once read, so the worker processes udfd forks never
mistake the descriptors for their own.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("udfd.serve.activation")

#: the first passed descriptor (SD_LISTEN_FDS_START)
FIRST_FD = 3


@dataclass
class PassedSocket:
    sock: socket.socket
    name: str
    #: the path it is bound to ("" for an abstract or unnamed socket)
    path: str


def take_passed_sockets(environ: MutableMapping[str, str] | None = None) -> list[PassedSocket]:
    """The listening unix sockets systemd passed to this process; the variables are cleared.

    Descriptors that are not listening unix stream sockets are logged and left
    alone: detached, not closed, since udfd has no use for them and no say over them.
    """
    env = os.environ if environ is None else environ
    pid = env.pop("LISTEN_PID", None)
    count = env.pop("LISTEN_FDS", None)
    names = env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if pid != str(os.getpid()):
        return []  # meant for another process (our parent's, passed on by mistake)
    try:
        n = int(count)
    except ValueError:
        log.warning("LISTEN_FDS=%r is not a number; no sockets taken from systemd", count)
        return []
    labels = names.split(":") if names else []
    passed: list[PassedSocket] = []
    for i in range(n):
        fd = FIRST_FD + i
        name = labels[i] if i < len(labels) else ""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("passed descriptor %d (%s) is not a socket: %s", fd, name or "unnamed", exc)
            continue
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
            log.warning(
                "passed socket %d (%s) is not a listening unix stream socket; ignored",
                fd,
                name or "unnamed",
            )
            sock.detach()  # not ours to use, and not ours to close
            continue
        sock.set_inheritable(False)
        sock.setblocking(False)
        bound = sock.getsockname()
        path = bound if isinstance(bound, str) and not bound.startswith("\0") else ""
        passed.append(PassedSocket(sock, name, path))
    return passed


def match(passed: list[PassedSocket], function: str, path: Path) -> PassedSocket | None:
    """Remove and return the passed socket of this function: by name, else by path."""
    for i, candidate in enumerate(passed):
        if candidate.name == function:
            return passed.pop(i)
    for i, candidate in enumerate(passed):
        if candidate.path and Path(candidate.path) == path:
            return passed.pop(i)
    return None
