"""Where a connection gets its handler: a protocol, so the engine never imports its callers.

The daemon's function runtime and ``udfd.testing`` both implement it; the
engine only reads it. Kept apart from ``connection`` and ``runner`` so that
neither has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import anyio

from udfd.handler import HandlerSpec
from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["THREADS_PER_FUNCTION", "FixedSource", "HandlerSource"]

#: worker threads one function's threaded handlers may occupy at once
THREADS_PER_FUNCTION = 16


class HandlerSource(Protocol):
    """Where a connection gets its handler: the function's Site, or a fixed spec.

    The socket is bound before the handler is imported, so ``spec`` may still be
    None when a connection starts; ``early_info`` is then the Info to serve
    meanwhile (the one last served for this function), if any.
    """

    @property
    def spec(self) -> HandlerSpec | None: ...

    @property
    def init_error(self) -> str | None: ...

    @property
    def early_info(self) -> pb.InfoResponse | None: ...

    @property
    def thread_limiter(self) -> anyio.CapacityLimiter:
        """Worker threads of this function's threaded handlers (shared by its connections)."""
        ...

    async def wait_loaded(self) -> None: ...


@dataclass
class FixedSource:
    """A handler known up front (tests, ``udfd.testing``)."""

    spec: HandlerSpec
    init_error: str | None = None
    early_info: pb.InfoResponse | None = None
    thread_limiter: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(THREADS_PER_FUNCTION)
    )

    async def wait_loaded(self) -> None:
        return None
