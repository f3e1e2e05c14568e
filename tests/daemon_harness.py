"""Run the real daemon (``python -m udfd serve``) as a subprocess for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

HANDLERS = Path(__file__).resolve().parent / "daemon_handlers"


class DaemonProcess:
    """One ``udfd serve`` process with its config in a short temp dir.

    ``wait_for(text)`` blocks until a log line contains ``text``; nothing here
    sleeps for a fixed time.
    """

    def __init__(
        self,
        workdir: Path,
        config: str,
        env: dict[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        """``python``: the interpreter to run udfd with (default: the one running the tests)."""
        self.dir = workdir
        self.sockets = workdir / "s"
        self.config = workdir / "udfd.toml"
        text = f'socket_dir = "{self.sockets}"\nstate_dir = "{workdir / "state"}"\n'
        text += textwrap.dedent(config).replace("HANDLERS", str(HANDLERS))
        self.config.write_text(text)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("UDFD_CONFIG", None)
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "udfd", "serve", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=full_env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def socket(self, name: str) -> Path:
        return self.sockets / f"{name}.sock"

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"daemon exited ({self.proc.returncode}): {self.log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line with {text!r}: {self.log}")
                self._cond.wait(left)

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for an exit already asked for (no second signal)."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        """Kill if still running and release the pipe (the fixture's teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
