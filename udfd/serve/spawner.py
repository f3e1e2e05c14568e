"""The spawner: a small process that forks worker processes for the supervisor.

Forked once, before the supervisor's event loop starts, from a process that
has imported udfd's own code but no handler: every worker forked from it shares
those pages, so an extra worker costs what its handlers and connections use,
not a whole interpreter. Forking from a process with an event loop and threads
running is unsafe; the spawner has neither: it blocks on its control channel
and on SIGCHLD, nothing else. It never imports handler code, so a plugin
whose import crashes takes down only the worker that imported it.

Records: ``spawn`` (a pickled :class:`~udfd.serve.worker.WorkerSpec` and the
worker's end of its control channel as a file descriptor) is answered with
``spawned`` (the pid); every worker that exits is reported as ``exited`` with
its wait status. The spawner reaps its children; when the supervisor's end
closes, it exits, and the workers see their own channels close.
"""

from __future__ import annotations

import gc
import logging
import os
import selectors
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any

from udfd.serve import channel

__all__ = ["Spawner", "describe_status"]

log = logging.getLogger("udfd.spawner")


def describe_status(status: int) -> str:
    """A wait status in words: ``exit code 1``, ``killed by SIGSEGV``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


class Spawner:
    """The supervisor's handle on the spawner process (its parent and owner)."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid

    @classmethod
    def start(cls, close_in_child: Iterable[socket.socket] = ()) -> Spawner:
        """Fork the spawner; call before any event loop or thread exists in this process.

        ``close_in_child``: the listening sockets, which neither the spawner nor
        any worker may hold (only the supervisor accepts).
        """
        ours, theirs = channel.pair()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the spawner
            code = 1
            try:
                ours.close()
                for sock in close_in_child:
                    sock.close()
                code = _serve(theirs)
            except BaseException:
                log.exception("spawner failed")
            finally:
                os._exit(code)
        theirs.close()
        return cls(ours, pid)


def _serve(sock: socket.socket) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    gc.freeze()  # keep what the workers share out of the collector's writes
    children: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    try:
                        header, _payload, fds = channel.recv_blocking(sock)
                    except channel.ChannelClosed:
                        return 0
                    pid = _spawn(header, fds, sock, (wake_r, wake_w))
                    children.add(pid)
                    channel.send_blocking(
                        sock, {"op": "spawned", "token": header["token"], "pid": pid}
                    )
                else:
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                _reap(children, sock)
    finally:
        selector.close()


def _reap(children: set[int], sock: socket.socket) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            children.discard(pid)
            continue
        if done:
            children.discard(pid)
            try:
                channel.send_blocking(sock, {"op": "exited", "pid": pid, "status": status})
            except OSError:
                return


def _spawn(
    header: dict[str, Any], fds: list[int], sock: socket.socket, pipe: tuple[int, int]
) -> int:
    spec = header["spec"]
    pid = os.fork()
    if pid == 0:  # the worker
        code = 70
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()
            for fd in pipe:
                os.close(fd)
            from udfd.serve.worker import run_worker

            control = socket.socket(fileno=fds[0])
            code = run_worker(spec, control)
        except BaseException:
            logging.getLogger("udfd.worker").exception("worker failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return pid
