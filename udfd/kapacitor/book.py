"""Which Kapacitor tasks udfd serves, kept in ``<state_dir>/tasks.json``.

A task is written down at its first successful Init and crossed out when
Kapacitor ends the connection itself (it stopped the task) or when udfd ended it
with an error (Kapacitor stopped the task *because* of that error; starting it
again would only repeat it). What stays in the file when udfd goes away, by a
shutdown, a crash or SIGKILL, is exactly the set of tasks that were running on
udfd then: the ones to re-enable. Connections udfd loses while it runs (a worker
that died) put their tasks back on that list too.

The file is rewritten atomically and read leniently: a damaged file is logged
and counted as empty, never a reason not to start.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["TASKS_FILE", "TaskBook"]

log = logging.getLogger("udfd.kapacitor")

TASKS_FILE = "tasks.json"
#: tasks kept at most; Kapacitor installs have hundreds, this bounds a runaway peer
MAX_TASKS = 10_000
#: the longest task ID kept (Kapacitor IDs are short names)
MAX_ID = 512


class TaskBook:
    """Live and pending tasks; the supervisor's event loop owns it (no locking)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: this run's open connections: task -> (function, node) -> how many
        self._live: dict[str, collections.Counter[tuple[str, str]]] = {}
        #: tasks that lost their connections to udfd: task -> {(function, node)}
        self._pending: dict[str, set[tuple[str, str]]] = {}
        #: tasks udfd itself disabled (to restart them) and has not enabled again yet
        self._disabled: set[str] = set()
        self._full_warned = False
        #: bumped at every change; the writer saves when it moved
        self.version = 0

    # ---------------------------------------------------------------- reading

    def load(self) -> list[str]:
        """Read what the previous run left; those tasks are pending. Returns them."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable task records %s: %s", self.path, exc)
            return []
        tasks = doc.get("tasks") if isinstance(doc, dict) else None
        if not isinstance(tasks, dict):
            log.warning("ignoring task records %s: not udfd's format", self.path)
            return []
        disabled = doc.get("disabled_by_udfd", [])
        self._disabled = (
            {t for t in disabled if isinstance(t, str)} if isinstance(disabled, list) else set()
        )
        for task, uses in list(tasks.items())[:MAX_TASKS]:
            if not isinstance(task, str) or not task or len(task) > MAX_ID:
                continue
            pairs = {
                (str(u[0]), str(u[1]))
                for u in (uses if isinstance(uses, list) else [])
                if isinstance(u, list) and len(u) == 2
            }
            self._pending[task] = pairs
        return sorted(self._pending)

    @property
    def pending(self) -> list[str]:
        return sorted(self._pending)

    def uses(self, task: str) -> list[tuple[str, str]]:
        """The (function, node) pairs a pending task had."""
        return sorted(self._pending.get(task, ()))

    def is_live(self, task: str) -> bool:
        """Whether the task has a connection to udfd now."""
        return task in self._live

    def reconnected(self, task: str, uses: list[tuple[str, str]]) -> bool:
        """Whether every one of ``uses`` (the pairs that had lost their connection) is live
        again: another node of the task that never lost its connection proves nothing."""
        if not uses:
            return self.is_live(task)
        live = self._live.get(task)
        return live is not None and all(live[use] > 0 for use in uses)

    def disabled_by_udfd(self, task: str) -> bool:
        return task in self._disabled

    def mark_disabled(self, task: str, disabled: bool) -> None:
        """Remember (on disk too) that udfd disabled the task to restart it, so that a stop
        before the enable cannot leave it looking like the user's choice."""
        if disabled:
            self._disabled.add(task)
        else:
            self._disabled.discard(task)
        self.version += 1

    def counts(self) -> dict[str, int]:
        return {"live": len(self._live), "pending": len(self._pending)}

    # ---------------------------------------------------------------- changes

    def started(self, task: str, function: str, node: str) -> None:
        """A successful Init: the task runs on udfd (again)."""
        if not task or len(task) > MAX_ID:
            return  # not a Kapacitor task ID (a test client, say): nothing to re-enable
        known = self.is_live(task) or task in self._pending
        if not known and len(self._live) + len(self._pending) >= MAX_TASKS:
            if not self._full_warned:
                self._full_warned = True
                log.warning(
                    "more than %d Kapacitor tasks use udfd: not recording %r and later "
                    "ones (they are not re-enabled after a restart)",
                    MAX_TASKS,
                    task,
                )
            return
        self._live.setdefault(task, collections.Counter())[(function, node)] += 1
        pending = self._pending.get(task)
        if pending is not None:  # only this node is back; others may still be lost
            pending.discard((function, node))
            if not pending:
                del self._pending[task]
        self.version += 1

    def ended(self, task: str, function: str, node: str, *, keep: bool) -> None:
        """A connection ended; ``keep``: udfd lost it, so the task is to be re-enabled."""
        live = self._live.get(task)
        use = (function, node)
        if live is None or live[use] <= 0:
            return
        live[use] -= 1
        if live[use] == 0:
            del live[use]
            if not live:
                del self._live[task]
        if keep:
            self._pending.setdefault(task, set()).add((function, node))
        self.version += 1

    def forget(self, task: str) -> None:
        """A pending task is handled (re-enabled, gone, disabled, or given up)."""
        if self._pending.pop(task, None) is not None:
            self.version += 1
        if task in self._disabled:
            self._disabled.discard(task)
            self.version += 1

    # ---------------------------------------------------------------- writing

    def document(self) -> dict[str, Any]:
        tasks: dict[str, set[tuple[str, str]]] = {t: set(u) for t, u in self._pending.items()}
        for task, uses in self._live.items():
            tasks.setdefault(task, set()).update(uses)
        return {
            "written_at": time.time(),
            "tasks": {t: sorted([list(u) for u in uses]) for t, uses in sorted(tasks.items())},
            "disabled_by_udfd": sorted(self._disabled),
        }

    def save(self, document: dict[str, Any]) -> bool:
        """Write ``document`` (from :meth:`document`) atomically; False and logged on failure.

        Mode 0600: task IDs say what an installation monitors.
        """
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tasks-", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(document, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            return True
        except OSError as exc:
            log.warning("could not write task records %s: %s", self.path, exc)
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
