"""The daemon as the tests run it: ``udfd.testing.DaemonProcess`` with the tests' handlers."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

from udfd import testing

HANDLERS = Path(__file__).resolve().parent / "daemon_handlers"


class DaemonProcess(testing.DaemonProcess):
    """``HANDLERS`` in the config text stands for ``tests/daemon_handlers``."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        text = textwrap.dedent(config).replace("HANDLERS", str(HANDLERS))
        super().__init__(workdir, text, env, python)
