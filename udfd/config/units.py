"""systemd units for udfd: the hardened service, and socket units that own the sockets.

With socket units, systemd binds every function's socket at boot, before
Kapacitor starts, and keeps it bound while udfd restarts: Kapacitor's connects
wait in the socket's backlog instead of failing. udfd takes the sockets over
(``udfd.serve.activation``) and binds whatever was not passed.

The shipped files (``config/systemd/``) are this module's output for the
packaged layout, and a test holds them to it, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from udfd.config import Config, DiscoveredHandler, resolve_functions

#: where the service's RuntimeDirectory= and StateDirectory= put things
RUNTIME_DIR = Path("/run/udfd")
STATE_DIR = Path("/var/lib/udfd")
#: the packaged layout the shipped units describe
PACKAGED_UDFD = Path("/opt/udfd/bin/udfd")
PACKAGED_CONFIG = Path("/etc/udfd/udfd.toml")
USER = "udfd"
#: the group udfd shares with Kapacitor: the sockets are rw for it
GROUP = "kapacitor"
#: socket unit of one function, generated: udfd-NAME.socket; shipped template: udfd@.socket
TEMPLATE_SOCKET = "udfd@.socket"


def _quote(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def service_unit(
    udfd: Path, config: Path, *, sockets: Sequence[str] = (), writable: Iterable[Path] = ()
) -> str:
    """``udfd.service``: Type=notify with a watchdog, a dedicated user, a read-only system.

    ``sockets`` names generated socket units to take descriptors from (the shipped
    template's instances find the service through their ``Service=`` instead);
    ``writable`` adds paths outside the runtime and state directories.
    """
    extra = sorted({str(p) for p in writable if not _under(p, RUNTIME_DIR, STATE_DIR)})
    lines = [
        "# udfd: Kapacitor UDFs, one daemon, many handlers (README.md: Under systemd).",
        "[Unit]",
        "Description=udfd, Kapacitor user-defined functions",
        "After=network.target",
    ]
    if sockets:
        lines.append("Wants=" + " ".join(sockets))
        lines.append("After=" + " ".join(sockets))
    lines += [
        "",
        "[Service]",
        "Type=notify",
        # the supervisor pings from its event loop; a loop that hangs is restarted
        "WatchdogSec=30s",
        "NotifyAccess=main",
        f"ExecStart={_quote(udfd)} serve --config {_quote(config)}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2s",
        "# 3: the config is invalid, 4: a socket cannot be bound; a restart changes neither",
        "RestartPreventExitStatus=3 4",
        "TimeoutStopSec=30s",
        f"User={USER}",
        f"Group={USER}",
        f"SupplementaryGroups={GROUP}",
        "UMask=0007",
        "RuntimeDirectory=udfd",
        "# Kapacitor must reach the sockets inside; their own mode and group guard them",
        "RuntimeDirectoryMode=0755",
        "# the socket units' files live here too: keep it across restarts",
        "RuntimeDirectoryPreserve=yes",
        "StateDirectory=udfd",
        "ConfigurationDirectory=udfd",
    ]
    if sockets:
        lines.append("Sockets=" + " ".join(sockets))
    lines += [
        "ProtectSystem=strict",
        *(f"ReadWritePaths={p}" for p in extra),
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def socket_unit(*, name: str, path: str, mode: int | None = None, group: str | None = None) -> str:
    """One function's socket unit; ``name`` and ``path`` may use ``%i`` (a template)."""
    return "\n".join(
        [
            "# A udfd function's socket, owned by systemd (README.md: Under systemd).",
            "[Unit]",
            f"Description=udfd socket of function {name}",
            "# no PartOf=: the socket stays bound while udfd restarts, so Kapacitor's",
            "# connects wait in its backlog instead of failing",
            "",
            "[Socket]",
            f"ListenStream={path}",
            f"FileDescriptorName={name}",
            f"SocketMode={mode if mode is not None else 0o660:04o}",
            f"SocketGroup={group or GROUP}",
            "DirectoryMode=0755",
            "Service=udfd.service",
            "RemoveOnStop=yes",
            "",
            "[Install]",
            "WantedBy=sockets.target",
            "",
        ]
    )


def shipped_units() -> dict[str, str]:
    """What ``config/systemd/`` holds: the service and the socket template."""
    return {
        "udfd.service": service_unit(PACKAGED_UDFD, PACKAGED_CONFIG),
        TEMPLATE_SOCKET: socket_unit(name="%i", path=f"{RUNTIME_DIR}/%i.sock"),
    }


def render_units(
    config: Config, discovered: Iterable[DiscoveredHandler], *, udfd: Path, config_path: Path
) -> dict[str, str]:
    """File name -> text: ``udfd.service`` and ``udfd-NAME.socket`` for each function.

    A ``socket_dir`` or ``state_dir`` the config leaves unset is where the service
    will find it (its RuntimeDirectory= and StateDirectory=), not where the
    defaults point for whoever runs this command.
    """
    updates = {
        key: default
        for key, default in (("socket_dir", RUNTIME_DIR), ("state_dir", STATE_DIR))
        if key not in config.model_fields_set
    }
    served = config.model_copy(update=updates) if updates else config
    functions = resolve_functions(served, discovered)
    units = {
        f"udfd-{fn.name}.socket": socket_unit(
            name=fn.name, path=str(fn.socket), mode=fn.socket_mode, group=fn.socket_group
        )
        for fn in functions
    }
    writable = [served.state_dir, *(fn.socket.parent for fn in functions)]
    units["udfd.service"] = service_unit(
        udfd, config_path, sockets=sorted(units), writable=writable
    )
    return units


def _under(path: Path, *roots: Path) -> bool:
    return any(path == root or root in path.parents for root in roots)
