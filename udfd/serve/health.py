"""The health endpoint: ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus), over HTTP.

It runs in the supervisor's event loop and reads what the supervisor knows: the
state of every function and the counters its workers report every second. So
it answers even while every worker is busy or restarting, and it never touches
a handler. A request is one short read and one write; anything that is not a
plain ``GET`` of those two paths gets its HTTP error, and a peer that sends
nothing is dropped after a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from udfd.config import TcpAddress
from udfd.serve.sockets import clear_stale_socket

log = logging.getLogger("udfd.serve.health")

#: the request head may not be longer (a health check's is ~100 bytes)
MAX_REQUEST = 8192
#: a peer gets this long to send its request
REQUEST_TIMEOUT = 5.0

Status = Callable[[], dict[str, Any]]
Metrics = Callable[[], bytes]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def health_document(status: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the JSON body of ``/health`` from the supervisor's status.

    200 when every configured function is serving; 503 while one is loading,
    failed or draining (or udfd is stopping), so a load balancer or an
    orchestrator sees exactly when Kapacitor would be served.
    """
    stopping = bool(status.get("stopping"))
    functions: dict[str, Any] = {}
    for fn in status.get("functions", []):
        state = {"ready": "serving"}.get(fn["state"], fn["state"])
        if stopping:
            state = "draining"
        entry: dict[str, Any] = {
            "state": state,
            "socket": fn.get("socket", ""),
            "connections": fn.get("connections_active", 0),
            "connections_total": fn.get("connections_total", 0),
            "connections_refused": fn.get("connections_refused", 0),
            "points_in": fn.get("points_in", 0),
            "points_out": fn.get("points_out", 0),
            "dropped": fn.get("dropped", 0),
            "resource_loads": fn.get("resource_loads", 0),
            "resource_hits": fn.get("resource_hits", 0),
            "errors": fn.get("handler_errors", 0) + fn.get("protocol_errors", 0),
            "last_error": fn.get("last_error", "") or None,
            "last_error_time": fn.get("last_error_time") or None,
            "handler": fn.get("origin") or fn.get("handler"),
            "load_seconds": fn.get("load_s"),
            "worker_pids": fn.get("worker_pids", []),
        }
        if fn["state"] == "failed":
            entry["reason"] = fn.get("error", "")
        functions[fn["name"]] = entry
    healthy = not stopping and all(f["state"] == "serving" for f in functions.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        "uptime_s": status.get("uptime_s"),
        "generation": status.get("generation"),
        "functions": functions,
    }
    if "kapacitor" in status:
        body["kapacitor"] = status["kapacitor"]
    return (200 if healthy else 503), body


async def _respond(
    stream: anyio.abc.ByteStream, code: int, body: bytes, content_type: str, head_only: bool
) -> None:
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    await stream.send(head if head_only else head + body)


async def _read_head(stream: anyio.abc.ByteStream) -> bytes | None:
    data = b""
    with anyio.move_on_after(REQUEST_TIMEOUT):
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            if len(data) > MAX_REQUEST:
                return None
            try:
                data += await stream.receive(4096)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return None
        return data
    return None


class HealthServer:
    """Serves ``/health`` and ``/metrics`` from two callables of the supervisor."""

    def __init__(self, status: Status, metrics: Metrics) -> None:
        self._status = status
        self._metrics = metrics

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        # a peer that left gets nothing more
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self._handle(stream)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        head = await _read_head(stream)
        if head is None:
            return
        line = head.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _respond(stream, 400, b"bad request\n", "text/plain", False)
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await _respond(stream, 405, b"GET or HEAD only\n", "text/plain", False)
            return
        head_only = method == "HEAD"
        if target == "/health":
            code, body = health_document(self._status())
            text = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
            await _respond(stream, code, text, "application/json", head_only)
        elif target == "/metrics":
            await _respond(stream, 200, self._metrics(), PROMETHEUS_TYPE, head_only)
        else:
            await _respond(stream, 404, b"try /health or /metrics\n", "text/plain", head_only)

    async def serve(
        self,
        address: TcpAddress | Path,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` until cancelled; a unix socket file is removed again."""
        listener: anyio.abc.Listener[Any]
        if isinstance(address, Path):
            clear_stale_socket(address)
            listener = await anyio.create_unix_listener(address)
        else:
            listener = await anyio.create_tcp_listener(
                local_host=address.host, local_port=address.port
            )
        log.info("health endpoint on %s (GET /health, /metrics)", _describe(address))
        task_status.started()
        try:
            async with listener:
                await listener.serve(self.handle)
        finally:
            if isinstance(address, Path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address)  # a unix call that does not block


def fetch_health(address: TcpAddress | Path, timeout: float) -> dict[str, Any] | None:
    """``GET /health`` of a running daemon, parsed; None when it cannot be had.

    For ``udfd check``: the daemon's live view, not the status file, which may be
    seconds old or, when the state directory stopped being writable, not there.
    """
    import socket

    try:
        if isinstance(address, Path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(str(address))
        else:
            host = "127.0.0.1" if address.host in ("0.0.0.0", "") else address.host
            host = "::1" if host == "::" else host
            sock = socket.create_connection((host, address.port), timeout=timeout)
        with sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: udfd\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
                if len(data) > 16 << 20:
                    return None
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.1 503"):
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _describe(address: TcpAddress | Path) -> str:
    if isinstance(address, Path):
        return str(address)
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"http://{host}:{address.port}"
