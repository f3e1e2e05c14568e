"""Throughput and keepalive latency of the connection engine, next to a raw floor.

Plays Kapacitor's side efficiently: points are encoded before the clock starts,
sent in large writes with a keepalive every K points, while a concurrent reader
counts the points coming back and times each keepalive's round trip. Servers run
in their own processes (see servers.py), the driver in this one.

    python benchmarks/bench_engine.py            # 200k points, 3 runs each
    python benchmarks/bench_engine.py --short    # the quick table CI prints

It prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from udfd.protocol import wire
from udfd.protocol.framing import FrameDecoder
from udfd.protocol.proto import udf_pb2 as pb

HERE = Path(__file__).resolve().parent
WIDTHS = (6, 12, 11, 11, 9)


@dataclass
class Run:
    points: int = 0
    seconds: float = 0.0
    keepalive_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0


def make_points(n: int) -> list[bytes]:
    """Frames of ~70-byte points, as Kapacitor sends them for a typical cpu series."""
    base = 1_700_000_000_000_000_000
    frames = []
    for i in range(n):
        point = pb.Point(
            time=base + i * 1_000_000_000,
            name="cpu",
            database="telegraf",
            retentionPolicy="autogen",
            tags={"host": "server"},
            fieldsDouble={"value": 0.5 + i},
        )
        frames.append(wire.point_request_frame(point))
    return frames


async def drive(path: Path, frames: list[bytes], every: int) -> Run:
    run = Run()
    stream = await anyio.connect_unix(path)
    decoder = FrameDecoder()
    async with stream:
        await stream.send(
            wire.request_frame(pb.Request(info=pb.InfoRequest()))
            + wire.request_frame(pb.Request(init=pb.InitRequest(taskID="bench", nodeID="n")))
        )
        leftover: list[bytes] = []
        while not any(f[:1] == b"\x12" for f in leftover):  # the InitResponse
            leftover.extend(decoder.feed(await stream.receive(65536)))
        chunks = [b"".join(frames[i : i + every]) for i in range(0, len(frames), every)]

        async def send() -> None:
            for chunk in chunks:
                ka = wire.request_frame(
                    pb.Request(keepalive=pb.KeepaliveRequest(time=time.perf_counter_ns()))
                )
                await stream.send(chunk + ka)
            await stream.send_eof()

        async def receive() -> None:
            # counts frames by walking their length prefixes: slicing every
            # frame out would make the driver, not the server, the bottleneck
            count = 0
            latencies = run.keepalive_ms
            buf = b""
            while True:
                try:
                    data = await stream.receive(256 * 1024)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                now = time.perf_counter_ns()
                buf = buf + data if buf else data
                pos, end = 0, len(buf)
                while pos < end:
                    size = buf[pos]
                    start = pos + 1
                    if size >= 0x80:
                        if pos + 1 >= end:
                            break
                        size = (size & 0x7F) | (buf[pos + 1] << 7)
                        start = pos + 2
                        if size >= 1 << 14:
                            raise SystemExit("driver: unexpectedly large response")
                    stop = start + size
                    if stop > end:
                        break
                    first = buf[start]
                    if first == 0x8A:
                        count += 1
                    elif first == 0x1A:
                        sent = pb.Response.FromString(buf[start:stop]).keepalive.time
                        latencies.append((now - sent) / 1e6)
                    pos = stop
                buf = buf[pos:]
            run.points = count

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            tg.start_soon(send)
        run.seconds = time.perf_counter() - start
    return run


async def drive_many(path: Path, frames: list[bytes], every: int, conns: int) -> Run:
    share = len(frames) // conns
    runs: list[Run] = []

    async def one(i: int) -> None:
        runs.append(await drive(path, frames[i * share : (i + 1) * share], every))

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(conns):
            tg.start_soon(one, i)
    total = Run(seconds=time.perf_counter() - start)
    for r in runs:
        total.points += r.points
        total.keepalive_ms.extend(r.keepalive_ms)
    return total


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


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


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
    frames = make_points(args.points)
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
                    drive_many,
                    server.path,
                    frames,
                    args.keepalive_every,
                    conns,
                    backend_options={"use_uvloop": args.uvloop},
                )
                if run.points != args.points - args.points % conns:
                    raise SystemExit(f"{label}: {run.points} of {args.points} points came back")
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
