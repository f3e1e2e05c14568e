"""Isolation of the worker-process daemon: noisy neighbours, worker scaling, idle memory.

Runs the real daemon (``python -m udfd serve --config FILE``) as a subprocess, once
per case, and plays Kapacitor against its sockets:

1. noisy neighbour: ``moving_average`` gets a light stream with keepalives, alone and
   while a slow function of the same pool (one worker) is flooded on its own
   connection (blocking sleep, pure-Python CPU, ``time.sleep`` in ``async def``);
2. workers: the trivial mirror with ``workers = 1`` and ``2``, on 1 and 4 connections
   (kdrive from ``../shared/tools`` when it exists, else the Python client);
3. idle memory: 20 functions on ``workers = 1, 2, 3``, RSS and PSS of the supervisor
   and all its descendants after "ready:".

    python benchmarks/bench_isolation.py            # about 1 minute
    python benchmarks/bench_isolation.py --short    # about 20 s

It prints numbers and asserts nothing about them; what looked wrong (a daemon that
did not start, missing output, a process left behind) is listed under "notes".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import anyio

import udfd
from udfd.protocol import wire
from udfd.protocol.client import connect, probe_info
from udfd.protocol.framing import FrameDecoder
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import DaemonProcess

HERE = Path(__file__).resolve().parent
HANDLERS = HERE / "isolation_handlers.py"
KDRIVE = HERE.parent.parent / "shared" / "tools" / "kdrive"
FIRST_PARTY = ("state_change", "state_change_batch", "moving_average", "outliers", "threshold")
#: SIGTERM, then SIGKILL after this many seconds
STOP_TIMEOUT = 15.0
#: first byte of a Response frame's body: point (field 17), keepalive (3), error (4)
POINT_TAG, KEEPALIVE_TAG, ERROR_TAG = 0x8A, 0x1A, 0x22

NOTES: list[str] = []


def note(text: str) -> None:
    NOTES.append(text)


def describe(exc: BaseException) -> str:
    """An exception in a line, the leaves of an exception group one after the other."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()  # comm may hold spaces and parentheses
    return int(rest[1]), int(rest[19])


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (children found by the ppid in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        kids = sorted(children.get(todo.pop(), []))
        found.extend(kids)
        todo.extend(kids)
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB from /proc/PID/smaps_rollup; (0, 0) when the process is gone."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in values:
            values[parts[0]] = int(parts[1])
    return values["Rss:"], values["Pss:"]


class Daemon(DaemonProcess):
    """``udfd.testing.DaemonProcess`` in a short temp dir; a context manager that always
    kills it, its descendants included, and notes what it logged above INFO."""

    def __init__(self, config: str, tag: str, label: str, expected: tuple[str, ...] = ()) -> None:
        """``label`` names the case in notes; ``expected``: log lines above INFO that the
        case provokes on purpose."""
        self.label = label
        self.expected = expected
        workdir = Path(tempfile.mkdtemp(prefix=f"ui{tag}-", dir="/tmp"))
        super().__init__(workdir, 'shutdown_grace = "1s"\n' + config)

    def roles(self) -> dict[int, str]:
        """pid -> "pool/slot" for the workers the log announced."""
        out: dict[int, str] = {}
        for line in self.log.splitlines():
            # "worker default/1 started (pid 12532)"
            if " started (pid " in line and "worker " in line:
                label = line.split("worker ", 1)[1].split()[0]
                out[int(line.rsplit("(pid ", 1)[1].rstrip(")"))] = label
        return out

    def stop_all(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT; then kill any descendant left behind."""
        tree = {pid: stat[1] for pid in descendants(self.proc.pid) if (stat := _stat(pid))}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                note(f"daemon of {self.label!r} ignored SIGTERM for {STOP_TIMEOUT:.0f}s: SIGKILL")
                self.proc.kill()
                self.proc.wait(10)
        for pid, start in tree.items():
            for _ in range(20):  # a worker may take a moment to follow its supervisor
                stat = _stat(pid)
                if stat is None or stat[1] != start:
                    break
                time.sleep(0.05)
            else:
                note(f"process {pid} of the daemon of {self.label!r} outlived it: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.returncode not in (0, -signal.SIGKILL):
            note(f"daemon of {self.label!r} exited with {self.proc.returncode}")
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._note_log()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _note_log(self) -> None:
        """Put what the daemon logged above INFO, and unclean worker exits, in the notes."""
        odd = [
            line
            for line in self.lines
            if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))
            or "Traceback" in line
            or (") exited (" in line and "(exit code 0)" not in line)
        ]
        expected = [line for line in odd if any(e in line for e in self.expected)]
        odd = [line for line in odd if line not in expected]
        if expected:
            note(
                f"daemon of {self.label!r}: {len(expected)} expected warning(s) "
                "(its slow function's connection was cut mid-chunk): "
                + "; ".join(sorted({e for e in self.expected if any(e in x for x in expected)}))
            )
        if odd:
            shown = "\n    ".join(line[:200] for line in odd[:4])
            more = f"\n    (+{len(odd) - 4} more)" if len(odd) > 4 else ""
            note(f"daemon of {self.label!r} logged {len(odd)} line(s) of note:\n    {shown}{more}")

    def __enter__(self) -> Daemon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


# ---------------------------------------------------------------- helpers


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def point_frames(n: int, start: int = 0) -> list[bytes]:
    base = 1_700_000_000_000_000_000
    return [
        wire.point_request_frame(
            udfd.make_point("cpu", base + (start + i) * 1_000_000_000, {"value": 0.5 + i})
        )
        for i in range(n)
    ]


def table(header: tuple[str, ...], widths: tuple[int, ...]) -> None:
    print(
        f"{header[0]:<{widths[0]}}"
        + "".join(f"{h:>{w}}" for h, w in zip(header[1:], widths[1:], strict=True))
    )


# ---------------------------------------------------------------- 1. noisy neighbour

NEIGHBOUR_CONFIG = f"""\
workers = 1
[functions.neighbour]
handler = "moving_average"
options = {{ field = "value", size = 10 }}
[functions.sleepy]
handler = "{HANDLERS}:SleepyMirror"
[functions.burning]
handler = "{HANDLERS}:BurningMirror"
[functions.async_sleepy]
handler = "{HANDLERS}:AsyncSleepyMirror"
[pools.own]
workers = 1
[functions.burning_own]
handler = "{HANDLERS}:BurningMirror"
pool = "own"
"""


#: what a worker logs when the flood's connection is cut while its handler is mid-chunk
FLOOD_CUT = (
    "handler still busy in a worker thread",
    "abandoning 1 busy handler thread(s)",
)


@dataclass
class Neighbour:
    keepalive_ms: list[float] = field(default_factory=list)
    info_ms: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0


@dataclass
class Flood:
    sent: int = 0
    points: int = 0
    heartbeats: int = 0
    max_gap_s: float = 0.0
    window_s: float = 0.0


async def neighbour_load(path: Path, seconds: float) -> Neighbour:
    """1,000 points/s in writes of 10, a keepalive every 20 ms, an Info probe every 250 ms."""
    result = Neighbour()
    deadline = time.perf_counter() + seconds
    async with connect(path) as client:
        await client.info()
        init = await client.init()
        if not init.success:
            note(f"neighbour: Init failed: {init.error}")
            return result

        async def stream() -> None:
            t = 0
            while time.perf_counter() < deadline:
                await client.send_points(
                    udfd.make_point("cpu", (t + i) * 1_000_000_000, {"value": float(t + i)})
                    for i in range(10)
                )
                t += 10
                await anyio.sleep(0.01)
            result.sent = t

        async def keepalives() -> None:
            while time.perf_counter() < deadline:
                result.keepalive_ms.append(await client.keepalive() * 1000)
                await anyio.sleep(0.02)

        async def infos() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await probe_info(path)
                result.info_ms.append((time.perf_counter() - start) * 1000)
                await anyio.sleep(0.25)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            tg.start_soon(keepalives)
            tg.start_soon(infos)
        result.received = len(await client.finish())
    return result


async def flood(path: Path, result: Flood, stop: anyio.Event) -> None:
    """Send points as fast as the function takes them until ``stop``; time every arrival.

    No keepalive requests are sent on this connection, so every KeepaliveResponse
    read is one of the watchdog's heartbeats. The silence is measured from the
    InitResponse: the longest time between two reads that brought at least one
    whole response (a point or a heartbeat), or between the last one and ``stop``.
    """
    chunk = b"".join(point_frames(1000))
    stream = await anyio.connect_unix(path)
    decoder = FrameDecoder()
    async with stream:
        await stream.send(
            wire.request_frame(pb.Request(info=pb.InfoRequest()))
            + wire.request_frame(pb.Request(init=pb.InitRequest(taskID="flood", nodeID="n")))
        )
        frames: list[bytes] = []
        with anyio.fail_after(10):
            while not any(f[:1] == b"\x12" for f in frames):  # the InitResponse
                frames.extend(decoder.feed(await stream.receive(65536)))
        init = next(pb.Response.FromString(f).init for f in frames if f[:1] == b"\x12")
        if not init.success:
            note(f"flood {path.name}: Init failed: {init.error}")
        start = last = time.perf_counter()

        async def send() -> None:
            while True:
                await stream.send(chunk)
                result.sent += 1000

        async def receive() -> None:
            nonlocal last
            while True:
                try:
                    data = await stream.receive(256 * 1024)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    note(f"flood {path.name}: the daemon closed the connection")
                    return
                now = time.perf_counter()
                frames = decoder.feed(data)
                if not frames:
                    continue
                result.max_gap_s = max(result.max_gap_s, now - last)
                last = now
                for f in frames:
                    if f[0] == POINT_TAG:
                        result.points += 1
                    elif f[0] == KEEPALIVE_TAG:
                        result.heartbeats += 1
                    elif f[0] == ERROR_TAG:
                        note(f"flood {path.name}: {pb.Response.FromString(f).error.error}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(receive)
            await stop.wait()
            now = time.perf_counter()
            result.max_gap_s = max(result.max_gap_s, now - last)
            result.window_s = now - start
            tg.cancel_scope.cancel()


async def noisy_case(
    daemon: Daemon, slow: str | None, warmup: float, seconds: float
) -> tuple[Neighbour, Flood | None]:
    if slow is None:
        with anyio.fail_after(seconds + 30):
            return await neighbour_load(daemon.socket("neighbour"), seconds), None
    result = Flood()
    stop = anyio.Event()
    with anyio.fail_after(warmup + seconds + 30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(flood, daemon.socket(slow), result, stop)
            await anyio.sleep(warmup)  # the slow function's queues are full by now
            neighbour = await neighbour_load(daemon.socket("neighbour"), seconds)
            stop.set()
    return neighbour, result


def noisy_neighbour(seconds: float) -> None:
    print(
        f"\n1. Noisy neighbour, {seconds:g} s per row: moving_average on one connection, 1,000 "
        "points/s in\n   writes of 10 with a keepalive every 20 ms, and Info on a fresh connection "
        "every 250 ms;\n   meanwhile a slow function of the same pool (workers = 1; default "
        "handler_timeout, slow_call\n   and timeout) is flooded on a connection of its own. "
        "Last row: the same CPU burner in a pool\n   of its own ([pools.own] workers = 1)."
    )
    widths = (34, 10, 10, 12, 12, 11, 7, 10)
    table(
        (
            "scenario",
            "ka p50 ms",
            "ka p99 ms",
            "Info med ms",
            "Info max ms",
            "silence ms",
            "beats",
            "slow pt/s",
        ),
        widths,
    )
    cases = [
        ("alone (baseline)", None),
        ("+ time.sleep(2 ms) per point", "sleepy"),
        ("+ 5 ms pure-Python CPU", "burning"),
        ("+ async def with time.sleep", "async_sleepy"),
        ("+ 5 ms CPU, in its own pool", "burning_own"),
    ]
    for label, slow in cases:
        try:
            with Daemon(NEIGHBOUR_CONFIG, "n", f"noisy neighbour, {label}", FLOOD_CUT) as daemon:
                daemon.wait_for("ready:")
                nb, fl = anyio.run(noisy_case, daemon, slow, 0.5, seconds)
        except Exception as exc:  # a failed case is a note, not the end of the run
            note(f"noisy neighbour, {label}: {describe(exc)}")
            print(f"{label:<{widths[0]}}  failed (see notes)")
            continue
        if nb.received != nb.sent:
            note(
                f"noisy neighbour, {label}: neighbour sent {nb.sent} points, "
                f"{nb.received} came back"
            )
        info = (
            f"{statistics.median(nb.info_ms):>{widths[3]}.2f}{max(nb.info_ms):>{widths[4]}.2f}"
            if nb.info_ms
            else f"{'-':>{widths[3]}}{'-':>{widths[4]}}"
        )
        slow_cols = (
            f"{fl.max_gap_s * 1000:>{widths[5]}.0f}{fl.heartbeats:>{widths[6]}}"
            f"{fl.points / fl.window_s:>{widths[7]},.0f}"
            if fl is not None and fl.window_s
            else f"{'-':>{widths[5]}}{'-':>{widths[6]}}{'-':>{widths[7]}}"
        )
        print(
            f"{label:<{widths[0]}}{pct(nb.keepalive_ms, 50):>{widths[1]}.2f}"
            f"{pct(nb.keepalive_ms, 99):>{widths[2]}.2f}{info}{slow_cols}"
        )
    print(
        "silence: the slow connection's longest gap between two reads that brought a whole\n"
        "  response (point or heartbeat), from its InitResponse to the end of the row, timed by a\n"
        "  raw reader (udfd.protocol.client counts unsolicited keepalives, does not time them);\n"
        "beats: heartbeats (unsolicited KeepaliveResponses; the flood sends no keepalives):\n"
        "  the watchdog sends one after 1 s of silence (timeout 10 s / 4, at most 1 s);\n"
        "slow pt/s: the slow function's output rate"
    )


# ---------------------------------------------------------------- 2. workers


@dataclass
class Load:
    points_per_s: float
    ka_p99_ms: float
    max_gap_ms: float


def kdrive_load(path: Path, n: int, conns: int, runs: int) -> Load:
    cmd = [str(KDRIVE), "stream" if conns == 1 else "conns", "-socket", str(path), "-n", str(n)]
    if conns > 1:
        cmd += ["-c", str(conns)]
    cmd += ["-k", "1000", "-runs", str(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}"
        ) from None
    if out.get("failed") or proc.returncode:
        note(f"{' '.join(cmd)}: failed (exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    ordered = sorted(out["runs"], key=lambda r: r["points_per_s"])
    for r in ordered:
        if r.get("points_received") != r.get("points_sent"):
            note(
                f"{' '.join(cmd)}: run {r['run']}: {r.get('points_received')} of "
                f"{r.get('points_sent')} points came back"
            )
    median = ordered[len(ordered) // 2]
    return Load(
        median["points_per_s"], median["keepalive"]["p99_us"] / 1000, median["max_response_gap_ms"]
    )


async def python_load(path: Path, n: int, conns: int) -> Load:
    """The fallback driver: udfd.protocol.client, a keepalive after every 1,000 points."""
    frames = point_frames(n)
    chunks = [b"".join(frames[i : i + 1000]) for i in range(0, n, 1000)]
    keepalive_ms: list[float] = []
    received = 0

    async def one() -> None:
        nonlocal received
        async with connect(path, reply_timeout=60) as client:
            await client.info()
            await client.init()
            for chunk in chunks:
                await client.send_raw(chunk)
                await client.send_keepalive()
            received += len(await client.finish())
            keepalive_ms.extend(s * 1000 for s in client.keepalive_stats.samples)

    start = time.perf_counter()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for _ in range(conns):
                tg.start_soon(one)
    seconds = time.perf_counter() - start
    if received != n * conns:
        note(f"python driver on {path.name}: {received} of {n * conns} points came back")
    return Load(received / seconds, pct(keepalive_ms, 99), float("nan"))


def workers_table(n: int, runs: int, driver: str) -> None:
    desc = (
        f"kdrive ({KDRIVE}),\n   median of {runs} run(s)"
        if driver == "kdrive"
        else "the Python client (udfd.protocol.client), one run"
    )
    print(
        f"\n2. Workers: the mirror (benchmarks/isolation_handlers.py:Mirror), each connection "
        f"streaming\n   {n:,} points, a keepalive every 1,000; driver: {desc}"
    )
    widths = (8, 6, 12, 11, 11)
    table(("workers", "conns", "points/s", "ka p99 ms", "gap ms"), widths)
    for workers in (1, 2):
        config = f'workers = {workers}\n[functions.mirror]\nhandler = "{HANDLERS}:Mirror"\n'
        try:
            with Daemon(config, "w", f"workers = {workers}") as daemon:
                daemon.wait_for("ready:")
                for conns in (1, 4):
                    path = daemon.socket("mirror")
                    if driver == "kdrive":
                        load = kdrive_load(path, n, conns, runs)
                    else:
                        load = anyio.run(python_load, path, n, conns)
                    gap = "-" if math.isnan(load.max_gap_ms) else f"{load.max_gap_ms:.1f}"
                    print(
                        f"{workers:<{widths[0]}}{conns:>{widths[1]}}"
                        f"{load.points_per_s:>{widths[2]},.0f}{load.ka_p99_ms:>{widths[3]}.2f}"
                        f"{gap:>{widths[4]}}"
                    )
        except Exception as exc:  # a failed case is a note, not the end of the run
            note(f"workers = {workers}: {describe(exc)}")
            print(f"{workers:<{widths[0]}}  failed (see notes)")
    print(
        "points/s: all connections together; ka p99: every connection's keepalives;\n"
        "gap: the longest silence between two responses on any connection (kdrive only)"
    )


# ---------------------------------------------------------------- 3. idle memory


def memory_config(workers: int) -> str:
    lines = [f"workers = {workers}"]
    for i in range(20):
        handler = FIRST_PARTY[i % len(FIRST_PARTY)]
        lines.append(f'[functions.f{i:02}]\nhandler = "{handler}"')
    return "\n".join(lines) + "\n"


@dataclass
class Footprint:
    rows: list[tuple[str, int, int, int]]  # role, pid, rss KiB, pss KiB

    @property
    def rss(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def pss(self) -> int:
        return sum(r[3] for r in self.rows)


def footprint(daemon: Daemon) -> Footprint:
    roles = daemon.roles()
    rows = [("supervisor", daemon.proc.pid, *memory_kib(daemon.proc.pid))]
    for pid in descendants(daemon.proc.pid):
        stat = _stat(pid)
        child = stat is not None and stat[0] == daemon.proc.pid
        role = roles.get(pid, "spawner" if child else "other")
        rows.append((role, pid, *memory_kib(pid)))
    return Footprint(rows)


def memory_table(settle: float) -> None:
    print(
        "\n3. Idle memory: 20 functions (the 5 first-party handlers, 4 times each), "
        f'{settle:g} s after\n   "ready:"; the supervisor and every descendant (ppid in '
        "/proc/*/stat), RSS and PSS\n   from /proc/PID/smaps_rollup, MiB"
    )
    widths = (8, 6, 9, 9)
    print(f"{'workers':<8}{'procs':>6}{'RSS':>9}{'PSS':>9}   per process: RSS (PSS)")
    results: dict[int, Footprint] = {}
    for workers in (1, 2, 3):
        try:
            with Daemon(memory_config(workers), "m", f"idle memory, workers = {workers}") as daemon:
                daemon.wait_for("ready:")
                time.sleep(settle)
                fp = footprint(daemon)
        except Exception as exc:  # a failed case is a note, not the end of the run
            note(f"idle memory, workers = {workers}: {describe(exc)}")
            print(f"{workers:<{widths[0]}}  failed (see notes)")
            continue
        results[workers] = fp
        per = ", ".join(
            f"{role} {rss / 1024:.1f} ({pss / 1024:.1f})" for role, _, rss, pss in fp.rows
        )
        print(
            f"{workers:<{widths[0]}}{len(fp.rows):>{widths[1]}}{fp.rss / 1024:>{widths[2]}.1f}"
            f"{fp.pss / 1024:>{widths[3]}.1f}   {per}"
        )
    for w in (2, 3):
        if w in results and w - 1 in results:
            d_pss = (results[w].pss - results[w - 1].pss) / 1024
            d_rss = (results[w].rss - results[w - 1].rss) / 1024
            print(
                f"worker {w} (workers {w - 1} -> {w}): PSS {d_pss:+.1f} MiB, RSS {d_rss:+.1f} MiB"
            )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="shorter windows, 20k points, 1 run")
    parser.add_argument(
        "--driver", choices=("auto", "kdrive", "python"), default="auto", help="table 2's load"
    )
    args = parser.parse_args()
    driver = args.driver
    if driver == "auto":
        driver = "kdrive" if os.access(KDRIVE, os.X_OK) else "python"
    window, n, runs, settle = (1.5, 20_000, 1, 0.5) if args.short else (6.0, 200_000, 3, 1.0)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"udfd {udfd.__version__}; {os.cpu_count()} cores; python {sys.version.split()[0]}; "
        f"load average before the run: {load}"
    )
    start = time.perf_counter()
    noisy_neighbour(window)
    workers_table(n, runs, driver)
    memory_table(settle)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if NOTES:
        print("notes:")
        for text in NOTES:
            print(f"- {text}")


if __name__ == "__main__":
    main()
