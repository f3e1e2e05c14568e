"""The supervisor: binds every socket, accepts, hands connections to pools of workers.

No handler code ever runs here. Start-up order is the point of this process:
Kapacitor refuses to start until every UDF socket answers Info, so

1. read entry-point metadata and resolve the functions (cheap, no imports);
2. bind every socket (stale ones removed, foreign ones refused), then fork the
   spawner, which forks the workers; all before the event loop starts;
3. accept at once: a connection goes to the least busy worker of its
   function's pool, as a file descriptor over that worker's control channel.
   While the pool has no worker up (start-up, a crash, a reload) the
   supervisor holds the connection itself: Info (the one last served) and
   keepalives are answered, everything else waits for the worker;
4. each worker imports its pool's handlers and reports; once every function
   is loaded or failed, udfd reports ready (log, systemd, status file).

SIGTERM/SIGINT: stop accepting, tell every worker to drain for the grace
period, kill the ones still there after it, remove our socket files. A second
SIGINT exits at once. SIGHUP (``udfd reload``) re-reads the config and starts a
new generation of workers; see :meth:`Supervisor.reload`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus

from udfd.config import Config, Function, load_config, resolve_functions
from udfd.config.values import AUTO_MODE
from udfd.engine.limits import Limits
from udfd.engine.stats import Histogram, Stats
from udfd.errors import ConfigError, StartupError, describe_os_error
from udfd.kapacitor.book import TASKS_FILE, TaskBook
from udfd.kapacitor.reenable import Reenabler
from udfd.plugins.fallback import InfoStore
from udfd.plugins.loader import discover
from udfd.protocol import wire
from udfd.protocol.proto import udf_pb2 as pb
from udfd.serve import activation, metrics, systemd
from udfd.serve.channel import Channel, ChannelClosed
from udfd.serve.channel import pair as channel_pair
from udfd.serve.fdlimit import raise_fd_limit
from udfd.serve.health import HealthServer
from udfd.serve.holding import HeldConnection
from udfd.serve.pool import Pool, WorkerHandle
from udfd.serve.sockets import bind_unix, remove_socket_file
from udfd.serve.spawner import Spawner, describe_status
from udfd.serve.status import STATUS_FILE, remove_status, write_status
from udfd.serve.worker import WorkerSpec

__all__ = ["STATUS_INTERVAL", "Supervisor", "run_until_signalled"]

log = logging.getLogger("udfd.supervisor")

#: seconds between refreshes of the status file's counters
STATUS_INTERVAL = 5.0
#: seconds between checks that every socket file is still there
SOCKET_CHECK_INTERVAL = 2.0
#: how long a held connection waits for a worker before it is told why not
HOLD_TIMEOUT = 30.0
#: after the grace period, how long workers get to flush and exit before SIGKILL
STOP_MARGIN = 3.0
#: seconds between saves of the task records (a change waits at most this long)
TASKS_SAVE_INTERVAL = 0.2
_COUNTERS = [f.name for f in fields(Stats) if f.type in ("int", int)]
_HISTOGRAMS = [f.name for f in fields(Stats) if f.type in ("Histogram", Histogram)]


def add_counters(into: dict[str, Any], stats: dict[str, Any]) -> None:
    """Add one worker's reported ``Stats`` of a function into ``into``; the last error is
    the newest of the two."""
    for key in _COUNTERS:
        into[key] = into.get(key, 0) + stats.get(key, 0)
    for key in _HISTOGRAMS:
        theirs = stats.get(key)
        if not theirs:
            continue
        ours = into.setdefault(key, {"counts": [0] * len(theirs["counts"]), "sum": 0.0})
        ours["counts"] = [a + b for a, b in zip(ours["counts"], theirs["counts"], strict=True)]
        ours["sum"] += theirs["sum"]
    if stats.get("last_error_time", 0) > into.get("last_error_time", 0):
        into["last_error"] = stats["last_error"]
        into["last_error_time"] = stats["last_error_time"]


@dataclass(eq=False)
class FunctionState:
    """One function as the supervisor, health and ``udfd check`` see it."""

    function: Function
    sock: socket.socket
    inode: int | None
    state: str = "loading"  # loading | ready | failed
    error: str = ""
    origin: str = ""
    #: seconds the current generation's worker took to import and check the handler
    load_s: float | None = None
    #: the Info to answer while no worker is up (last served, or reported)
    info: pb.InfoResponse | None = None
    #: the generation whose load result ``state`` is
    generation: int = -1
    #: counters of workers that are gone
    base: dict[str, Any] = field(default_factory=dict)
    #: the accept loop's scope (made on the event loop); None: not accepting yet
    accept_scope: anyio.CancelScope | None = None
    closed: bool = False
    #: the socket came from systemd (socket activation): its file is systemd's
    activated: bool = False
    #: connections open now, as the supervisor counts them (handed to a worker or held)
    open: int = 0
    #: connections refused by max_connections since udfd started
    refused: int = 0
    #: when a refusal was last logged (they are logged at most every 10 s)
    refused_logged: float = -1e9
    #: why the socket file is missing and could not be re-created ("" when it is fine)
    socket_error: str = ""

    @property
    def name(self) -> str:
        return self.function.name

    def counters(self, workers: list[WorkerHandle]) -> dict[str, Any]:
        """This function's counters summed over the workers that are gone and ``workers``."""
        total: dict[str, Any] = {"last_error": "", "last_error_time": 0.0}
        add_counters(total, self.base)
        for w in workers:
            add_counters(total, w.stats.get(self.name, {}))
        return total

    def as_dict(self, workers: list[WorkerHandle]) -> dict[str, Any]:
        counters = self.counters(workers)
        return {
            "name": self.name,
            "socket": str(self.function.socket),
            "handler": self.function.handler,
            "pool": self.function.pool,
            "state": "failed" if self.socket_error else self.state,
            "error": self.socket_error or self.error,
            "origin": self.origin,
            "load_s": self.load_s,
            "worker_pids": [
                w.pid for w in workers if w.pool == self.function.pool and not w.retired
            ],
            **counters,
            "connections_refused": self.refused,
        }


def _limits(config: Config, fn: Function) -> Limits:
    return Limits(
        max_message_size=config.max_message_size,
        handler_timeout=fn.handler_timeout.total_seconds(),
        slow_call=fn.slow_call.total_seconds(),
        heartbeat=max(0.05, min(1.0, fn.timeout.total_seconds() / 4)),
        init_timeout=config.init_timeout.total_seconds(),
        max_groups=config.max_groups,
        max_batch_points=config.max_batch_points,
    )


class Supervisor:
    """Owns the sockets, the spawner and the pools; the CLI runs it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.functions: dict[str, FunctionState] = {}
        self.pools: dict[str, Pool] = {}
        self.started_at = time.time()
        self.ready = anyio.Event()
        self._stop = anyio.Event()
        self.forced = False
        self.generation = 0
        self.reloads: dict[str, Any] = {"count": 0, "ok": True, "error": "", "time": 0.0}
        self._status_path = config.state_dir / STATUS_FILE
        self._store = InfoStore(config.state_file)
        self._spawner: Spawner | None = None
        self._spawner_channel: Channel | None = None
        self._spawned: dict[int, anyio.Event] = {}
        self._spawn_pids: dict[int, int] = {}
        self._exits: dict[int, int] = {}
        self._exit_events: dict[int, anyio.Event] = {}
        self._tokens = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._tg: TaskGroup | None = None
        self._publish_lock: anyio.Lock | None = None
        self._all_gone = anyio.Event()
        self._reload_lock: anyio.Lock | None = None
        self._announced = -1  # the generation whose readiness was reported
        #: workers of earlier generations, still serving their open connections
        self._retired: list[WorkerHandle] = []
        #: which Kapacitor tasks use udfd, and re-enabling them after a restart
        self._book = TaskBook(config.state_dir / TASKS_FILE)
        self._reenabler = Reenabler(
            config.kapacitor, self._book, self._publish, persist=self._persist_tasks
        )
        self._tasks_lock: anyio.Lock | None = None
        self._tasks_saved = -1  # the book version on disk
        #: connection id -> (task, function, node), from the workers' "task" records
        self._conn_tasks: dict[int, tuple[str, str, str]] = {}
        #: the tasks that ran on udfd when it last went away
        self._previous_tasks: list[str] = []

    # ------------------------------------------------------------ start-up

    def prepare(self) -> None:
        """Resolve the functions, bind every socket and fork the spawner; no event loop yet.

        A start-up failure (a socket owned by someone else, a bad path) surfaces
        as a plain :class:`StartupError`, and binds all or none.
        """
        config = self.config
        resolved = resolve_functions(config, discover(autoload=not config.disable_plugin_autoload))
        if not resolved:
            log.warning("no functions to serve: no handlers are installed or configured")
        raise_fd_limit(fn.max_connections for fn in resolved)  # before the spawner forks
        open_to_all = [fn.name for fn in resolved if (fn.socket_mode or 0) & 0o002]
        if open_to_all:
            auto = config.socket_mode == AUTO_MODE
            log.warning(
                "the sockets of %s are world-writable (socket_mode %s%s): any local user can "
                "connect to them. Set socket_group to Kapacitor's group and socket_mode = "
                '"0660"',
                ", ".join(open_to_all),
                oct(next(fn.socket_mode or 0 for fn in resolved if fn.name == open_to_all[0])),
                ' from "auto": no group "kapacitor" exists that udfd may use' if auto else "",
            )
        else:
            grouped = {fn.socket_group for fn in resolved if fn.socket_group is not None}
            if config.socket_mode == AUTO_MODE and grouped:
                log.info("sockets are 0660, group %s", ", ".join(sorted(grouped)))
        passed = activation.take_passed_sockets()
        bound: list[FunctionState] = []
        try:
            for fn in resolved:
                given = activation.match(passed, fn.name, fn.socket)
                bound.append(self._bind(fn) if given is None else self._adopt(fn, given))
        except StartupError:
            for fs in bound:
                fs.sock.close()
                remove_socket_file(fs.function.socket, fs.inode)
            raise
        for extra in passed:
            log.warning(
                "systemd passed socket %r (%s), which matches no configured function; ignored",
                extra.name,
                extra.path or "unbound",
            )
            extra.sock.close()
        for fs in bound:
            fs.info = self._store.get(fs.name)
            self.functions[fs.name] = fs
        for name, size in config.pool_sizes().items():
            self.pools[name] = Pool(name, size, self.generation)
        self._previous_tasks = self._book.load()
        if self._previous_tasks:
            log.info(
                "%d Kapacitor task(s) used udfd when it last stopped: %s",
                len(self._previous_tasks),
                ", ".join(self._previous_tasks),
            )
        import udfd.serve.worker  # noqa: F401 - the spawner shares these pages with every worker

        self._spawner = Spawner.start(fs.sock for fs in bound)

    def _adopt(self, fn: Function, given: activation.PassedSocket) -> FunctionState:
        """A socket systemd bound: used as it is, and never removed (systemd owns the file)."""
        if given.path and Path(given.path) != fn.socket:
            log.warning(
                "%s: systemd passed a socket bound to %s, but the config puts it at %s; "
                "Kapacitor must use %s",
                fn.name,
                given.path,
                fn.socket,
                given.path,
            )
        log.info("%s: using the socket systemd passed (%s)", fn.name, given.path or given.name)
        return FunctionState(fn, given.sock, None, activated=True)

    def _bind(self, fn: Function) -> FunctionState:
        sock = bind_unix(
            fn.socket,
            mode=fn.socket_mode,
            group=fn.socket_group,
            backlog=self.config.listen_backlog,
        )
        sock.setblocking(False)
        try:
            inode: int | None = os.lstat(fn.socket).st_ino
        except OSError:
            inode = None
        return FunctionState(fn, sock, inode)

    # ------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, task_status: TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._spawner is None:
            self.prepare()
        assert self._spawner is not None
        self._spawner_channel = Channel(self._spawner.sock)
        self._publish_lock = anyio.Lock()
        self._reload_lock = anyio.Lock()
        self._tasks_lock = anyio.Lock()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._read_spawner)
                for fs in self.functions.values():
                    tg.start_soon(self._accept, fs)
                for pool in self.pools.values():
                    for slot in range(1, pool.size + 1):
                        tg.start_soon(self._start_worker, pool, slot, 0.0, pool.generation)
                await self._publish()
                log.info(
                    "listening on %d socket(s) in %s: %s",
                    len(self.functions),
                    self.config.socket_dir,
                    ", ".join(self.functions) or "none",
                )
                log.info(
                    "pools: %s",
                    ", ".join(f"{p.name} ({p.size} worker(s))" for p in self.pools.values()),
                )
                systemd.notify(f"STATUS=loading {len(self.functions)} handler(s)")
                if not self.functions:
                    await self._report_ready()
                await self._start_health(tg)
                task_status.started(self)
                tg.start_soon(self._publish_periodically)
                tg.start_soon(self._guard_sockets)
                tg.start_soon(self._save_tasks)
                interval = systemd.watchdog_interval()
                if interval is not None:
                    tg.start_soon(self._ping_watchdog, interval)
                await self._stop.wait()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            # workers never outlive their supervisor, forced exit (a second SIGINT) included
            for w in self._workers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
            for fs in self.functions.values():
                fs.sock.close()
                remove_socket_file(fs.function.socket, fs.inode)
            remove_status(self._status_path)
            self._book.save(self._book.document())  # what ran now is what to re-enable next
            if self._spawner_channel is not None:
                self._spawner_channel.close()
            await self._reap_spawner()
        log.info("stopped")

    async def _start_health(self, tg: TaskGroup) -> None:
        """The HTTP health endpoint, when configured. One that cannot be opened is
        logged, not fatal: Kapacitor's functions matter more than their monitoring."""
        address = self.config.health_address()
        if address is None:
            return
        registry = metrics.registry_for(self.status)
        server = HealthServer(self.status, lambda: metrics.render(registry))
        try:
            await tg.start(server.serve, address)
        except OSError as exc:
            log.error("health endpoint %s could not be opened (%s); serving without it",
                      self.config.health, exc)  # fmt: skip

    async def _ping_watchdog(self, interval: float) -> None:
        """``WATCHDOG=1`` from the event loop itself: a loop that hangs stops the pings,
        and systemd restarts udfd (``WatchdogSec=``)."""
        while True:
            systemd.notify("WATCHDOG=1")
            await anyio.sleep(interval)

    async def _shutdown(self) -> None:
        self._reenabler.stop()  # nothing is started in Kapacitor while udfd goes away
        grace = self.config.shutdown_grace.total_seconds()
        systemd.notify("STOPPING=1", "STATUS=draining connections")
        for fs in self.functions.values():
            self._stop_accepting(fs)
        log.info("stopping: no new connections; open ones get %.1fs to finish", grace)
        self._all_gone = anyio.Event()  # not one set while a lone worker was restarting
        workers = self._workers()
        for w in workers:
            w.stopping = True
            with contextlib.suppress(ChannelClosed):
                await w.channel.send({"op": "stop", "grace": grace})
        if workers:
            with anyio.move_on_after(grace + STOP_MARGIN):
                await self._all_gone.wait()
        for w in self._workers():
            log.warning("worker %s (pid %d) did not exit in time; killing it", w.label, w.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
        await self._publish()

    def _stop_accepting(self, fs: FunctionState) -> None:
        fs.closed = True
        if fs.accept_scope is not None:
            fs.accept_scope.cancel()
        fs.sock.close()
        remove_socket_file(fs.function.socket, fs.inode)

    async def _reap_spawner(self) -> None:
        """Wait for the spawner (our child) to exit once its channel closed; kill it after 5 s."""
        spawner = self._spawner
        if spawner is None:
            return
        with anyio.CancelScope(shield=True), contextlib.suppress(ChildProcessError):
            with anyio.move_on_after(5):
                await anyio.to_thread.run_sync(os.waitpid, spawner.pid, 0, abandon_on_cancel=True)
                return
            log.warning("the spawner (pid %d) did not exit; killing it", spawner.pid)
            os.kill(spawner.pid, signal.SIGKILL)  # the waiting thread reaps it

    # ------------------------------------------------------------ workers

    def _workers(self) -> list[WorkerHandle]:
        return [w for pool in self.pools.values() for w in pool.workers] + self._retired

    async def _read_spawner(self) -> None:
        assert self._spawner_channel is not None
        while True:
            try:
                header, _, fds = await self._spawner_channel.receive()
            except ChannelClosed:
                if not self.stopping:
                    log.critical("the spawner process exited; udfd cannot start workers: stopping")
                    self.request_stop()
                return
            for fd in fds:
                os.close(fd)
            if header["op"] == "spawned":
                self._spawn_pids[header["token"]] = header["pid"]
                self._spawned.pop(header["token"]).set()
            elif header["op"] == "exited":
                self._exits[header["pid"]] = header["status"]
                event = self._exit_events.pop(header["pid"], None)
                if event is not None:
                    event.set()

    def _spec(self, pool: Pool, slot: int) -> WorkerSpec:
        config = self.config
        functions = tuple(
            fs.function for fs in self.functions.values() if fs.function.pool == pool.name
        )
        return WorkerSpec(
            pool=pool.name,
            generation=pool.generation,
            slot=slot,
            functions=functions,
            limits={fn.name: _limits(config, fn) for fn in functions},
            known_info={
                fs.name: fs.info.SerializeToString()
                for fs in self.functions.values()
                if fs.info is not None and fs.function.pool == pool.name
            },
            autoload=not config.disable_plugin_autoload,
            allow_distributions=config.allow_distributions,
            log_level=config.log_level,
            log_format=config.log_format,
        ).portable()

    async def _start_worker(self, pool: Pool, slot: int, delay: float, generation: int) -> None:
        if delay:
            await anyio.sleep(delay)
        if self.stopping or pool.generation != generation or self.pools.get(pool.name) is not pool:
            return
        assert self._spawner_channel is not None
        assert self._tg is not None
        ours, theirs = channel_pair()
        token = next(self._tokens)
        spawned = self._spawned[token] = anyio.Event()
        try:
            await self._spawner_channel.send(
                {"op": "spawn", "token": token, "spec": self._spec(pool, slot)},
                fds=[theirs.fileno()],
            )
        except ChannelClosed:
            ours.close()
            return
        finally:
            theirs.close()
        await spawned.wait()
        pid = self._spawn_pids.pop(token)
        worker = WorkerHandle(pool.name, generation, slot, pid, Channel(ours))
        self._exit_events[pid] = anyio.Event()
        pool.workers.append(worker)
        log.info("worker %s started (pid %d)", worker.label, pid)
        self._tg.start_soon(self._watch_worker, pool, worker)

    async def _watch_worker(self, pool: Pool, worker: WorkerHandle) -> None:
        try:
            while True:
                try:
                    header, payload, fds = await worker.channel.receive()
                except ChannelClosed:
                    break
                for fd in fds:
                    os.close(fd)
                await self._on_record(pool, worker, header, payload)
        finally:
            worker.channel.close()
        await self._worker_gone(pool, worker)

    async def _on_record(
        self, pool: Pool, worker: WorkerHandle, header: dict[str, Any], payload: bytes
    ) -> None:
        op = header["op"]
        if op == "hello":
            worker.ready = True
            pool.update_available()
        elif op == "took":
            taken = worker.untaken.pop(header["id"], None)
            if taken is not None:
                taken[1].close()
        elif op == "closed":
            worker.connections -= 1
            self._closed(worker.open.pop(header["id"], None))
            use = self._conn_tasks.pop(header["id"], None)
            if use is not None:  # udfd's own end (shutdown): the task is to be re-enabled
                self._book.ended(*use, keep=header.get("ended_by") == "udfd")
        elif op == "task":
            function = worker.open.get(header["id"])
            if function is not None:  # None: it closed already (records may pass each other)
                use = (str(header["task"]), function, str(header["node"]))
                self._conn_tasks[header["id"]] = use
                self._book.started(*use)
        elif op == "stats":
            worker.stats.update(header["functions"])
            worker.resources = header.get("resources", worker.resources)
        elif op == "loading":
            worker.loading.add(header["function"])
        elif op == "loaded":
            worker.loading.discard(header["function"])
            await self._loaded(worker, header, payload)

    async def _loaded(self, worker: WorkerHandle, header: dict[str, Any], payload: bytes) -> None:
        fs = self.functions.get(header["function"])
        if fs is None or fs.function.pool != worker.pool or worker.retired:
            return
        first = fs.generation != worker.generation
        fs.generation = worker.generation
        fs.info = pb.InfoResponse.FromString(payload)
        fs.error, fs.origin = header["error"], header["origin"]
        fs.load_s = header.get("load_s")
        fs.state = "ready" if header["ok"] else "failed"
        if first:
            if header["ok"]:
                log.info("%s: serving %s on %s", fs.name, fs.origin, fs.function.socket)
                await anyio.to_thread.run_sync(self._store.put, fs.name, fs.info)
            else:
                log.error(
                    "%s: handler failed to load; its socket answers Info (%s) and Init fails "
                    "with: %s",
                    fs.name,
                    header["info_source"],
                    fs.error,
                )
        if not first:
            return
        if all(f.state != "loading" for f in self.functions.values()):
            await self._report_ready()
        else:
            await self._publish()

    async def _worker_gone(self, pool: Pool, worker: WorkerHandle) -> None:
        event = self._exit_events.get(worker.pid)
        if event is not None:
            with anyio.move_on_after(2.0):
                await event.wait()
        status = self._exits.pop(worker.pid, None)
        worker.exit = describe_status(status) if status is not None else "channel closed"
        if worker in pool.workers:
            pool.workers.remove(worker)
        if worker in self._retired:
            self._retired.remove(worker)
        for name, stats in worker.stats.items():
            fs = self.functions.get(name)
            if fs is not None:  # a dead worker's connections are no longer active
                add_counters(fs.base, {**stats, "connections_active": 0})
        lost: list[str] = []
        for cid, name in worker.open.items():  # closed with it (untaken ones are re-sent below)
            self._closed(name)
            use = self._conn_tasks.pop(cid, None)
            if use is not None:
                self._book.ended(*use, keep=True)
                lost.append(use[0])
        worker.open.clear()
        pool.update_available()
        for name, conn, prefix in worker.untaken.values():
            fs = self.functions.get(name)
            if fs is None or self.stopping:
                conn.close()
            else:  # the worker died before it saw this connection: another one gets it
                await self._dispatch(fs, conn, prefix)
        worker.untaken.clear()
        expected = worker.retired or worker.stopping or self.stopping
        if not self._workers():
            self._all_gone.set()
        if lost and not self.stopping:  # Kapacitor stopped these tasks (a retired worker too)
            assert self._tg is not None
            why = f"worker {worker.label} died"
            self._reenabler.schedule(self._tg, dict.fromkeys(lost), why)
        if expected:
            log.info("worker %s (pid %d) exited (%s)", worker.label, worker.pid, worker.exit)
            return
        delay = pool.crashed(worker)
        pool.restarts += 1
        loading = f" while loading {', '.join(sorted(worker.loading))}" if worker.loading else ""
        log.error(
            "worker %s (pid %d) died%s: %s; its %d connection(s) ended; restarting in %.1fs",
            worker.label,
            worker.pid,
            loading,
            worker.exit,
            worker.connections,
            delay,
        )
        await self._publish()
        assert self._tg is not None
        self._tg.start_soon(self._start_worker, pool, worker.slot, delay, pool.generation)

    # ------------------------------------------------------------ connections

    async def _accept(self, fs: FunctionState) -> None:
        fs.accept_scope = anyio.CancelScope()
        if fs.closed:
            return
        sock = fs.sock  # the loop owns this socket; a rebind gives the next loop a new one
        try:
            with fs.accept_scope:
                await self._accept_loop(fs, sock)
        finally:
            if sock is not fs.sock:
                # replaced by _rebind: closed only now, when no wait is registered on its
                # descriptor any more (the number is reused at once by the next accept)
                sock.close()

    async def _accept_loop(self, fs: FunctionState, sock: socket.socket) -> None:
        errors_logged = -1e9
        while True:
            try:
                await anyio.wait_readable(sock)
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if fs.closed:
                    return
                now = time.monotonic()
                if now - errors_logged > 10:
                    errors_logged = now
                    log.error("%s: accept failed (%s); retrying", fs.name, describe_os_error(exc))
                await anyio.sleep(0.1)
                continue
            if fs.open >= fs.function.max_connections:
                self._refuse(fs, conn)
                continue
            await self._dispatch(fs, conn)

    def _refuse(self, fs: FunctionState, conn: socket.socket) -> None:
        """One connection too many: tell the peer why (Kapacitor shows it as the task's
        error), count it, log it now and then, and close it."""
        limit = fs.function.max_connections
        fs.refused += 1
        reason = (
            f"udfd: {fs.name} already has {fs.open} open connections (max_connections = "
            f"{limit}); connection refused"
        )
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(wire.error_frame(reason))
        conn.close()
        now = time.monotonic()
        if now - fs.refused_logged >= 10:
            fs.refused_logged = now
            log.warning("%s (%d refused so far)", reason, fs.refused)

    def _closed(self, name: str | None) -> None:
        fs = self.functions.get(name) if name is not None else None
        if fs is not None:
            fs.open = max(fs.open - 1, 0)

    async def _dispatch(self, fs: FunctionState, conn: socket.socket, prefix: bytes = b"") -> None:
        pool = self.pools[fs.function.pool]
        worker = pool.pick()
        if worker is not None:
            cid = next(self._conn_ids)
            try:
                await worker.channel.send(
                    {"op": "conn", "id": cid, "function": fs.name}, prefix, [conn.fileno()]
                )
            except ChannelClosed:
                worker.ready = False  # it is going away: hold the connection instead
                pool.update_available()
            else:
                worker.connections += 1
                worker.connections_total += 1
                worker.open[cid] = fs.name
                fs.open += 1
                # kept until the worker says it took the socket: a worker that dies with
                # the record unread must not take a connection it never saw with it
                worker.untaken[cid] = (fs.name, conn, prefix)
                return
        assert self._tg is not None
        self._tg.start_soon(self._hold, fs, conn, prefix)

    async def _hold(self, fs: FunctionState, conn: socket.socket, prefix: bytes) -> None:
        held = HeldConnection(conn, fs.name, lambda: fs.info, self.config.max_message_size)
        if prefix:
            held.preload(prefix)
        handed_over = False
        fs.open += 1  # counts against max_connections while held, too
        try:
            while not self.stopping and not handed_over:
                pool = self.pools.get(fs.function.pool)
                if pool is None or not await held.serve_until(pool.available, HOLD_TIMEOUT):
                    return
                if pool.pick() is not None:
                    handed_over = True  # the socket is the dispatcher's from here on
                    await self._dispatch(fs, conn, held.release())
        finally:
            fs.open = max(fs.open - 1, 0)
            if not handed_over:
                conn.close()

    # ------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Re-read the config; new functions get sockets, a new generation of workers
        serves new connections, and the old workers keep theirs until they end.

        A config that fails validation changes nothing: the problem is logged and
        recorded in the status file, where ``udfd reload`` reads it.
        """
        assert self._reload_lock is not None
        async with self._reload_lock:
            error = await self._reload()
        if error:
            log.error("reload failed; nothing changed: %s", error)
        self.reloads = {
            "count": self.reloads["count"] + 1,
            "ok": not error,
            "error": error,
            "time": time.time(),
        }
        await self._publish()
        return not error

    async def _reload(self) -> str:
        """Apply the config file as it is now; the problem when it cannot be, else ""."""
        log.info("reloading %s", self.config.source or "the embedded default config")
        try:
            config = load_config(self.config.source)
            resolved = resolve_functions(
                config, discover(autoload=not config.disable_plugin_autoload)
            )
        except ConfigError as exc:
            return str(exc)
        new = {fn.name: fn for fn in resolved}
        # new sockets first, all or none: a failure must leave everything as it was
        added: list[FunctionState] = []
        try:
            for name, fn in new.items():
                current = self.functions.get(name)
                if current is None or current.function.socket != fn.socket:
                    added.append(self._bind(fn))
        except StartupError as exc:
            for fs in added:
                fs.sock.close()
                remove_socket_file(fs.function.socket, fs.inode)
            return str(exc)
        assert self._tg is not None
        self.config = config
        self.generation += 1
        removed = [fs for name, fs in self.functions.items() if name not in new]
        moved = [self.functions[fs.name] for fs in added if fs.name in self.functions]
        for fs in removed + moved:  # stop accepting (a moved function: on its old path)
            self._stop_accepting(fs)
            del self.functions[fs.name]
        for fs in self.functions.values():
            if fs.function != new[fs.name]:
                fs.state, fs.error = "loading", ""
            fs.function = new[fs.name]
        for fs in added:
            fs.info = self._store.get(fs.name)
            self.functions[fs.name] = fs
            self._tg.start_soon(self._accept, fs)
        # Every pool gets a new generation (the new config, newly installed plugins). The
        # Pool objects stay, so connections held while a pool has no worker see the new one.
        sizes = config.pool_sizes()
        for name, pool in list(self.pools.items()):
            for worker in pool.workers:
                worker.retired = True
                with contextlib.suppress(ChannelClosed):
                    await worker.channel.send({"op": "retire"})
            self._retired += pool.workers
            pool.workers = []
            if name not in sizes:
                del self.pools[name]
        for name, size in sizes.items():
            pool = self.pools.setdefault(name, Pool(name, size, self.generation))
            pool.size, pool.generation = size, self.generation
            pool.update_available()
            for slot in range(1, size + 1):
                self._tg.start_soon(self._start_worker, pool, slot, 0.0, self.generation)
        log.info(
            "reloaded: %d function(s) (%d new, %d removed); %d old worker(s) keep their "
            "open connections",
            len(self.functions),
            len(added) - len(moved),
            len(removed),
            len(self._retired),
        )
        return ""

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        workers = self._workers()
        return {
            "ready": self.ready.is_set(),
            "stopping": self._stop.is_set(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "generation": self.generation,
            "reload": self.reloads,
            "functions": [fs.as_dict(workers) for fs in self.functions.values()],
            "pools": [p.as_dict() for p in self.pools.values()],
            "workers": [w.as_dict() for w in workers],
            "kapacitor": self._reenabler.status(),
        }

    async def _publish(self) -> None:
        """Write the status file off the event loop, one write at a time."""
        assert self._publish_lock is not None
        async with self._publish_lock:
            await anyio.to_thread.run_sync(write_status, self._status_path, self.status())

    async def _guard_sockets(self) -> None:
        """Notice a socket file that was deleted (a cleaned /run or /tmp, a removed
        directory) or replaced, and publish the socket again.

        Kapacitor connects by path: a listening socket whose file is gone serves
        nobody while the status still says ready. Re-binding creates the directory
        again; if that fails, the function is reported failed, with the reason, in
        the status file, /health and ``udfd check``, until it works.
        """
        while True:
            await anyio.sleep(SOCKET_CHECK_INTERVAL)
            for fs in list(self.functions.values()):
                if fs.closed or fs.activated or self.stopping:
                    continue
                try:
                    present = os.lstat(fs.function.socket).st_ino == fs.inode
                except OSError:
                    present = False
                if present:
                    continue
                await self._rebind(fs)

    async def _rebind(self, fs: FunctionState) -> None:
        try:
            fresh = self._bind(fs.function)
        except StartupError as exc:
            if fs.socket_error != str(exc):
                log.error("%s: its socket file is gone and cannot be re-created: %s", fs.name, exc)
                fs.socket_error = f"socket file missing: {exc}"
                await self._publish()
            return
        log.error(
            "%s: its socket file %s was removed or replaced; listening there again",
            fs.name,
            fs.function.socket,
        )
        old_scope = fs.accept_scope
        fs.sock, fs.inode, fs.socket_error = fresh.sock, fresh.inode, ""
        if old_scope is not None:
            old_scope.cancel()  # the old loop closes the old socket as it leaves
        assert self._tg is not None
        self._tg.start_soon(self._accept, fs)
        await self._publish()

    async def _save_tasks(self) -> None:
        """Keep the task records on disk within a fraction of a second of every change, so
        that even a SIGKILL leaves the list of tasks to re-enable. A failed write is tried
        again at the next tick."""
        self._tasks_saved = self._book.version
        while True:
            await anyio.sleep(TASKS_SAVE_INTERVAL)
            if self._book.version != self._tasks_saved:
                await self._persist_tasks()

    async def _persist_tasks(self) -> None:
        """Write the book now; one write at a time, so an older document never lands last."""
        assert self._tasks_lock is not None  # made in run(), with the other locks
        async with self._tasks_lock:
            version, document = self._book.version, self._book.document()
            if await anyio.to_thread.run_sync(self._book.save, document):
                self._tasks_saved = version

    async def _publish_periodically(self) -> None:
        while True:
            await anyio.sleep(STATUS_INTERVAL)
            await self._publish()

    async def _report_ready(self) -> None:
        """Ready: the status file first, then the log and systemd."""
        if self._announced == self.generation:
            return
        self._announced = self.generation
        failed = sum(f.state == "failed" for f in self.functions.values())
        summary = f"{len(self.functions) - failed} function(s) ready, {failed} failed"
        if self.ready.is_set():
            await self._publish()
            log.info("reload complete: %s", summary)
            systemd.notify("READY=1", f"STATUS={summary}")
            return
        self.ready.set()
        await self._publish()
        log.info("ready: %s", summary)
        systemd.notify("READY=1", f"STATUS={summary}")
        if self._previous_tasks and self._tg is not None:
            self._reenabler.schedule(self._tg, self._previous_tasks, "udfd restarted")
            self._previous_tasks = []


async def run_until_signalled(supervisor: Supervisor) -> None:
    """Run the supervisor; SIGTERM/SIGINT stop it gracefully (a second SIGINT at once),
    SIGHUP reloads. The receiver is in place before anything is served."""
    async with anyio.create_task_group() as tg:

        async def watch_signals(*, task_status: TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(
                signal.SIGTERM, signal.SIGINT, signal.SIGHUP
            ) as signals:
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("received SIGHUP: reloading")
                        tg.start_soon(supervisor.reload)
                        continue
                    if supervisor.stopping and signum == signal.SIGINT:
                        log.warning("second interrupt: exiting without waiting")
                        supervisor.forced = True
                        tg.cancel_scope.cancel()
                        return
                    log.info("received %s", signal.Signals(signum).name)
                    supervisor.request_stop()

        await tg.start(watch_signals)
        await supervisor.run()
        tg.cancel_scope.cancel()
