"""Soak: one daemon under mixed abuse for a bounded time, its resources sampled as it goes.

Four functions, each driven by its own loop for ``--duration`` seconds:

* ``mirror``: well-behaved tasks that stream points and check that every one comes back
  exact, in order (the neighbour whose output must stay right);
* ``faulty``: tasks whose handler raises on some points (``error_policy = "drop"``), and
  tasks that send an oversized frame;
* ``state``: connection churn: Info-only probes and short tasks, opened and closed fast;
* ``slow_reader``: tasks that send a lot and never read, and idle connections that never
  send Init (ended by ``init_timeout``).

Every few seconds it samples the supervisor's and workers' open file descriptors, RSS and
threads from /proc, and prints them. At the end it fails (exit 1) if a well-behaved
task lost or changed a point, if the daemon logged an internal error, or if descriptors,
memory or threads grew past generous bounds between the first sample after warm-up and
the last. It asserts nothing about speed.

    python benchmarks/soak.py                   # 180 s
    python benchmarks/soak.py --duration 20     # what CI runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from bench_isolation import descendants

from udfd import make_point
from udfd.protocol import wire
from udfd.protocol.client import connect, probe_info
from udfd.protocol.framing import encode_varint
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import DaemonProcess

HANDLERS = Path(__file__).resolve().parent.parent / "tests" / "daemon_handlers" / "handlers.py"

#: growth allowed from the first sample after warm-up to the last (generous on purpose)
MAX_FD_GROWTH = 40
MAX_RSS_GROWTH_MIB = 60.0
MAX_THREAD_GROWTH = 20


@dataclass
class Tally:
    tasks: int = 0
    points_checked: int = 0
    lost_or_wrong: int = 0
    faulty_tasks: int = 0
    oversized: int = 0
    probes: int = 0
    stalled_readers: int = 0
    idle: int = 0
    errors: list[str] = field(default_factory=list)


def sample(pid: int) -> tuple[int, float, int]:
    """Open descriptors, RSS (MiB) and threads of the daemon's whole process family."""
    fds = rss = threads = 0
    for member in [pid, *descendants(pid)]:
        try:
            fds += len(os.listdir(f"/proc/{member}/fd"))
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads += int(line.split()[1])
        except OSError:
            continue
    return fds, rss / 1024, threads


async def well_behaved(path: Path, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        sent = [make_point("m", i, {"value": float(i)}, group="g") for i in range(500)]
        async with connect(path) as client:
            await client.info()
            if not (await client.init({})).success:
                tally.errors.append("mirror: Init failed")
                return
            await client.send_points(sent)
            await client.keepalive()
            out = await client.finish()
        tally.tasks += 1
        tally.points_checked += len(sent)
        if [p.SerializeToString() for p in out] != [p.SerializeToString() for p in sent]:
            tally.lost_or_wrong += 1


async def faulty(path: Path, deadline: float, tally: Tally) -> None:
    n = 0
    while time.monotonic() < deadline:
        n += 1
        async with connect(path) as client:
            await client.info()
            await client.init({})
            if n % 3:
                points = [make_point("m", i, {"fail": i % 7 == 0}) for i in range(200)]
                await client.send_points(points)
                await client.finish()
                tally.faulty_tasks += 1
            else:  # an oversized frame: announced larger than max_message_size
                await client.send_raw(encode_varint(64 * 1024 * 1024) + b"\x00" * 64)
                await client.wait_error()
                tally.oversized += 1


async def churn(path: Path, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        await probe_info(path)
        tally.probes += 1
        async with connect(path) as client:
            await client.info()
            await client.init({"field": "value"})
            await client.send_points(
                [make_point("m", i, {"value": float(i % 3)}) for i in range(20)]
            )
            await client.finish()


def stalled_reader(path: Path, deadline: float, tally: Tally) -> None:
    """Blocking: sends until the socket pushes back, then leaves without reading."""
    frame = wire.point_request_frame(make_point("m", 1, {"value": 1.0}))
    init = wire.request_frame(pb.Request(init=pb.InitRequest(taskID="stalled")))
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.fspath(path))
            s.sendall(init)
            s.settimeout(0.5)
            try:
                for _ in range(20_000):
                    s.sendall(frame * 50)
            except (TimeoutError, OSError):
                pass  # udfd stopped reading: its bounded buffers are full
        tally.stalled_readers += 1
        with socket.socket(socket.AF_UNIX) as idle:  # never sends anything
            idle.connect(os.fspath(path))
            time.sleep(0.3)
        tally.idle += 1


async def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="usoak-", dir="/tmp"))
    config = f"""
init_timeout = "2s"
max_message_size = 1048576
[functions.mirror]
handler = "{HANDLERS}:Mirror"
[functions.faulty]
handler = "{HANDLERS}:Faulty"
error_policy = "drop"
[functions.state]
handler = "state_change"
[functions.slow_reader]
handler = "{HANDLERS}:Mirror"
"""
    daemon = DaemonProcess(workdir, config)
    tally = Tally()
    samples: list[tuple[float, int, float, int]] = []
    try:
        daemon.wait_for("ready: 4 function(s) ready, 0 failed")
        started = time.monotonic()
        deadline = started + args.duration
        print(f"soak: {args.duration:.0f}s, 4 functions, pid {daemon.proc.pid}")
        print(f"{'t s':>6} {'fds':>6} {'RSS MiB':>8} {'threads':>8} {'tasks':>6} {'probes':>7}")

        async def sampler() -> None:
            while time.monotonic() < deadline:
                fds, rss, threads = sample(daemon.proc.pid)
                t = time.monotonic() - started
                samples.append((t, fds, rss, threads))
                print(
                    f"{t:6.1f} {fds:6d} {rss:8.1f} {threads:8d} {tally.tasks:6d} {tally.probes:7d}"
                )
                sys.stdout.flush()
                await anyio.sleep(args.every)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            for _ in range(2):
                tg.start_soon(well_behaved, daemon.socket("mirror"), deadline, tally)
            tg.start_soon(faulty, daemon.socket("faulty"), deadline, tally)
            tg.start_soon(churn, daemon.socket("state"), deadline, tally)
            tg.start_soon(
                anyio.to_thread.run_sync,
                stalled_reader,
                daemon.socket("slow_reader"),
                deadline,
                tally,
            )
        await anyio.sleep(3)  # let the last connections end
        fds, rss, threads = sample(daemon.proc.pid)
        samples.append((time.monotonic() - started, fds, rss, threads))
        print(f"{samples[-1][0]:6.1f} {fds:6d} {rss:8.1f} {threads:8d}  (after the load)")
        code = daemon.stop()
        log = daemon.log
    finally:
        daemon.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"well-behaved tasks {tally.tasks} ({tally.points_checked:,} points checked, "
        f"{tally.lost_or_wrong} lost or changed); faulty tasks {tally.faulty_tasks}; oversized "
        f"frames {tally.oversized}; probes {tally.probes}; stalled readers "
        f"{tally.stalled_readers}; idle connections {tally.idle}"
    )
    problems = list(tally.errors)
    if tally.lost_or_wrong:
        problems.append(f"{tally.lost_or_wrong} well-behaved task(s) lost or changed points")
    # handler exceptions are logged with their traceback on purpose (the faulty function);
    # these are udfd's own failures, or asyncio's about callbacks and tasks
    signs = ("internal error", "Exception in callback", "InvalidStateError", "never retrieved")
    bad = [line for line in log.splitlines() if any(sign in line for sign in signs)]
    if bad:
        at = log.find(bad[0])
        print("the daemon's log around the first:\n" + log[max(0, at - 1500) : at + 2500])
        problems.append(f"the daemon logged {len(bad)} internal or asyncio error(s)")
    if code != 0:
        problems.append(f"the daemon exited {code}")
    warm = [s for s in samples if s[0] >= min(5.0, args.duration / 3)]
    if len(warm) >= 2:
        first, last = warm[0], samples[-1]
        growth = (last[1] - first[1], last[2] - first[2], last[3] - first[3])
        print(
            f"growth after warm-up: fds {growth[0]:+d}, RSS {growth[1]:+.1f} MiB, threads "
            f"{growth[2]:+d} (bounds {MAX_FD_GROWTH}, {MAX_RSS_GROWTH_MIB:.0f} MiB, "
            f"{MAX_THREAD_GROWTH})"
        )
        if growth[0] > MAX_FD_GROWTH:
            problems.append(f"descriptors grew by {growth[0]}")
        if growth[1] > MAX_RSS_GROWTH_MIB:
            problems.append(f"RSS grew by {growth[1]:.1f} MiB")
        if growth[2] > MAX_THREAD_GROWTH:
            problems.append(f"threads grew by {growth[2]}")
    for problem in problems:
        print(f"SOAK FAILED: {problem}")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    args = parser.parse_args()
    raise SystemExit(anyio.run(run, args))


if __name__ == "__main__":
    main()
