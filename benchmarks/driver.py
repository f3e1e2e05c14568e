"""Kapacitor's side of a UDF connection, written to cost the server as little as possible.

Shared by the benchmarks. Requests are encoded before the clock starts and sent in
large writes, a keepalive every K points, while a concurrent reader walks the
length prefixes of what comes back (slicing every frame out would make the
driver, not the server, the bottleneck), counts points and times each
keepalive's round trip and the longest silence between two reads, which is what
Kapacitor's keepalive timeout judges.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from udfd.protocol import wire
from udfd.protocol.framing import FrameDecoder
from udfd.protocol.proto import udf_pb2 as pb

BASE_TIME = 1_700_000_000_000_000_000
#: first byte of a Response frame's body, by kind (field tag, wire type 2)
_POINT, _KEEPALIVE, _ERROR = 0x8A, 0x1A, 0x32

OptionValue = bool | int | float | str


@dataclass
class Run:
    points_in: int = 0
    points_out: int = 0
    seconds: float = 0.0
    keepalive_ms: list[float] = field(default_factory=list)
    max_gap_ms: float = 0.0
    error: str = ""
    #: percentiles reported by another driver (kdrive), which gives no samples
    reported_ms: dict[int, float] = field(default_factory=dict)

    def keepalive_pct(self, q: int) -> float:
        if q in self.reported_ms:
            return self.reported_ms[q]
        return pct(self.keepalive_ms, q)

    @property
    def rate(self) -> float:
        """Input points per second: what the handler kept up with, whatever it emits."""
        return self.points_in / self.seconds if self.seconds else 0.0


def cpu_point(i: int, value: float | None = None) -> pb.Point:
    """The i-th point of a typical telegraf ``cpu`` series (~70 bytes on the wire)."""
    return pb.Point(
        time=BASE_TIME + i * 1_000_000_000,
        name="cpu",
        database="telegraf",
        retentionPolicy="autogen",
        tags={"host": "server"},
        fieldsDouble={"value": 0.5 + i if value is None else value},
    )


def stream_frames(n: int) -> list[bytes]:
    return [wire.point_request_frame(cpu_point(i)) for i in range(n)]


def batch_frames(n: int, size: int) -> list[bytes]:
    """``n`` points in batches of ``size``, framed as Kapacitor frames a batch query."""
    frames: list[bytes] = []
    for start in range(0, n, size):
        count = min(size, n - start)
        begin = pb.BeginBatch(name="cpu", group="", tags={"host": "server"}, size=count)
        frames.append(wire.request_frame(pb.Request(begin=begin)))
        frames.extend(wire.point_request_frame(cpu_point(i)) for i in range(start, start + count))
        last = BASE_TIME + (start + count - 1) * 1_000_000_000
        end = pb.EndBatch(name="cpu", group="", tags={"host": "server"}, tmax=last)
        frames.append(wire.request_frame(pb.Request(end=end)))
    return frames


def init_request(options: Mapping[str, OptionValue | Sequence[OptionValue]]) -> pb.Request:
    """An InitRequest typed as Kapacitor types TICKscript literals (a sequence: one option
    with several values, as ``.range('value', 0.0, 1.0)``)."""
    init = pb.InitRequest(taskID="bench", nodeID="udf1")
    for name, raw in options.items():
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        option = init.options.add(name=name)
        for value in values:
            if isinstance(value, bool):
                option.values.add(type=pb.BOOL, boolValue=value)
            elif isinstance(value, int):
                option.values.add(type=pb.INT, intValue=value)
            elif isinstance(value, float):
                option.values.add(type=pb.DOUBLE, doubleValue=value)
            else:
                option.values.add(type=pb.STRING, stringValue=value)
    return pb.Request(init=init)


async def drive(
    path: Path,
    frames: list[bytes],
    every: int,
    options: Mapping[str, OptionValue | Sequence[OptionValue]] | None = None,
    *,
    check_init: bool = True,
) -> Run:
    """One connection: Info, Init, the frames with a keepalive every ``every`` data frames,
    then a half-close and reading to the end, as Kapacitor does. ``check_init=False``
    for a peer that is not a UDF (the raw echo floor)."""
    run = Run(points_in=sum(1 for f in frames if f[1:3] == b"\x8a\x01"))
    stream = await anyio.connect_unix(path)
    decoder = FrameDecoder()
    async with stream:
        await stream.send(
            wire.request_frame(pb.Request(info=pb.InfoRequest()))
            + wire.request_frame(init_request(options or {}))
        )
        while True:  # up to the InitResponse
            responses = [pb.Response.FromString(f) for f in decoder.feed(await stream.receive())]
            init = next((r.init for r in responses if r.HasField("init")), None)
            if init is not None:
                break
        if check_init and not init.success:
            raise SystemExit(f"{path.name}: Init refused: {init.error}")
        chunks = [b"".join(frames[i : i + every]) for i in range(0, len(frames), every)]

        async def send() -> None:
            try:
                for chunk in chunks:
                    ka = wire.request_frame(
                        pb.Request(keepalive=pb.KeepaliveRequest(time=time.perf_counter_ns()))
                    )
                    await stream.send(chunk + ka)
                await stream.send_eof()
            except (anyio.BrokenResourceError, OSError):
                pass  # the server ended the connection: receive() says why

        async def receive() -> None:
            count = 0
            latencies = run.keepalive_ms
            buf = b""
            last = time.perf_counter_ns()
            gap = 0
            while True:
                try:
                    data = await stream.receive(256 * 1024)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                now = time.perf_counter_ns()
                gap = max(gap, now - last)
                last = now
                buf = buf + data if buf else data
                pos, end = 0, len(buf)
                while pos < end:
                    size = buf[pos]
                    start = pos + 1
                    if size >= 0x80:  # rare: a response of 128 bytes or more
                        size &= 0x7F
                        shift = 7
                        while start < end and buf[start] >= 0x80:
                            size |= (buf[start] & 0x7F) << shift
                            start += 1
                            shift += 7
                        if start >= end:
                            break
                        size |= buf[start] << shift
                        start += 1
                    stop = start + size
                    if stop > end:
                        break
                    first = buf[start]
                    if first == _POINT:
                        count += 1
                    elif first == _KEEPALIVE:
                        sent = pb.Response.FromString(buf[start:stop]).keepalive.time
                        if sent:  # 0: a heartbeat udfd sent unasked
                            latencies.append((now - sent) / 1e6)
                    elif first == _ERROR:
                        run.error = pb.Response.FromString(buf[start:stop]).error.error
                    pos = stop
                buf = buf[pos:]
            run.points_out = count
            run.max_gap_ms = gap / 1e6

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            tg.start_soon(send)
        run.seconds = time.perf_counter() - start
    return run


async def drive_many(
    path: Path,
    frames: list[bytes],
    every: int,
    conns: int,
    options: Mapping[str, OptionValue | Sequence[OptionValue]] | None = None,
    *,
    check_init: bool = True,
) -> Run:
    """``conns`` concurrent connections sharing ``frames``; the totals of all of them."""
    share = len(frames) // conns
    runs: list[Run] = []

    async def one(i: int) -> None:
        runs.append(
            await drive(
                path, frames[i * share : (i + 1) * share], every, options, check_init=check_init
            )
        )

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(conns):
            tg.start_soon(one, i)
    total = Run(seconds=time.perf_counter() - start)
    for r in runs:
        total.points_in += r.points_in
        total.points_out += r.points_out
        total.keepalive_ms.extend(r.keepalive_ms)
        total.max_gap_ms = max(total.max_gap_ms, r.max_gap_ms)
        total.error = total.error or r.error
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
