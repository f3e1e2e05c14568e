"""The daemon: every configured function on its own socket, started and stopped safely.

Start-up order is the point of this module. Kapacitor refuses to start until every
UDF socket answers Info, and retries a missing socket only with back-off, so:

1. read entry-point metadata and resolve the functions (cheap, no imports);
2. bind every socket (stale ones removed, foreign ones refused) — Kapacitor can
   connect from here on; connections wait for their handler;
3. import the handlers concurrently in worker threads; a handler that fails marks
   only its own function failed (Info still answered, Init fails);
4. report ready (log line, systemd ``READY=1``, ``<state_dir>/status.json``).

Shutdown (SIGTERM/SIGINT): stop accepting, give open connections the grace
period to finish (Kapacitor half-closes when it stops a task), cancel what is
left, remove our socket files. A second SIGINT cancels at once.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from udfd.config import Config, Function, resolve_functions
from udfd.engine.limits import Limits
from udfd.errors import StartupError
from udfd.plugins.fallback import InfoStore
from udfd.plugins.loader import Failed, InstalledHandler, discover, load_function
from udfd.serve import systemd
from udfd.serve.site import Site
from udfd.serve.sockets import bind_unix
from udfd.serve.status import STATUS_FILE, remove_status, write_status

log = logging.getLogger("udfd.serve.daemon")

#: seconds between refreshes of the status file's counters
STATUS_INTERVAL = 10.0


@dataclass
class FunctionState:
    """One function as health and ``udfd check`` see it: plain data."""

    function: Function
    site: Site
    state: str = "loading"  # loading | ready | failed
    error: str = ""
    origin: str = ""

    def as_dict(self) -> dict[str, Any]:
        stats = self.site.stats
        return {
            "name": self.function.name,
            "socket": str(self.function.socket),
            "handler": self.function.handler,
            "state": self.state,
            "error": self.error,
            "origin": self.origin,
            "connections_active": stats.connections_active,
            "connections_total": stats.connections_total,
            "points_in": stats.points_in,
            "points_out": stats.points_out,
            "dropped": stats.dropped,
            "handler_errors": stats.handler_errors,
            "protocol_errors": stats.protocol_errors,
            "last_error": stats.last_error,
        }


class Daemon:
    """Owns every site; the CLI runs it, tests run it as a subprocess via the CLI."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.functions: list[FunctionState] = []
        self.started_at = time.time()
        self.ready = anyio.Event()
        self._stop = anyio.Event()
        self.forced = False
        self._installed: tuple[InstalledHandler, ...] = ()
        self._status_path = config.state_dir / STATUS_FILE
        self._publishing: anyio.CancelScope | None = None
        self._publish_lock: anyio.Lock | None = None
        self._resolved: tuple[Function, ...] = ()
        self._bound: list[tuple[Function, socket.socket]] | None = None

    async def _publish(self) -> None:
        """Write the status file (off the event loop: it is disk I/O).

        One write at a time, each taking the state when it starts: concurrent
        loads must not let an older snapshot land after a newer one.
        """
        if self._publish_lock is None:
            self._publish_lock = anyio.Lock()
        async with self._publish_lock:
            await anyio.to_thread.run_sync(write_status, self._status_path, self.status())

    async def _publish_periodically(self) -> None:
        with anyio.CancelScope() as self._publishing:
            while True:
                await anyio.sleep(STATUS_INTERVAL)
                await self._publish()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (idempotent)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready.is_set(),
            "stopping": self._stop.is_set(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "functions": [f.as_dict() for f in self.functions],
        }

    # ------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """Resolve the functions and bind every socket: fast, synchronous, no imports.

        Runs before the event loop starts, so a start-up failure (a socket owned by
        someone else, a bad path) surfaces as a plain :class:`StartupError`, and
        binds all or none: a failure releases what was bound already.
        """
        config = self.config
        self._installed = discover(autoload=not config.disable_plugin_autoload)
        self._resolved = resolve_functions(config, self._installed)
        if not self._resolved:
            log.warning("no functions to serve: no handlers are installed or configured")
        bound: list[tuple[Function, socket.socket]] = []
        try:
            for fn in self._resolved:
                sock = bind_unix(fn.socket, mode=fn.socket_mode, group=fn.socket_group)
                bound.append((fn, sock))
        except StartupError:
            for fn, sock in bound:
                sock.close()
                fn.socket.unlink(missing_ok=True)
            raise
        self._bound = bound

    async def run(self, *, task_status: TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the bound sockets, load handlers, run until a stop is requested, drain."""
        if self._bound is None:
            self.prepare()
        assert self._bound is not None
        config = self.config
        installed = self._installed
        limits = Limits(max_message_size=config.max_message_size)
        store = InfoStore(config.state_file)
        self.functions = []
        for fn, sock in self._bound:
            # Until its handler is imported, a function answers Info with the Info it
            # last served: Kapacitor's start-up Info must not wait for slow imports.
            site = Site(
                fn.name,
                fn.socket,
                None,
                defaults=fn.options,
                error_policy=fn.error_policy,
                limits=limits,
                early_info=store.get(fn.name),
            )
            site.adopt(sock)
            self.functions.append(FunctionState(fn, site))
        grace = config.shutdown_grace.total_seconds()
        try:
            await self._serve(installed, store, grace, task_status)
        finally:
            remove_status(self._status_path)
        log.info("stopped")

    async def _serve(
        self,
        installed: tuple[InstalledHandler, ...],
        store: InfoStore,
        grace: float,
        task_status: TaskStatus[Daemon],
    ) -> None:
        config = self.config
        async with anyio.create_task_group() as tg:
            for fs in self.functions:
                await tg.start(_serve_site, fs.site, grace)
            # the status file says "loading" before anyone is told we are listening, so a
            # check right after that line never reads a previous run's status
            await self._publish()
            log.info(
                "listening on %d socket(s) in %s: %s",
                len(self.functions),
                config.socket_dir,
                ", ".join(f.function.name for f in self.functions) or "none",
            )
            systemd.notify(f"STATUS=loading {len(self.functions)} handler(s)")
            task_status.started(self)
            tg.start_soon(self._publish_periodically)
            loading = anyio.CancelScope()
            tg.start_soon(self._load_all, installed, store, loading)
            await self._stop.wait()
            loading.cancel()
            systemd.notify("STOPPING=1", "STATUS=draining connections")
            for fs in self.functions:
                fs.site.stop_accepting()
            for fs in self.functions:
                await fs.site.stopped_accepting.wait()
            log.info("stopping: no new connections; open ones get %.1fs to finish", grace)
            # each site drains for up to `grace`, then cancels what is left and ends
            await self._publish()
            if self._publishing is not None:
                self._publishing.cancel()

    async def _load_all(
        self,
        installed: tuple[InstalledHandler, ...],
        store: InfoStore,
        scope: anyio.CancelScope,
    ) -> None:
        """Import every handler, concurrently: one slow import delays only its function."""
        with scope:
            if not self.functions:
                await self._report_ready()
            async with anyio.create_task_group() as tg:
                for fs in self.functions:
                    tg.start_soon(self._load_one, fs, installed, store)

    async def _load_one(
        self, fs: FunctionState, installed: tuple[InstalledHandler, ...], store: InfoStore
    ) -> None:
        result = await anyio.to_thread.run_sync(
            functools.partial(
                load_function,
                fs.function,
                installed=installed,
                autoload=not self.config.disable_plugin_autoload,
                allow_distributions=self.config.allow_distributions,
                store=store,
            ),
            abandon_on_cancel=True,
        )
        if isinstance(result, Failed):
            fs.state, fs.error = "failed", result.error
            log.error(
                "%s: handler failed to load; its socket answers Info (%s) and Init fails with: %s",
                fs.function.name,
                result.info_source,
                result.error,
            )
            fs.site.set_handler(result.spec, init_error=result.error)
        else:
            fs.state, fs.origin = "ready", result.origin
            fs.site.set_handler(result.spec)
            log.info("%s: serving %s on %s", fs.function.name, result.origin, fs.function.socket)
        if all(f.state != "loading" for f in self.functions):
            await self._report_ready()
        else:
            await self._publish()

    async def _report_ready(self) -> None:
        """Ready: the status file first, then the log and systemd, so that a check run
        as soon as either says ready reads a status that says so too."""
        failed = sum(f.state == "failed" for f in self.functions)
        self.ready.set()
        await self._publish()
        summary = f"{len(self.functions) - failed} function(s) ready, {failed} failed"
        log.info("ready: %s", summary)
        systemd.notify("READY=1", f"STATUS={summary}")


async def _serve_site(site: Site, grace: float, *, task_status: TaskStatus[None]) -> None:
    await site.serve(grace=grace, task_status=task_status)


async def run_until_signalled(daemon: Daemon) -> None:
    """Run the daemon; SIGTERM/SIGINT stop it gracefully, a second SIGINT at once.

    The signal receiver is in place before the daemon serves anything, so a
    SIGTERM at any point after start-up is a graceful stop, never a kill.
    """
    async with anyio.create_task_group() as tg:

        async def watch_signals(*, task_status: TaskStatus[None]) -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                task_status.started()
                async for signum in signals:
                    if daemon.stopping and signum == signal.SIGINT:
                        log.warning("second interrupt: exiting without waiting")
                        daemon.forced = True
                        tg.cancel_scope.cancel()
                        return
                    log.info("received %s", signal.Signals(signum).name)
                    daemon.request_stop()

        await tg.start(watch_signals)
        await daemon.run()
        tg.cancel_scope.cancel()
