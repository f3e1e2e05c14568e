"""A stand-in for Kapacitor's task API and its UDF connections, for the re-enabling tests.

A fake, and said so: no Kapacitor can be installed on the test machines (it is not
in the Debian archive they use, and building it is ruled out). It follows what
Kapacitor's HTTP API documentation and its task store's source state:

* ``GET /kapacitor/v1/tasks/ID`` answers the task (``status`` "enabled"/"disabled",
  ``executing``, ``error``, ...) or 404 ``{"error": ...}``;
* ``PATCH`` with ``{"status": ...}`` starts or stops the task only when the status
  changes; a start that fails answers 500 with the error, and the task stays
  "enabled" with that error;
* starting a task opens its UDF node's connection: Info, then Init with the task
  and node IDs; an Init failure fails the start;
* when the UDF's connection breaks, the task stops executing, keeps status
  "enabled" and records the error. Kapacitor never reconnects by itself;
* with authentication on, a request without the right ``Authorization`` header
  gets 401.

The UDF side speaks the real wire protocol over the real unix socket, with its
own few lines of framing (not udfd's), so the daemon is driven as Kapacitor does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from udfd.protocol.proto import udf_pb2 as pb

PREFIX = "/kapacitor/v1/tasks/"


def _send(sock: socket.socket, request: pb.Request) -> None:
    body = request.SerializeToString()
    size, head = len(body), bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        head.append(byte | (0x80 if size else 0))
        if not size:
            break
    sock.sendall(bytes(head) + body)


def _receive(sock: socket.socket) -> pb.Response | None:
    size, shift = 0, 0
    while True:
        byte = sock.recv(1)
        if not byte:
            return None
        size |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            return None
        data += more
    return pb.Response.FromString(data)


class StartFailed(Exception):
    pass


class UdfLink:
    """One UDF node's connection, kept as Kapacitor keeps it while the task runs."""

    def __init__(
        self,
        path: Path,
        task: str,
        node: str,
        points: list[pb.Point],
        on_gone: Callable[[str], None],
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        try:
            self.sock.connect(str(path))
            _send(self.sock, pb.Request(info=pb.InfoRequest()))
            answer = _receive(self.sock)
            if answer is None or not answer.HasField("info"):
                raise StartFailed(f"udf {node}: no Info response")
            _send(self.sock, pb.Request(init=pb.InitRequest(taskID=task, nodeID=node)))
            answer = _receive(self.sock)
            if answer is None or not answer.HasField("init"):
                raise StartFailed(f"udf {node}: no Init response")
            if not answer.init.success:
                raise StartFailed(f"udf {node}: failed to initialize UDF: {answer.init.error}")
            for point in points:
                _send(self.sock, pb.Request(point=point))
        except OSError as exc:
            self.sock.close()
            raise StartFailed(f"udf {node}: {exc}") from None
        except StartFailed:
            self.sock.close()
            raise
        self.sock.settimeout(None)
        self._on_gone = on_gone
        self._stopping = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        reason = "read error: EOF"
        try:
            while True:
                answer = _receive(self.sock)
                if answer is None:
                    break
                if answer.HasField("error"):
                    reason = answer.error.error
                    break
        except OSError as exc:
            reason = f"read error: {exc}"
        if not self._stopping:
            self.sock.close()
            self._on_gone(reason)

    def stop(self) -> None:
        """A task stop: half-close, let the UDF finish, close."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self._reader.join(10)
        self.sock.close()


@dataclass
class Task:
    id: str
    socket: Path
    node: str = "udf2"
    #: sent after every start's Init (a point that crashes a handler, say)
    points: list[pb.Point] = field(default_factory=list)
    status: str = "disabled"
    error: str = ""
    link: UdfLink | None = None
    starts: int = 0
    last_enabled: str = ""

    @property
    def executing(self) -> bool:
        return self.link is not None


class StandInKapacitor:
    """The task API on 127.0.0.1 and the tasks' UDF connections."""

    def __init__(
        self,
        *,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tasks: dict[str, Task] = {}
        self.lock = threading.RLock()
        self.token = token
        self.basic = basic
        #: (method, task ID, JSON body or None, Authorization header)
        self.requests: list[tuple[str, str, Any, str]] = []
        #: status codes answered, in order, to the next requests instead of serving them
        self.fail_next: list[int] = []
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._tls = tls
        self._server: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- the server

    def start(self) -> StandInKapacitor:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stand_in._serve(self, "GET")

            def do_PATCH(self) -> None:
                stand_in._serve(self, "PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            for task in self.tasks.values():
                if task.link is not None:
                    task.link.stop()
                    task.link = None

    def _authorized(self, header: str) -> bool:
        if self.token is not None:
            return header == f"Bearer {self.token}"
        if self.basic is not None:
            pair = base64.b64encode(":".join(self.basic).encode()).decode()
            return header == f"Basic {pair}"
        return True

    def _serve(self, http: BaseHTTPRequestHandler, method: str) -> None:
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        auth = http.headers.get("Authorization", "")
        task_id = http.path[len(PREFIX) :] if http.path.startswith(PREFIX) else ""
        with self.lock:
            self.requests.append((method, task_id, body, auth))
            injected = self.fail_next.pop(0) if self.fail_next else None
        if injected is not None:
            return _answer(http, injected, {"error": "injected by the test"})
        if task_id == "redirected":  # a proxy in the way, say: the client must not follow
            http.send_response(307)
            http.send_header("Location", f"http://127.0.0.1:{self.port}{PREFIX}elsewhere")
            http.send_header("Content-Length", "0")
            http.end_headers()
            return None
        if not self._authorized(auth):
            return _answer(http, 401, {"error": "authentication required"})
        if not task_id:
            return _answer(http, 400, {"error": "must specify task id on path"})
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _answer(http, 404, {"error": "no task exists"})
            if method == "PATCH":
                wanted = (body or {}).get("status")
                if wanted not in (None, "enabled", "disabled"):
                    return _answer(http, 400, {"error": f"invalid status {wanted!r}"})
                if wanted is not None and wanted != task.status:
                    task.status = wanted
                    if wanted == "enabled":
                        task.last_enabled = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                        try:
                            self._start(task)
                        except StartFailed as exc:
                            task.error = str(exc)
                            return _answer(http, 500, {"error": str(exc)})
                    else:
                        self._stop(task)
            return _answer(http, 200, _document(task))

    # ---------------------------------------------------------------- the tasks

    def define(self, task_id: str, socket_path: Path, **kwargs: Any) -> Task:
        """A task defined and enabled (started at once), as `kapacitor define` + `enable`."""
        task = Task(task_id, socket_path, **kwargs)
        with self.lock:
            self.tasks[task_id] = task
            task.status = "enabled"
            self._start(task)
        return task

    def disable(self, task_id: str) -> None:
        """The user's `kapacitor disable`, as the API would do it."""
        with self.lock:
            task = self.tasks[task_id]
            task.status = "disabled"
            self._stop(task)

    def _start(self, task: Task) -> None:
        task.error = ""  # Kapacitor clears the last error when it starts a task
        task.starts += 1

        def gone(reason: str) -> None:
            with self.lock:
                task.link = None
                task.error = reason

        task.link = UdfLink(task.socket, task.id, task.node, task.points, gone)

    def _stop(self, task: Task) -> None:
        if task.link is not None:
            link, task.link = task.link, None
            link.stop()

    def wait(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; requests: {self.requests}")
            time.sleep(0.05)

    def patches(self, task_id: str) -> list[str]:
        with self.lock:
            return [b["status"] for m, t, b, _ in self.requests if m == "PATCH" and t == task_id]


def _document(task: Task) -> dict[str, Any]:
    return {
        "link": {"rel": "self", "href": PREFIX + task.id},
        "id": task.id,
        "template-id": "",
        "type": "stream",
        "dbrps": [{"db": "telegraf", "rp": "autogen"}],
        "script": "stream\n    |from()\n    @udf()\n",
        "vars": {},
        "dot": "",
        "status": task.status,
        "executing": task.executing,
        "error": task.error,
        "stats": {},
        "created": "2026-12-01T00:00:00Z",
        "modified": "2026-12-01T00:00:00Z",
        "last-enabled": task.last_enabled,
    }


def _answer(http: BaseHTTPRequestHandler, code: int, doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()
    http.send_response(code)
    http.send_header("Content-Type", "application/json; charset=utf-8")
    http.send_header("Content-Length", str(len(data)))
    http.end_headers()
    http.wfile.write(data)
