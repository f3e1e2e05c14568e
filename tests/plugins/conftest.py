"""Fixtures for the first-party handler tests: real socket, real engine, real client.

The helpers themselves live in ``udfd.testing`` (shared with the daemon tests and
offered to plugin authors); these fixtures adapt them to the call shapes the
handler tests use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import pytest

from udfd.serve.site import Site
from udfd.testing import Batch, TaskRun, check_batch_framing, make_batch, run_task


async def run_on_site(site: Site, options: Mapping[str, Any], **kwargs: Any) -> TaskRun:
    return await run_task(site.path, options, **kwargs)


@pytest.fixture(name="drive")
def drive_fixture() -> Callable[..., Awaitable[TaskRun]]:
    return run_on_site


def batch_of(
    name: str,
    group: str,
    tags: Mapping[str, str],
    rows: Iterable[tuple[int, Mapping[str, Any]]],
) -> Batch:
    return make_batch(name, rows, tags=tags, group=group)


@pytest.fixture(name="make_batch")
def make_batch_fixture() -> Callable[..., Batch]:
    return batch_of


@pytest.fixture
def framed() -> Callable[..., list[list[Any]]]:
    return check_batch_framing
