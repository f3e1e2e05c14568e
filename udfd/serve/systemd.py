"""systemd's notify protocol, in the one small module that never raises.

``Type=notify`` units learn that udfd is ready (every socket bound, every handler
loaded or marked failed) from ``READY=1``, what it is doing from ``STATUS=...``,
that it is stopping from ``STOPPING=1``, and that its event loop still runs from
``WATCHDOG=1`` every half ``WatchdogSec=``. Outside systemd ``NOTIFY_SOCKET`` is
unset and every call is a no-op. Failures to notify are logged, never raised: a
notification is not worth a crash of the thing it reports on.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("udfd.serve.systemd")


def notify(*states: str) -> bool:
    """Send ``KEY=value`` lines to systemd; True when a notify socket took them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec=``), or None without one.

    ``WATCHDOG_PID``, when set, names the process systemd watches; anyone else
    (a worker that inherited the environment) must not ping for it.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
