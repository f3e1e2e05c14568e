from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess

from udfd.testing import short_socket_dir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_socket_dir("udfd-t-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``udfd serve`` subprocesses in ``workdir``; all are killed at teardown."""
    started: list[DaemonProcess] = []

    def start(
        config: str, env: dict[str, str] | None = None, python: str | None = None
    ) -> DaemonProcess:
        proc = DaemonProcess(workdir, config, env, python)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
