"""Servers the benchmarks measure, each run in its own process.

    python benchmarks/servers.py udfd SOCKET [--threaded] [--uvloop]
    python benchmarks/servers.py raw SOCKET [--uvloop]

``udfd`` serves a trivial mirror handler through the real engine. ``raw`` is the
floor: it echoes every byte back and parses nothing. A Request holding a point
and a Response holding a point have identical bytes (field 17 in both), and so
do keepalive request and response (field 3), so the echo is a valid peer for the
driver and measures what the socket, the event loop and the driver cost alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import anyio
import anyio.abc

import udfd
from udfd.engine.limits import Limits
from udfd.handler import inspect_handler
from udfd.serve.site import Site


class Mirror(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        return point


class ThreadedMirror(Mirror):
    threaded = True


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve_udfd(path: Path, threaded: bool) -> None:
    # UDFD_BENCH_LIMITS="read_size=65536,queue_chunks=2" tries other engine limits
    tweaks = dict(
        kv.split("=") for kv in filter(None, os.environ.get("UDFD_BENCH_LIMITS", "").split(","))
    )
    limits = Limits(**{k: int(v) for k, v in tweaks.items()})
    site = Site(
        "mirror", path, inspect_handler(ThreadedMirror if threaded else Mirror), limits=limits
    )
    site.bind()
    async with anyio.create_task_group() as tg:
        await tg.start(site.serve)
        print("ready", flush=True)
        await _until_signal()
        site.stop_accepting()
        tg.cancel_scope.cancel()


async def serve_raw(path: Path) -> None:
    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    await stream.send(await stream.receive(256 * 1024))
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    listener = await anyio.create_unix_listener(path)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        print("ready", flush=True)
        await _until_signal()
        tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["udfd", "raw"])
    parser.add_argument("socket", type=Path)
    parser.add_argument("--threaded", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--switch-interval", type=float, default=None)
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.socket.exists():
        os.unlink(args.socket)
    coro = serve_udfd(args.socket, args.threaded) if args.kind == "udfd" else serve_raw(args.socket)
    anyio.run(lambda: coro, backend_options={"use_uvloop": args.uvloop})


if __name__ == "__main__":
    main()
