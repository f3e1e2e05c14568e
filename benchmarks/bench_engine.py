"""Throughput and keepalive latency of the connection engine, next to a raw floor.

Plays Kapacitor's side efficiently (driver.py). Servers run in their own
processes (see servers.py), the driver in this one.

    python benchmarks/bench_engine.py            # 200k points, 3 runs each
    python benchmarks/bench_engine.py --short    # the quick table CI prints

It prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from driver import Run, drive_many, pct, stream_frames

HERE = Path(__file__).resolve().parent
WIDTHS = (6, 12, 11, 11, 9)


class Server:
    def __init__(self, kind: str, *extra: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="udfd-bench-", dir="/tmp"))
        self.path = self.dir / "bench.sock"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "servers.py"), kind, str(self.path), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind} server did not start")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for p in self.dir.iterdir():
            p.unlink()
        self.dir.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", "-n", type=int, default=200_000)
    parser.add_argument("--keepalive-every", "-k", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="20k points, 1 run")
    parser.add_argument("--uvloop", action="store_true", help="servers and driver on uvloop")
    args = parser.parse_args()
    if args.short:
        args.points, args.runs = 20_000, 1
    loop_opts = ["--uvloop"] if args.uvloop else []
    frames = stream_frames(args.points)
    size = statistics.mean(len(f) for f in frames[:100])
    print(
        f"{args.points} points of ~{size:.0f} bytes, a keepalive every {args.keepalive_every}, "
        f"best of {args.runs} runs; {os.cpu_count()} cores; "
        f"event loop: {'uvloop' if args.uvloop else 'asyncio'}"
    )
    header = ("server", "conns", "points/s", "ka p50 ms", "ka p99 ms", "rss MiB")
    print(
        f"{header[0]:<16}" + "".join(f"{h:>{w}}" for h, w in zip(header[1:], WIDTHS, strict=True))
    )
    cases = [
        ("raw", ("raw",), 1),
        ("udfd", ("udfd",), 1),
        ("udfd threaded", ("udfd", "--threaded"), 1),
        ("raw", ("raw",), 4),
        ("udfd", ("udfd",), 4),
    ]
    for label, server_args, conns in cases:
        server = Server(*server_args, *loop_opts)
        try:
            best: Run | None = None
            for _ in range(args.runs):
                run = anyio.run(
                    functools.partial(drive_many, check_init=label != "raw"),
                    server.path,
                    frames,
                    args.keepalive_every,
                    conns,
                    backend_options={"use_uvloop": args.uvloop},
                )
                if run.points_out != args.points - args.points % conns:
                    raise SystemExit(f"{label}: {run.points_out} of {args.points} points came back")
                if best is None or run.rate > best.rate:
                    best = run
            assert best is not None
            print(
                f"{label:<16}{conns:>6}{best.rate:>12,.0f}{pct(best.keepalive_ms, 50):>11.2f}"
                f"{pct(best.keepalive_ms, 99):>11.2f}{server.peak_rss_mib():>9.1f}"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
