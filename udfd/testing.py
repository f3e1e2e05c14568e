"""Test a handler without Kapacitor: serve it on a real socket and drive it with the client.

``serve_handler`` runs the real engine (the same Site and Connection the daemon
uses) in the current event loop on a fresh unix socket; ``udfd.client.connect``
then plays Kapacitor against it. Nothing is mocked: bytes cross a real socket.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from .connection import Limits
from .handler import ErrorPolicy, Handler, HandlerSpec, inspect_handler
from .site import Site


def short_socket_dir(prefix: str = "udfd-") -> Path:
    """A fresh directory with a path short enough for unix sockets (caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@asynccontextmanager
async def serve_handler(
    handler: type[Handler[Any]] | HandlerSpec,
    *,
    name: str = "",
    path: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
    error_policy: ErrorPolicy | str = ErrorPolicy.ERROR,
    limits: Limits | None = None,
    init_error: str | None = None,
    grace: float = 5.0,
) -> AsyncIterator[Site]:
    """Serve one handler on a unix socket for the duration of the block; yields the Site.

    Its ``path`` is where to connect; its ``stats`` are the function's counters.
    """
    spec = handler if isinstance(handler, HandlerSpec) else inspect_handler(handler)
    own_dir = None
    if path is None:
        own_dir = short_socket_dir()
        path = own_dir / f"{name or 'udf'}.sock"
    site = Site(
        name or spec.name,
        path,
        spec,
        defaults=defaults,
        error_policy=ErrorPolicy(error_policy),
        limits=limits,
        init_error=init_error,
    )
    site.bind()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: site.serve(grace=grace, task_status=task_status))
            try:
                yield site
            finally:
                site.stop_accepting()
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
