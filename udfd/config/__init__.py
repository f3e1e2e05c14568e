"""udfd's configuration: the one place that reads config files and ``UDFD_*`` variables.

Sources, lowest priority first: built-in defaults (socket and state directories,
which depend on the user), the TOML file, then environment variables. Nested
keys use ``__``: ``UDFD_SOCKET_DIR=/srv/udfd``,
``UDFD_FUNCTIONS__ADSL_STATE__SOCKET_MODE=0660``; list and table values are
JSON (``UDFD_ALLOW_DISTRIBUTIONS='["udfd-adsl"]'``). Variable names are
case-insensitive, so a function name given only in the environment is taken in
lower case; one that exists in the file is matched regardless of case.

Without a file (and without ``UDFD_CONFIG``) the embedded ``defaults/default.toml``
is used: it sets ``serve_installed = true``, which serves every installed handler
(entry point group ``udfd.handlers``) as a function of the same name.

The model is strict (unknown keys are errors naming their path) and frozen, and
every problem is reported as one ``key.path: what is wrong`` line in a
:class:`~udfd.errors.ConfigError`, all of them at once: bad values and names
together with the checks of the whole config (sockets, at least one function).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from udfd.config.kapacitor import KapacitorConfig
from udfd.config.values import (
    AUTO_MODE,
    Duration,
    FunctionName,
    SocketMode,
    TcpAddress,
    default_socket_dir,
    default_state_dir,
    format_duration,
    is_function_name,
    normalize_distribution,
    parse_duration,
)
from udfd.errors import ConfigError
from udfd.handler import ErrorPolicy
from udfd.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE
from udfd.serve.sockets import MAX_SOCKET_PATH, usable_group

__all__ = [
    "CONFIG_ENV",
    "Config",
    "DiscoveredHandler",
    "Function",
    "FunctionConfig",
    "KapacitorConfig",
    "TcpAddress",
    "default_config_text",
    "default_socket_dir",
    "default_state_dir",
    "format_duration",
    "load_config",
    "normalize_distribution",
    "parse_duration",
    "render_kapacitor_conf",
    "resolve_functions",
]

log = logging.getLogger("udfd.config")

ENV_PREFIX = "UDFD_"
#: Names the config file when no path is given explicitly.
CONFIG_ENV = "UDFD_CONFIG"
#: UDFD_* variables that are not settings (lower case, without the prefix)
_NOT_SETTINGS = frozenset({"config"})
STATE_FILE_NAME = "info.json"
#: off unless asked for: a default socket nobody asked for must never reject a config
#: (a long socket_dir made its path too long for a unix socket)
DEFAULT_HEALTH = ""
DEFAULT_POOL = "default"
#: keys whose values are secrets: never echoed in an error line
SECRET_KEYS = frozenset({"password", "token"})

_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^/:\[\]]*):(\d+)\Z")


# ---------------------------------------------------------------- the model


class FunctionConfig(BaseModel):
    """One ``[functions.NAME]`` table; unset keys inherit the global defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: entry-point name | "package.module:Class" | "path/file.py:Class"; default: NAME
    handler: str | None = Field(default=None, min_length=1)
    #: absolute, or relative to socket_dir; default: <socket_dir>/<NAME>.sock
    socket: Path | None = None
    socket_mode: SocketMode = None
    socket_group: str | None = Field(default=None, min_length=1)
    timeout: Duration | None = None
    error_policy: ErrorPolicy | None = None
    #: accepted for compatibility; every handler runs off the I/O thread anyway
    threaded: bool = False
    #: the pool of worker processes that serves this function ("default" or [pools.NAME])
    pool: str = Field(default=DEFAULT_POOL, min_length=1)
    handler_timeout: Duration | None = None
    slow_call: Duration | None = None
    max_connections: int | None = Field(default=None, ge=1, le=100_000)
    #: defaults for the handler's options (TICKscript values override them)
    options: dict[str, Any] = Field(default_factory=dict)


class PoolConfig(BaseModel):
    """One ``[pools.NAME]`` table: worker processes that serve only their functions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(default=1, ge=1, le=64)


class Config(BaseSettings):
    """The whole configuration; see ``config/udfd.toml`` for every key, commented."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    socket_dir: Path = Field(default_factory=lambda: default_socket_dir(os.environ))
    state_dir: Path = Field(default_factory=lambda: default_state_dir(os.environ))
    #: "host:port", a unix socket path (relative: in socket_dir), or "" to disable
    health: str = DEFAULT_HEALTH
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["plain", "json"] = "plain"
    shutdown_grace: Duration = timedelta(seconds=10)
    max_message_size: int = Field(default=DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    #: distributions allowed to provide entry-point handlers; empty: all
    allow_distributions: tuple[str, ...] = ()
    #: ignore entry points (UDFD_DISABLE_PLUGIN_AUTOLOAD=1); module/file references still work
    disable_plugin_autoload: bool = False
    #: serve every installed handler as a function named after its entry point
    serve_installed: bool = False
    # defaults of every function
    socket_mode: SocketMode = None
    socket_group: str | None = Field(default=None, min_length=1)
    timeout: Duration = timedelta(seconds=10)
    error_policy: ErrorPolicy = ErrorPolicy.ERROR
    #: a handler call running longer ends its connection (stack logged)
    handler_timeout: Duration = timedelta(seconds=30)
    #: a handler call running longer is logged with its stack
    slow_call: Duration = timedelta(seconds=1)
    #: open connections one function accepts; more are refused with an ErrorResponse
    max_connections: int = Field(default=256, ge=1, le=100_000)
    #: groups of state one connection's handler may keep (per GroupState)
    max_groups: int = Field(default=100_000, ge=1)
    #: points one batch may hold in a batch handler; a larger batch is dropped whole
    max_batch_points: int = Field(default=1_000_000, ge=1)
    #: a connection without a successful Init is closed after this long
    init_timeout: Duration = timedelta(seconds=30)
    #: the listen() backlog of every socket (the kernel caps it at net.core.somaxconn)
    listen_backlog: int = Field(default=1024, ge=1, le=65_535)
    #: worker processes of the default pool
    workers: int = Field(default=1, ge=1, le=64)
    pools: dict[FunctionName, PoolConfig] = Field(default_factory=dict)
    functions: dict[FunctionName, FunctionConfig] = Field(default_factory=dict)
    #: Kapacitor's HTTP API, for re-enabling tasks after udfd restarts
    kapacitor: KapacitorConfig = Field(default_factory=KapacitorConfig)

    #: not a setting: the file this was read from (frozen applies to fields only)
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("socket_dir", "state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, not {str(value)!r}")
        return value

    @field_validator("health")
    @classmethod
    def _health(cls, value: str) -> str:
        value = value.strip()
        if ":" in value and "/" not in value and _HOST_PORT.match(value) is None:
            raise ValueError(f'expected "host:port", a unix socket path or "", got {value!r}')
        match = _HOST_PORT.match(value)
        if match and not 0 < int(match[2]) < 65536:
            raise ValueError(f"port out of range in {value!r}")
        return value

    @pydantic.model_validator(mode="after")
    def _check(self) -> Config:
        """The checks of the whole config; their inputs are listed in :func:`_check_inputs`.

        Pydantic runs this only when every field is valid; :func:`load_config`
        runs it on the valid inputs otherwise, so all problems show at once.
        """
        problems = []
        if not self.functions and not self.serve_installed:
            problems.append(
                "functions: no functions configured; add [functions.NAME] tables "
                "or set serve_installed = true"
            )
        problems += _socket_problems(self, self.functions)
        for name, fn in self.functions.items():
            if fn.pool != DEFAULT_POOL and fn.pool not in self.pools:
                known = ", ".join([DEFAULT_POOL, *sorted(self.pools)])
                problems.append(f"functions.{name}.pool: no pool {fn.pool!r} (pools: {known})")
        if DEFAULT_POOL in self.pools:
            problems.append(f"pools.{DEFAULT_POOL}: set the default pool's size with `workers`")
        if problems:
            raise PydanticCustomError("udfd_config", "\n".join(problems))
        return self

    def pool_sizes(self) -> dict[str, int]:
        """Worker processes per pool, the default pool first."""
        return {DEFAULT_POOL: self.workers, **{n: p.workers for n, p in self.pools.items()}}

    def allows(self, distribution: str) -> bool:
        """Whether handlers of this distribution may be loaded (the allow-list)."""
        allowed = {normalize_distribution(d) for d in self.allow_distributions}
        return not allowed or normalize_distribution(distribution) in allowed

    def socket_path(self, name: str) -> Path:
        """Where the function ``name`` listens (configured or <socket_dir>/<name>.sock)."""
        fn = self.functions.get(name)
        path = fn.socket if fn is not None and fn.socket is not None else Path(f"{name}.sock")
        return Path(os.path.normpath(self.socket_dir / path))

    def health_address(self) -> TcpAddress | Path | None:
        """The health endpoint: a TCP address, a unix socket path, or None (disabled)."""
        if not self.health:
            return None
        match = _HOST_PORT.match(self.health)
        if match:
            return TcpAddress(match[1].strip("[]") or "127.0.0.1", int(match[2]))
        return self.socket_dir / self.health

    @property
    def state_file(self) -> Path:
        """Info last served per function, the fallback for handlers that fail to load."""
        return self.state_dir / STATE_FILE_NAME

    @property
    def source(self) -> Path | None:
        """The config file this was loaded from (None: embedded default or direct)."""
        return self._source


def _socket_problems(config: Config, names: Iterable[str]) -> list[str]:
    """Unique socket paths, each short enough for sun_path; one line per problem."""
    problems: list[str] = []
    seen: dict[Path, str] = {}
    health = config.health_address()
    if isinstance(health, Path):
        seen[health] = "health"
        if len(os.fsencode(health)) > MAX_SOCKET_PATH:
            problems.append(f"health: {str(health)!r} is longer than {MAX_SOCKET_PATH} bytes")
    for name in names:
        path = config.socket_path(name)
        key = f"functions.{name}.socket"
        size = len(os.fsencode(path))
        if size > MAX_SOCKET_PATH:
            fn = config.functions.get(name)
            hint = "" if fn and fn.socket else " (<socket_dir>/<name>.sock; shorten socket_dir)"
            problems.append(
                f"{key}: {str(path)!r} is {size} bytes; unix sockets allow at most "
                f"{MAX_SOCKET_PATH}{hint}"
            )
        if path in seen:
            problems.append(f"{key}: {str(path)!r} is also the socket of {seen[path]}")
        else:
            seen[path] = f"functions.{name}"
    return problems


# ---------------------------------------------------------------- loading


def _check_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """What :meth:`Config._check` reads, taken from raw ``values``: the socket and
    health settings, ``serve_installed``, and each well-named function's socket.

    A function whose name or table is invalid is left out (its error is reported
    already); one whose ``socket`` is not a string too, rather than being checked
    at the default path, which could report a collision that is not there.
    Misnamed functions still count as functions for "no functions configured".
    """
    inputs = {k: values[k] for k in ("socket_dir", "health", "serve_installed") if k in values}
    functions = values.get("functions")
    if isinstance(functions, Mapping) and functions:
        inputs["serve_installed"] = True
        inputs["functions"] = {
            name: {"socket": table["socket"]} if "socket" in table else {}
            for name, table in functions.items()
            if isinstance(name, str)
            and is_function_name(name)
            and isinstance(table, Mapping)
            and isinstance(table.get("socket", ""), str)
        }
    return inputs


def _whole_config_problems(values: Mapping[str, Any]) -> list[str]:
    """:meth:`Config._check`'s problems for a config with invalid fields.

    Validates only the check's inputs (:func:`_check_inputs`). When one of those
    is invalid itself, its error is already reported and the check is skipped
    rather than run on a default in its place.
    """
    try:
        Config.model_validate(_check_inputs(values))
    except pydantic.ValidationError as exc:
        return [
            line
            for err in exc.errors(include_url=False)
            if err["type"] == "udfd_config"
            for line in err["msg"].splitlines()
        ]
    return []


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def default_config_text() -> str:
    """The embedded default configuration (package data)."""
    return resources.files("udfd").joinpath("defaults/default.toml").read_text("utf-8")


def _env_values(env: Mapping[str, str], file_functions: Iterable[str]) -> dict[str, Any]:
    """``UDFD_*`` variables as nested data, parsed by pydantic-settings' own env source.

    Strict like the file: a ``UDFD_`` variable that names no setting is an error
    (a typo would otherwise be ignored silently).
    """
    ours = {k.lower(): v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)}
    for key in sorted(ours):
        head = key[len(ENV_PREFIX) :].partition("__")[0]
        if head not in Config.model_fields and head not in _NOT_SETTINGS:
            raise ConfigError(f"environment: {key.upper()}: unknown setting")
    source = EnvSettingsSource(Config)
    # The source reads os.environ when built; parse the mapping we were given instead.
    source.env_vars = ours
    try:
        values = source()
    except SettingsError as exc:
        raise ConfigError(
            f"environment: {exc} (lists and tables are JSON in UDFD_* variables)"
        ) from None
    functions = values.get("functions")
    if isinstance(functions, dict):  # env names are lower-cased; match the file's spelling
        by_lower = {name.lower(): name for name in file_functions}
        values["functions"] = {by_lower.get(k, k): v for k, v in functions.items()}
    return values


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _error_lines(exc: pydantic.ValidationError, env: Mapping[str, str]) -> list[str]:
    """One ``key.path: problem`` line per error, naming the variable when env set it."""
    env_names = {k.upper() for k in env}
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = err["loc"][:-1] if err["loc"][-1:] == ("[key]",) else err["loc"]  # a bad name
        key = ".".join(str(part) for part in loc)
        var = ENV_PREFIX + "__".join(str(part) for part in loc).upper()
        origin = f" (from {var})" if loc and var in env_names else ""
        kind = err["type"]
        if kind == "udfd_config":
            lines.extend(err["msg"].splitlines())
            continue
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "value_error":
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
        elif loc and str(loc[-1]) in SECRET_KEYS:
            msg = f"{err['msg']} (value not shown: it is a secret)"
        else:
            msg = f"{err['msg']} (got {err['input']!r})"
        lines.append(f"{key}: {msg}{origin}" if key else msg)
    return lines


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config file (or the embedded default) with ``UDFD_*`` overrides.

    ``path`` None means ``$UDFD_CONFIG`` if set, else the embedded default.
    ``env`` defaults to ``os.environ``. Raises :class:`ConfigError` with one line
    per problem, each starting with the key's path.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    if path is not None:
        data = _read_toml(path)
        where = str(path)
    else:
        try:
            data = tomllib.loads(default_config_text())
        except tomllib.TOMLDecodeError as exc:  # a packaging bug, but say so clearly
            raise ConfigError(f"embedded default config: invalid TOML: {exc}") from None
        where = "embedded default config"
    files = data.get("functions")
    values = _merge(data, _env_values(env, files if isinstance(files, dict) else ()))
    values.setdefault("socket_dir", default_socket_dir(env))
    values.setdefault("state_dir", default_state_dir(env))
    try:
        config = Config.model_validate(values)
    except pydantic.ValidationError as exc:
        lines = _error_lines(exc, env)
        if not any(err["type"] == "udfd_config" for err in exc.errors()):
            lines += _whole_config_problems(values)  # Config._check did not run
        raise ConfigError(f"{where}:\n" + "\n".join(lines)) from None
    if path is not None:
        config._source = path.resolve()
    return config


# ---------------------------------------------------------------- resolution


class DiscoveredHandler(Protocol):
    """What resolution needs of an installed handler (``plugins.InstalledHandler``)."""

    @property
    def name(self) -> str: ...

    @property
    def distribution(self) -> str: ...


@dataclass(frozen=True)
class Function:
    """One function to serve, with every default applied: what the daemon consumes."""

    name: str
    handler: str
    socket: Path
    socket_mode: int | None
    socket_group: str | None
    timeout: timedelta
    error_policy: ErrorPolicy
    threaded: bool
    options: Mapping[str, Any]
    #: relative file references ("handlers/x.py:X") are relative to this
    base_dir: Path
    #: "config" (a [functions.NAME] table) or "installed" (serve_installed)
    origin: Literal["config", "installed"]
    pool: str = DEFAULT_POOL
    handler_timeout: timedelta = timedelta(seconds=30)
    slow_call: timedelta = timedelta(seconds=1)
    max_connections: int = 256


def _auto_permissions(group: str | None) -> tuple[int, str | None]:
    """``socket_mode = "auto"``: 0660 for the configured group, or for Kapacitor's group
    when it exists and udfd may use it; else 0666 (``udfd serve`` warns about that)."""
    group = group or usable_group()
    return (0o660, group) if group is not None else (0o666, None)


def resolve_functions(
    config: Config, discovered: Iterable[DiscoveredHandler] = ()
) -> tuple[Function, ...]:
    """The functions to serve: the configured ones, plus, with ``serve_installed``,
    every allowed installed entry point not configured already, named after it.

    Raises :class:`ConfigError` when the added functions' sockets collide or are
    too long. Entry points whose names are not TICKscript identifiers are skipped.
    """
    source = config.source
    base_dir = source.parent if source is not None else Path.cwd()
    names: dict[str, Literal["config", "installed"]] = dict.fromkeys(config.functions, "config")
    if config.serve_installed and not config.disable_plugin_autoload:
        for handler in discovered:
            if handler.name in names or not config.allows(handler.distribution):
                continue
            if not is_function_name(handler.name):
                log.warning(
                    "not serving entry point %r of %s: not a valid TICKscript identifier",
                    handler.name,
                    handler.distribution,
                )
                continue
            names[handler.name] = "installed"
    problems = _socket_problems(config, names)
    if problems:
        raise ConfigError("\n".join(problems))
    empty = FunctionConfig()
    functions = []
    for name, origin in names.items():
        fn = config.functions.get(name, empty)
        mode = fn.socket_mode if fn.socket_mode is not None else config.socket_mode
        group = fn.socket_group or config.socket_group
        if mode == AUTO_MODE:
            mode, group = _auto_permissions(group)
        functions.append(
            Function(
                name=name,
                handler=fn.handler or name,
                socket=config.socket_path(name),
                socket_mode=mode,
                socket_group=group,
                timeout=fn.timeout if fn.timeout is not None else config.timeout,
                error_policy=fn.error_policy or config.error_policy,
                threaded=fn.threaded,
                options=MappingProxyType(dict(fn.options)),
                pool=fn.pool,
                handler_timeout=fn.handler_timeout or config.handler_timeout,
                slow_call=fn.slow_call or config.slow_call,
                max_connections=fn.max_connections or config.max_connections,
                base_dir=base_dir,
                origin=origin,
            )
        )
    return tuple(functions)


def render_kapacitor_conf(config: Config, discovered: Iterable[DiscoveredHandler] = ()) -> str:
    """The ``[udf.functions.NAME]`` sections for kapacitor.conf, derived from the config.

    Only the function sections are printed, so they can be pasted below an
    existing ``[udf]`` / ``[udf.functions]`` in kapacitor.conf.
    """
    source = config.source
    lines = [
        f"# udfd functions ({source or 'embedded default config'}); "
        "paste into kapacitor.conf and restart Kapacitor",
    ]
    for fn in resolve_functions(config, discovered):
        lines += [
            "",
            f"[udf.functions.{fn.name}]",
            f"  socket = {json.dumps(str(fn.socket))}",
            f"  timeout = {json.dumps(format_duration(fn.timeout))}",
        ]
    return "\n".join(lines) + "\n"
