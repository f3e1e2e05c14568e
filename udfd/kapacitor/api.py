"""A small, blocking client of Kapacitor's task API (``/kapacitor/v1/tasks/ID``).

Blocking on purpose: the supervisor calls it from a worker thread, a few
requests per restart, and the standard library's ``urllib`` brings TLS, proxies
and timeouts without another dependency on the supervisor's path.

Facts it relies on (Kapacitor's API documentation and task store):

* ``GET`` answers 200 with the task as JSON, whose ``status`` is ``"enabled"`` or
  ``"disabled"``, ``executing`` a bool and ``error`` the last error; 404 when the
  task does not exist.
* ``PATCH`` with ``{"status": ...}`` starts or stops the task only when the status
  *changes*. A task that stopped with an error is still ``"enabled"``, so
  enabling it again takes a disable first.
* Errors come as ``{"error": "..."}``; 4xx repeat the same answer if repeated,
  5xx may succeed later (a start that failed is a 500).

Credentials go in headers only, read from the config or their files at each
round, and are never part of a message, a URL or a log line.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from udfd.config.kapacitor import KapacitorConfig

__all__ = ["ApiError", "TaskApi", "TaskState"]

BASE_PATH = "/kapacitor/v1/tasks/"
#: the most of an answer read; a task with a big TICKscript is still far below it
MAX_BODY = 4 * 1024 * 1024
USER_AGENT = "udfd (task re-enabler)"


@dataclass(frozen=True)
class TaskState:
    status: str
    executing: bool
    error: str


class ApiError(Exception):
    """A request that failed; ``kind`` says whether trying again can help.

    ``gone``: no such task (404). ``final``: Kapacitor refused and will again
    (other 4xx, a bad answer, credentials that cannot be read). ``transient``:
    connection refused, timeout, 5xx.
    """

    def __init__(self, kind: Literal["gone", "final", "transient"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could carry the Authorization header to another host: refuse it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ApiError("final", f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ApiError("final", f"{what} {path} is not text") from None


class TaskApi:
    """One Kapacitor's task endpoints, with the config's credentials and TLS options."""

    def __init__(self, config: KapacitorConfig) -> None:
        if config.url is None:
            raise ValueError("TaskApi needs kapacitor.url")
        self.base = config.url
        self._config = config
        self._timeout = config.request_timeout.total_seconds()
        self._opener: urllib.request.OpenerDirector | None = None

    def _open(self) -> urllib.request.OpenerDirector:
        """The opener, built at the first request: a CA file or certificate that cannot be
        read is that request's error (logged, counted), never a reason not to start."""
        if self._opener is not None:
            return self._opener
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if urlsplit(self.base).scheme.lower() == "https":
            handlers.append(urllib.request.HTTPSHandler(context=self._tls()))
        self._opener = urllib.request.build_opener(*handlers)
        return self._opener

    def _tls(self) -> ssl.SSLContext:
        c = self._config
        try:
            context = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
            if c.cert_file is not None and c.key_file is not None:
                context.load_cert_chain(str(c.cert_file), str(c.key_file))
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(str(p) for p in (c.ca_file, c.cert_file, c.key_file) if p)
            reason = getattr(exc, "strerror", None) or exc
            raise ApiError("final", f"cannot use the TLS files ({files}): {reason}") from None
        if c.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _auth(self) -> dict[str, str]:
        c = self._config
        token = c.token.get_secret_value() if c.token is not None else None
        if c.token_file is not None:
            token = _read_secret(c.token_file, "kapacitor.token_file")
        if token:
            return {"Authorization": f"Bearer {token}"}
        if c.username is not None:
            password = c.password.get_secret_value() if c.password is not None else ""
            if c.password_file is not None:
                password = _read_secret(c.password_file, "kapacitor.password_file")
            pair = base64.b64encode(f"{c.username}:{password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}

    def url(self, task: str) -> str:
        return self.base + BASE_PATH + quote(task, safe="")

    def get(self, task: str) -> TaskState:
        return _state(self._request("GET", task))

    def set_status(self, task: str, status: Literal["enabled", "disabled"]) -> TaskState:
        return _state(self._request("PATCH", task, {"status": status}))

    def _request(self, method: str, task: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **self._auth()}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url(task), data=data, method=method, headers=headers)
        where = f"{method} {self.base}{BASE_PATH}{task}"
        try:
            with self._open().open(request, timeout=self._timeout) as answer:
                raw = answer.read(MAX_BODY)
        except urllib.error.HTTPError as exc:
            raise _http_error(where, exc) from None
        except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ApiError("transient", f"{where}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError("final", f"{where}: the answer is not JSON") from None


def _http_error(where: str, exc: urllib.error.HTTPError) -> ApiError:
    try:
        detail = str(json.loads(exc.read(64 * 1024)).get("error", ""))
    except (OSError, ValueError, AttributeError, HTTPException):
        detail = ""
    finally:
        exc.close()
    text = f"{where}: HTTP {exc.code}" + (f": {detail}" if detail else "")
    if exc.code == 404:
        return ApiError("gone", text)
    if exc.code in (401, 403):
        return ApiError("final", text + " (check kapacitor.username/password or token)")
    if 300 <= exc.code < 400:
        return ApiError("final", text + " (a redirect; udfd does not follow them: fix the url)")
    if exc.code == 429 or exc.code >= 500:
        return ApiError("transient", text)
    return ApiError("final", text)


def _state(doc: Any) -> TaskState:
    if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
        raise ApiError("final", "the answer is not a Kapacitor task (no status)")
    return TaskState(doc["status"], bool(doc.get("executing")), str(doc.get("error") or ""))
