"""The value types of udfd's config, and the defaults that depend on who runs udfd.

Kept apart from :mod:`udfd.config` (the model and its loading) because each
is a small, pure rule: how a duration, a permission mode or an address is
written, and where sockets and state go when the config does not say.
Reads the environment only through the mapping it is given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip
_MODE = re.compile(r"(?:0o?)?([0-7]{3,4})\Z")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---------------------------------------------------------------- value types


def parse_duration(value: object) -> timedelta:
    """Read a Go-style duration ("10s", "1m30s", "500ms", "0"), as Kapacitor writes them."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError('expected a duration string such as "10s"')
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    if text == "0":
        return timedelta(0)
    pos, seconds = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f'invalid duration {value!r}: use units h, m, s, ms, us, ns ("10s")')
        seconds += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Write a duration the way Go's ``time.Duration.String`` does (Kapacitor parses it)."""
    micros = round(value.total_seconds() * 1_000_000)
    if micros == 0:
        return "0s"
    if micros < 1_000_000:
        return f"{micros // 1000}ms" if micros % 1000 == 0 else f"{micros}us"
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    whole, frac = divmod(rest, 1_000_000)
    secs = f"{whole}.{frac:06d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


#: ``socket_mode = "auto"``: 0660 with Kapacitor's group when udfd can use it, else 0666
AUTO_MODE = -1


def parse_mode(value: object) -> object:
    """An octal permission string ("0660"), an int written as TOML octal (0o660), or "auto"."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO_MODE
    if isinstance(value, int):
        if not 0 <= value <= 0o777:
            raise ValueError(
                f'{value} is not a permission mode; write it as a string ("0660") '
                "or an octal integer (0o660)"
            )
        return value
    if isinstance(value, str):
        match = _MODE.match(value.strip())
        if match is None or int(match[1], 8) > 0o777:
            raise ValueError(
                f'invalid socket mode {value!r}: expected octal such as "0660", or "auto"'
            )
        return int(match[1], 8)
    return value


def _positive_duration(value: object) -> timedelta:
    duration = parse_duration(value)
    if duration < timedelta(0):
        raise ValueError("a duration cannot be negative")
    return duration


#: a config value in Go syntax ("10s"), or a number of seconds; never negative
Duration = Annotated[timedelta, BeforeValidator(_positive_duration)]
#: "0660" or an int written in TOML octal (0o660)
SocketMode = Annotated[int | None, BeforeValidator(parse_mode)]


def is_function_name(name: str) -> bool:
    """Whether a TICKscript can call ``name`` (``@name()``): an identifier."""
    return _IDENTIFIER.match(name) is not None


def _function_name(name: str) -> str:
    if not is_function_name(name):
        raise ValueError("not a valid TICKscript identifier ([A-Za-z_][A-Za-z0-9_]*)")
    return name


#: the key of a ``[functions.NAME]`` table. Checked as a key, with the other field
#: errors, so one round of loading reports a bad name together with bad values.
FunctionName = Annotated[str, AfterValidator(_function_name)]


def normalize_distribution(name: str) -> str:
    """PEP 503 normalisation, so "udfd_ADSL" and "udfd-adsl" name the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class TcpAddress:
    """A ``host:port`` health endpoint (``:8649`` means 127.0.0.1)."""

    host: str
    port: int


# ---------------------------------------------------------------- default directories


def _writable_dir(path: Path) -> bool:
    """``path`` is a directory we may create sockets in, or could be created by us."""
    if path.is_dir():
        return os.access(path, os.W_OK | os.X_OK)
    parent = path.parent
    return not path.exists() and parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def default_socket_dir(env: Mapping[str, str]) -> Path:
    """Where sockets go when ``socket_dir`` is not set.

    ``$RUNTIME_DIRECTORY`` (systemd ``RuntimeDirectory=udfd``), else ``/run/udfd``
    when we may write or create it (root), else ``$XDG_RUNTIME_DIR/udfd`` (a
    logged-in user), else ``/tmp/udfd-$UID``: ``udfd serve`` works for anyone.
    """
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime and Path(runtime).is_absolute():
        return Path(runtime)
    if _writable_dir(Path("/run/udfd")):
        return Path("/run/udfd")
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and Path(xdg).is_absolute() and Path(xdg).is_dir():
        return Path(xdg) / "udfd"
    return Path(f"/tmp/udfd-{os.getuid()}")


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where the Info state file goes: a place that survives reboots, unlike /run.

    ``$STATE_DIRECTORY`` (systemd ``StateDirectory=udfd``), else ``/var/lib/udfd``
    for root, else ``$XDG_STATE_HOME/udfd`` or ``~/.local/state/udfd``.
    """
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state and Path(state).is_absolute():
        return Path(state)
    if os.geteuid() == 0:
        return Path("/var/lib/udfd")
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "udfd"
    home = env.get("HOME", "")
    if home and Path(home).is_absolute():
        return Path(home) / ".local" / "state" / "udfd"
    return default_socket_dir(env) / "state"
