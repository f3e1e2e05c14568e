"""A worker process: serves the connections the supervisor hands it, for one pool's functions.

The spawner forks it (from a process that has already imported udfd's own
code, so those pages are shared) and it never sees a listening socket. It
imports its functions' handlers, concurrently in threads, and reports each
result; the supervisor then passes it accepted Kapacitor connections, each as a
file descriptor over the worker's control channel, together with any bytes the
supervisor read ahead while no worker was up.

Its event loop thread does only I/O: reading, Info and keepalive answers,
heartbeats, writing. Handler code runs in threads (``udfd.engine``). A handler
that crashes the process costs only this worker's connections; the supervisor
restarts it.

Control records, supervisor to worker: ``conn`` (with the fd), ``retire`` (no
more connections will come: exit once the last one ends, the reload path) and
``stop`` (drain for ``grace`` seconds, then end the rest and exit). Worker to
supervisor: ``hello``, ``loading``/``loaded`` per function, ``closed`` per
connection, and ``stats`` about once a second while something changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from udfd import logs
from udfd.config import Function
from udfd.engine.connection import Connection
from udfd.engine.limits import Limits
from udfd.engine.runner import BUSY_THREADS
from udfd.plugins.loader import Failed, discover, load_function
from udfd.protocol.proto import udf_pb2 as pb
from udfd.serve.channel import Channel, ChannelClosed
from udfd.serve.runtime import Connections, FunctionRuntime
from udfd.shared import PROCESS_RESOURCES

__all__ = ["WorkerSpec", "run_worker"]

log = logging.getLogger("udfd.worker")

#: seconds between two stats records (sent only when a counter moved)
STATS_INTERVAL = 1.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, sent by the supervisor with the spawn request."""

    pool: str
    generation: int
    slot: int
    functions: tuple[Function, ...]
    limits: dict[str, Limits]
    #: serialized InfoResponse last served per function (for Info during a slow import)
    known_info: dict[str, bytes]
    autoload: bool
    allow_distributions: tuple[str, ...]
    log_level: str
    log_format: str

    @property
    def label(self) -> str:
        return f"{self.pool}/{self.slot}"

    def portable(self) -> WorkerSpec:
        """A copy that pickles (option mappings are read-only proxies)."""
        functions = tuple(dataclasses.replace(f, options=dict(f.options)) for f in self.functions)
        return dataclasses.replace(self, functions=functions)


class _KnownInfo:
    """The supervisor's stored Info, read-only: only the supervisor writes the file."""

    def __init__(self, known: dict[str, bytes]) -> None:
        self._known = known

    def get(self, function: str) -> pb.InfoResponse | None:
        data = self._known.get(function)
        return None if data is None else pb.InfoResponse.FromString(data)

    def put(self, function: str, info: pb.InfoResponse) -> None:
        return None


def run_worker(spec: WorkerSpec, control: socket.socket) -> int:
    """The worker's main function (in the forked child); returns its exit status."""
    # The supervisor coordinates shutdown: a Ctrl-C in a terminal reaches the whole
    # process group, and must not kill connections the supervisor wants drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.configure(spec.log_level, spec.log_format, worker=f"{spec.label} pid {os.getpid()}")
    try:
        import uvloop  # noqa: F401

        options: dict[str, Any] = {"use_uvloop": True}
    except ImportError:
        options = {}
    anyio.run(_run, spec, control, backend_options=options)
    busy = sorted(BUSY_THREADS.values())
    if busy:
        # the process exits with os._exit: a handler stuck in a thread cannot hold it
        log.warning("abandoning %d busy handler thread(s) of: %s", len(busy), ", ".join(busy))
    return 0


async def _run(spec: WorkerSpec, control: socket.socket) -> None:
    await _Worker(spec, control).run()


class _Worker:
    def __init__(self, spec: WorkerSpec, control: socket.socket) -> None:
        self.spec = spec
        self.channel = Channel(control)
        self.runtimes: dict[str, FunctionRuntime] = {}
        for fn in spec.functions:
            known = spec.known_info.get(fn.name)
            self.runtimes[fn.name] = FunctionRuntime(
                fn.name,
                defaults=fn.options,
                error_policy=fn.error_policy,
                limits=spec.limits[fn.name],
                early_info=pb.InfoResponse.FromString(known) if known is not None else None,
            )
        self.connections = Connections()
        self._reported: dict[str, dict[str, Any]] = {}
        self._reported_resources: list[dict[str, Any]] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._control_scope: anyio.CancelScope | None = None

    async def run(self) -> None:
        await self.channel.send({"op": "hello", "pid": os.getpid()})
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._load_all)
                tg.start_soon(self._report_stats)
                with anyio.CancelScope() as self._control_scope:
                    await self._control()
                tg.cancel_scope.cancel()
        finally:
            await self.connections.close_unstarted()
            self.channel.close()

    async def _control(self) -> None:
        while True:
            try:
                header, payload, fds = await self.channel.receive()
            except ChannelClosed:
                log.error(
                    "the supervisor went away; ending %d connection(s)", len(self.connections)
                )
                self.connections.abort_all("udfd: the supervisor exited")
                with anyio.move_on_after(1.0):
                    await self.connections.wait_idle()
                return
            op = header.get("op")
            if op == "conn":
                await self._accept(header, payload, fds)
                continue
            for fd in fds:
                os.close(fd)
            if op == "retire":
                log.info("retired by a reload: exiting when the last connection ends")
                assert self._tg is not None
                self._tg.start_soon(self._exit_when_idle)
            elif op == "stop":
                await self._send_stats()
                await self.connections.drain(float(header.get("grace", 10.0)), self.spec.label)
                await self._send_stats()
                return
            else:
                log.warning("unknown control record %r", op)

    async def _exit_when_idle(self) -> None:
        await self.connections.wait_idle()
        await self._send_stats()
        assert self._control_scope is not None
        self._control_scope.cancel()

    async def _accept(self, header: dict[str, Any], payload: bytes, fds: list[int]) -> None:
        cid = header["id"]
        runtime = self.runtimes.get(header["function"])
        with contextlib.suppress(ChannelClosed):
            await self.channel.send({"op": "took", "id": cid})
        if not fds or runtime is None:  # a supervisor bug; keep its count right anyway
            for fd in fds:
                os.close(fd)
            log.error("connection %s for unknown function %r dropped", cid, header["function"])
            with contextlib.suppress(ChannelClosed):
                await self.channel.send({"op": "closed", "id": cid})
            return
        for extra in fds[1:]:
            os.close(extra)
        stream = await anyio.abc.UNIXSocketStream.from_socket(socket.socket(fileno=fds[0]))
        connection = runtime.connection(stream, initial=payload)
        connection.on_init(functools.partial(self._task_started, cid))
        self.connections.add(connection)
        assert self._tg is not None
        self._tg.start_soon(self._serve_connection, cid, runtime.name, connection)

    async def _task_started(self, cid: int, task: str, node: str) -> None:
        """Tell the supervisor which Kapacitor task this connection serves (for re-enabling
        it after a restart). Sent before any "closed" of the same connection."""
        with contextlib.suppress(ChannelClosed):
            await self.channel.send({"op": "task", "id": cid, "task": task, "node": node})

    async def _serve_connection(self, cid: int, function: str, connection: Connection) -> None:
        try:
            await self.connections.serve(connection, function)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(ChannelClosed):
                await self.channel.send(
                    {"op": "closed", "id": cid, "ended_by": connection.ended_by}
                )

    async def _load_all(self) -> None:
        installed = discover(autoload=self.spec.autoload)
        known = _KnownInfo(self.spec.known_info)
        async with anyio.create_task_group() as tg:
            for fn in self.spec.functions:
                tg.start_soon(self._load_one, fn, installed, known)

    async def _load_one(self, fn: Function, installed: Any, known: _KnownInfo) -> None:
        with contextlib.suppress(ChannelClosed):
            await self.channel.send({"op": "loading", "function": fn.name})
        started = time.monotonic()
        result = await anyio.to_thread.run_sync(
            functools.partial(
                load_function,
                fn,
                installed=installed,
                autoload=self.spec.autoload,
                allow_distributions=self.spec.allow_distributions,
                store=known,
            ),
            abandon_on_cancel=True,
        )
        runtime = self.runtimes[fn.name]
        if isinstance(result, Failed):
            runtime.set_handler(result.spec, init_error=result.error)
            report = {
                "ok": False,
                "error": result.error,
                "origin": "",
                "info_source": result.info_source,
            }
        else:
            runtime.set_handler(result.spec)
            report = {"ok": True, "error": "", "origin": result.origin, "info_source": ""}
        report["load_s"] = round(time.monotonic() - started, 4)
        assert runtime.spec is not None
        info = runtime.spec.info.SerializeToString()
        with contextlib.suppress(ChannelClosed):
            await self.channel.send({"op": "loaded", "function": fn.name, **report}, info)

    async def _report_stats(self) -> None:
        while True:
            await anyio.sleep(STATS_INTERVAL)
            await self._send_stats()

    async def _send_stats(self) -> None:
        current = {name: dataclasses.asdict(rt.stats) for name, rt in self.runtimes.items()}
        changed = {n: s for n, s in current.items() if self._reported.get(n) != s}
        resources = PROCESS_RESOURCES.describe()
        if not changed and resources == self._reported_resources:
            return
        with contextlib.suppress(ChannelClosed):
            await self.channel.send({"op": "stats", "functions": changed, "resources": resources})
            self._reported.update(changed)
            self._reported_resources = resources
