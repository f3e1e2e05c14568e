"""The daemon: every configured function on its own socket, started and stopped safely.

Start-up order is the point of this module. Kapacitor refuses to start until every
UDF socket answers Info, and retries a missing socket only with back-off, so:

1. read entry-point metadata and resolve the functions (cheap, no imports);
2. bind every socket (stale ones removed, foreign ones refused) — Kapacitor can
   connect from here on; connections wait for their handler;
3. import each handler in a worker thread, one function at a time; a handler that
   fails marks only its own function failed (Info still answered, Init fails);
4. report ready (log line, systemd ``READY=1``).

Shutdown (SIGTERM/SIGINT): stop accepting, give open connections the grace
period to finish (Kapacitor half-closes when it stops a task), cancel what is
left, remove our socket files. A second SIGINT cancels at once.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from . import systemd
from .config import Config, Function, resolve_functions
from .connection import Limits
from .errors import StartupError
from .fallback import InfoStore
from .plugins import Failed, InstalledHandler, discover, load_function
from .site import Site

log = logging.getLogger("udfd.daemon")


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

    def request_stop(self) -> None:
        """Begin a graceful shutdown (idempotent)."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready.is_set(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "functions": [f.as_dict() for f in self.functions],
        }

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, load, serve until a stop is requested, drain, clean up."""
        config = self.config
        installed = discover(autoload=not config.disable_plugin_autoload)
        functions = resolve_functions(config, installed)
        if not functions:
            log.warning("no functions to serve: no handlers are installed or configured")
        limits = Limits(max_message_size=config.max_message_size)
        self.functions = [
            FunctionState(
                fn,
                Site(
                    fn.name,
                    fn.socket,
                    None,
                    defaults=fn.options,
                    error_policy=fn.error_policy,
                    limits=limits,
                ),
            )
            for fn in functions
        ]
        self._bind_all()
        grace = config.shutdown_grace.total_seconds()
        async with anyio.create_task_group() as tg:
            for fs in self.functions:
                await tg.start(_serve_site, fs.site, grace)
            log.info(
                "listening on %d socket(s) in %s: %s",
                len(self.functions),
                config.socket_dir,
                ", ".join(f.function.name for f in self.functions) or "none",
            )
            systemd.notify(f"STATUS=loading {len(self.functions)} handler(s)")
            task_status.started(self)
            loading = anyio.CancelScope()
            tg.start_soon(self._load_all, installed, loading)
            await self._stop.wait()
            loading.cancel()
            log.info("stopping: no new connections; open ones get %.1fs to finish", grace)
            systemd.notify("STOPPING=1", "STATUS=draining connections")
            for fs in self.functions:
                fs.site.stop_accepting()
            # each site drains for up to `grace`, then cancels what is left and ends
        log.info("stopped")

    def _bind_all(self) -> None:
        """Bind every socket or none: a failure releases what was bound already."""
        bound: list[Site] = []
        try:
            for fs in self.functions:
                fs.site.bind(mode=fs.function.socket_mode, group=fs.function.socket_group)
                bound.append(fs.site)
        except StartupError:
            for site in bound:
                site.close_unserved()
            raise

    async def _load_all(
        self, installed: tuple[InstalledHandler, ...], scope: anyio.CancelScope
    ) -> None:
        with scope:
            await self._load_each(installed)

    async def _load_each(self, installed: tuple[InstalledHandler, ...]) -> None:
        store = InfoStore(self.config.state_file)
        failed = 0
        for fs in self.functions:
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
                failed += 1
                fs.state, fs.error = "failed", result.error
                log.error(
                    "%s: handler failed to load; its socket answers Info (%s) and Init "
                    "fails with: %s",
                    fs.function.name,
                    result.info_source,
                    result.error,
                )
                fs.site.set_handler(result.spec, init_error=result.error)
            else:
                fs.state, fs.origin = "ready", result.origin
                fs.site.set_handler(result.spec)
                log.info(
                    "%s: serving %s on %s", fs.function.name, result.origin, fs.function.socket
                )
        self.ready.set()
        summary = f"{len(self.functions) - failed} function(s) ready, {failed} failed"
        log.info("ready: %s", summary)
        systemd.notify("READY=1", f"STATUS={summary}")


async def _serve_site(site: Site, grace: float, *, task_status: TaskStatus[None]) -> None:
    await site.serve(grace=grace, task_status=task_status)


async def run_until_signalled(daemon: Daemon) -> None:
    """Run the daemon; SIGTERM/SIGINT stop it gracefully, a second SIGINT at once."""
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    if daemon._stop.is_set() and signum == signal.SIGINT:
                        log.warning("second interrupt: exiting without waiting")
                        daemon.forced = True
                        tg.cancel_scope.cancel()
                        return
                    log.info("received %s", signal.Signals(signum).name)
                    daemon.request_stop()

        tg.start_soon(watch_signals)
        await daemon.run()
        tg.cancel_scope.cancel()
