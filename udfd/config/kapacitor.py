"""The ``[kapacitor]`` table: where Kapacitor's HTTP API is, and how udfd signs in.

udfd uses the API for one thing: re-enabling the tasks that stopped because udfd
went away (Kapacitor never reconnects a UDF). Credentials come from the file or
the environment (``UDFD_KAPACITOR__TOKEN``), or better from a file that only
udfd's user can read (``token_file``, ``password_file``), so that the config
itself can be world-readable. They are ``SecretStr``: printing the config, its
repr or a validation error shows ``**********``, never the value.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from udfd.config.values import Duration

__all__ = ["KapacitorConfig"]


class KapacitorConfig(BaseModel):
    """Kapacitor's HTTP API; with ``url`` unset udfd never calls it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: e.g. "http://localhost:9092" (the API's base path /kapacitor/v1 is added)
    url: str | None = None
    #: basic auth (Kapacitor's [auth] users)
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    #: a bearer token (Kapacitor's shared-secret JWT), in the config, env or a file
    token: SecretStr | None = None
    token_file: Path | None = None
    #: TLS: a CA bundle to trust, a client certificate and key, or no verification
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False
    #: one HTTP request gives up after this long
    request_timeout: Duration = timedelta(seconds=10)
    #: re-enable the tasks that used udfd when it went away (needs url)
    reenable_tasks: bool = True
    #: how long to let Kapacitor notice the broken connections before asking it
    settle: Duration = timedelta(seconds=1)
    #: tries per task, with backoff doubling from ``backoff`` up to ``max_backoff``
    attempts: int = Field(default=6, ge=1, le=100)
    backoff: Duration = timedelta(seconds=1)
    max_backoff: Duration = timedelta(seconds=60)
    #: a task re-enabled this often within ``reenable_window`` is left stopped
    max_reenables: int = Field(default=3, ge=1, le=1000)
    reenable_window: Duration = timedelta(minutes=10)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        # checked first, and no message here repeats the value: it may hold a secret
        if "@" in parts.netloc or parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the URL are not allowed: use username with password or "
                "password_file, or token / token_file"
            )
        if parts.query or parts.fragment:
            raise ValueError("the URL must not have a query or fragment")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError('expected "http://host:port" or "https://host:port"')
        return scheme + value[len(parts.scheme) :]

    @model_validator(mode="after")
    def _consistent(self) -> KapacitorConfig:
        problems = []
        if self.password is not None and self.password_file is not None:
            problems.append("set password or password_file, not both")
        if self.token is not None and self.token_file is not None:
            problems.append("set token or token_file, not both")
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.username is None:
            problems.append("a password needs a username")
        if self.username is not None and (self.token is not None or self.token_file is not None):
            problems.append("use basic auth (username) or a token, not both")
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together")
        if self.backoff > self.max_backoff:
            problems.append("backoff must not exceed max_backoff")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def enabled(self) -> bool:
        """Whether udfd re-enables tasks through the API."""
        return self.url is not None and self.reenable_tasks
