"""Start again the Kapacitor tasks that stopped because udfd went away.

For each pending task (see :mod:`udfd.kapacitor.book`), once udfd serves again:

1. wait ``settle``, so that Kapacitor has seen the broken connection;
2. ``GET`` the task. Gone (404): forgotten. Disabled: someone stopped it on
   purpose, left alone. Executing: it reconnected (done) or Kapacitor has not
   noticed yet (asked again later);
3. enabled but not executing: ``PATCH`` disabled, then enabled (Kapacitor only
   starts a task on a status *change*).

Errors that can pass (connection refused, timeouts, 5xx) are retried with
doubling backoff, ``attempts`` times in all; the rest end the attempt at once.
Every step is logged and counted. Never in a loop: a task re-enabled
``max_reenables`` times within ``reenable_window`` (a handler that crashes its
worker at every start, say) is left stopped, with an error in the log.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc

from udfd.config.kapacitor import KapacitorConfig
from udfd.kapacitor.api import ApiError, TaskApi
from udfd.kapacitor.book import TaskBook

__all__ = ["RESULTS", "Reenabler"]

log = logging.getLogger("udfd.kapacitor")

Result = Literal["reenabled", "reconnected", "gone", "disabled", "executing", "limited", "failed"]
#: how a task's re-enabling ended; each is a counter in the status and in /metrics
RESULTS: tuple[Result, ...] = (
    "reenabled", "reconnected", "gone", "disabled", "executing", "limited", "failed",
)  # fmt: skip
#: concurrent requests to Kapacitor; a restart with hundreds of tasks must not flood it
MAX_CONCURRENT = 4

T = TypeVar("T")


class Reenabler:
    """Owned by the supervisor; its attempts run in the supervisor's task group."""

    def __init__(
        self,
        config: KapacitorConfig,
        book: TaskBook,
        changed: Callable[[], Awaitable[None]] | None = None,
        persist: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``changed``: awaited after each task's outcome (the supervisor publishes it);
        ``persist``: awaited to write the book at once (before a disable)."""
        self._config = config
        self._book = book
        self._changed = changed
        self._persist = persist
        self._api = TaskApi(config) if config.enabled else None
        self._limiter = anyio.CapacityLimiter(MAX_CONCURRENT)
        self._running: dict[str, anyio.CancelScope] = {}
        #: tasks lost again while an attempt for them was running: one more attempt
        self._again: set[str] = set()
        self._stopped = False
        self._history: dict[str, collections.deque[float]] = {}
        self.counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self.counts.update(requests=0, request_errors=0, retries=0)
        self.last_error = ""

    @property
    def enabled(self) -> bool:
        return self._api is not None

    def status(self) -> dict[str, Any]:
        return {
            "url": self._config.url or "",
            "reenable_tasks": self.enabled,
            "tasks": self._book.counts(),
            "in_progress": len(self._running),
            **self.counts,
            "last_error": self.last_error,
        }

    def schedule(self, tg: anyio.abc.TaskGroup, tasks: Iterable[str], why: str) -> None:
        """Re-enable ``tasks`` (each at most once at a time), or say why udfd will not."""
        if self._stopped:
            return
        tasks = list(tasks)
        self._again.update(t for t in tasks if t in self._running)
        tasks = [t for t in tasks if t not in self._running]
        if not tasks:
            return
        if self._api is None:
            log.warning(
                "Kapacitor stopped %d task(s) that used udfd (%s): %s. Re-enable them with "
                "`kapacitor enable ID`, or set [kapacitor] url so that udfd does it",
                len(tasks),
                why,
                ", ".join(tasks),
            )
            for task in tasks:
                self._book.forget(task)
            return
        log.info("re-enabling %d Kapacitor task(s) (%s): %s", len(tasks), why, ", ".join(tasks))
        for task in tasks:
            self._running[task] = anyio.CancelScope()
            tg.start_soon(self._one, task, why)

    def stop(self) -> None:
        """udfd is stopping: no new attempts, and the running ones end (a disable already
        sent is followed by its enable first; see :meth:`_restart`). Pending tasks stay in
        the book for the next start."""
        self._stopped = True
        for scope in self._running.values():
            scope.cancel()

    async def _one(self, task: str, why: str) -> None:
        scope = self._running[task]
        try:
            with scope:
                while True:
                    try:
                        result = await self._reenable(task, why)
                    except Exception:  # a udfd bug must not take the supervisor down
                        log.exception("re-enabling Kapacitor task %s failed unexpectedly", task)
                        result = "failed"
                    self.counts[result] += 1
                    if task in self._again and not self._stopped:
                        self._again.discard(task)  # lost again meanwhile (the guard bounds it)
                        why = "lost its connection again"
                        continue
                    break
                if result != "reconnected":
                    self._book.forget(task)
        finally:
            del self._running[task]
            self._again.discard(task)
        if self._changed is not None and not scope.cancel_called:
            await self._changed()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        self.counts["requests"] += 1
        # the client's timeout is per socket operation; this bounds the whole request
        deadline = 2 * self._config.request_timeout.total_seconds() + 1
        try:
            with anyio.fail_after(deadline):
                return await anyio.to_thread.run_sync(
                    functools.partial(fn, *args), limiter=self._limiter, abandon_on_cancel=True
                )
        except TimeoutError:
            self.counts["request_errors"] += 1
            self.last_error = f"no answer from Kapacitor within {deadline:g}s"
            raise ApiError("transient", self.last_error) from None
        except ApiError as exc:
            self.counts["request_errors"] += 1
            self.last_error = str(exc)
            raise

    def _allowed(self, task: str) -> bool:
        """The loop guard: fewer than ``max_reenables`` within ``reenable_window``."""
        window = self._config.reenable_window.total_seconds()
        times = self._history.setdefault(task, collections.deque())
        now = time.monotonic()
        while times and now - times[0] > window:
            times.popleft()
        return len(times) < self._config.max_reenables

    async def _reenable(self, task: str, why: str) -> Result:
        api = self._api
        assert api is not None
        config = self._config
        await anyio.sleep(config.settle.total_seconds())
        delay = config.backoff.total_seconds()
        #: a "disabled" seen then is udfd's own doing (also by a run that was stopped)
        we_disabled = self._book.disabled_by_udfd(task)
        uses = self._book.uses(task)  # the nodes that lost their connection
        problem = ""
        executing = False
        for attempt in range(1, config.attempts + 1):
            if self._book.reconnected(task, uses) and not we_disabled:
                log.info("Kapacitor task %s reconnected by itself", task)
                return "reconnected"
            try:
                state = await self._call(api.get, task)
                executing = state.executing
                if state.status == "disabled" and not we_disabled:
                    log.info("Kapacitor task %s is disabled; left alone", task)
                    return "disabled"
                if state.executing:
                    if self._book.reconnected(task, uses):
                        return "reconnected"
                    problem = "still executing in Kapacitor, but not connected to udfd"
                else:
                    if not self._allowed(task):
                        message = (
                            f"not re-enabling Kapacitor task {task} again: it was re-enabled "
                            f"{config.max_reenables} times within "
                            f"{config.reenable_window.total_seconds():g}s and stopped each "
                            f"time (last error: {state.error or 'none'})"
                        )
                        log.error("%s", message)
                        self.last_error = message
                        return "limited"
                    if state.status == "enabled":
                        self._book.mark_disabled(task, True)
                        if self._persist is not None:
                            await self._persist()  # on disk before Kapacitor is told
                        await self._call(api.set_status, task, "disabled")
                        we_disabled = True
                    # once disabled, the enable goes out even when udfd is stopping meanwhile
                    # (bounded by the request deadline)
                    with anyio.CancelScope(shield=True):
                        await self._call(api.set_status, task, "enabled")
                    self._book.mark_disabled(task, False)
                    self._history[task].append(time.monotonic())
                    log.info(
                        "re-enabled Kapacitor task %s (%s); it had stopped with: %s",
                        task,
                        why,
                        state.error or "no error",
                    )
                    return "reenabled"
            except ApiError as exc:
                if exc.kind == "gone":
                    log.info("Kapacitor task %s no longer exists; forgotten", task)
                    return "gone"
                if exc.kind == "final":
                    log.error("cannot re-enable Kapacitor task %s: %s%s", task, exc,
                              _left_disabled(task, we_disabled))  # fmt: skip
                    return "failed"
                problem = str(exc)
            if attempt < config.attempts:
                self.counts["retries"] += 1
                log.warning(
                    "re-enabling Kapacitor task %s: %s; trying again in %gs (attempt %d of %d)",
                    task,
                    problem,
                    delay,
                    attempt,
                    config.attempts,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, config.max_backoff.total_seconds())
        if executing and not we_disabled:
            log.warning(
                "Kapacitor task %s is still executing but never reconnected to udfd; left "
                "alone (restart it with `kapacitor disable %s; kapacitor enable %s`)",
                task,
                task,
                task,
            )
            return "executing"
        message = f"gave up re-enabling Kapacitor task {task} after {config.attempts} attempts: "
        message += problem + _left_disabled(task, we_disabled)
        log.error("%s", message)
        self.last_error = message
        return "failed"


def _left_disabled(task: str, we_disabled: bool) -> str:
    if not we_disabled:
        return ""
    return f"; udfd had disabled it to restart it: enable it with `kapacitor enable {task}`"
