"""Start-up time and memory of ``udfd serve``: how soon Kapacitor can start.

Starts the real daemon (first-party handlers, one function each) and measures,
from the moment the process is spawned:

* every socket bound (the "listening" log line),
* every socket answering Info (what Kapacitor waits for at its own start-up),
* ready (every handler imported),

and the daemon's resident memory once ready. Prints numbers, asserts nothing.

    python benchmarks/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

from udfd.protocol.client import probe_info

FUNCTIONS = ("state_change", "moving_average", "outliers", "threshold")


def one_run() -> tuple[float, float, float, float]:
    workdir = Path(tempfile.mkdtemp(prefix="udfd-boot-", dir="/tmp"))
    config = workdir / "udfd.toml"
    config.write_text(
        f'socket_dir = "{workdir / "s"}"\nstate_dir = "{workdir / "state"}"\n'
        + "".join(f'[functions.{n}]\nhandler = "{n}"\n' for n in FUNCTIONS)
    )
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "udfd", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    seen: dict[str, float] = {}
    got_listening = threading.Event()
    got_ready = threading.Event()

    def read_log() -> None:
        # timestamps taken as lines arrive, independent of the probing below
        assert proc.stderr is not None
        for line in proc.stderr:
            now = time.perf_counter() - start
            if "listening on" in line:
                seen.setdefault("listening", now)
                got_listening.set()
            if "ready:" in line:
                seen.setdefault("ready", now)
                got_ready.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        got_listening.wait(60)
        anyio.run(_all_answer, workdir / "s")
        answering = time.perf_counter() - start
        got_ready.wait(60)
        rss = _rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(5)
        proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)
    listening, ready = seen.get("listening", float("nan")), seen.get("ready", float("nan"))
    return listening, answering, ready, rss


async def _all_answer(sockets: Path) -> None:
    for name in FUNCTIONS:
        await probe_info(sockets / f"{name}.sock", reply_timeout=30)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    cols = list(zip(*runs, strict=True))
    print(f"udfd serve with {len(FUNCTIONS)} first-party functions, median of {args.runs} runs:")
    for label, values, unit in (
        ("every socket bound", cols[0], "s"),
        ("every socket answers Info", cols[1], "s"),
        ("ready (handlers imported)", cols[2], "s"),
        ("resident memory when ready", cols[3], "MiB"),
    ):
        print(f"  {label:<28}{statistics.median(values):>8.3f} {unit}")


if __name__ == "__main__":
    main()
