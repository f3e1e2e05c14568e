"""``udfd run HANDLER [FILE]``: one handler on line protocol, through the real engine.

The handler is served in this process on a fresh unix socket, by the same engine
the daemon runs (``udfd.testing.serve_handler``), and driven over that socket as
Kapacitor drives a task: Info, Init with the ``--opt`` options, the data, then the
half-close. ``--socket PATH`` drives a running daemon's function instead. Output
goes to stdout as it arrives; progress (on a terminal) and a summary go to stderr.

Exit codes: 0 done; 1 the handler ended the task (an ErrorResponse) or broke the
protocol; 2 bad arguments, options Init refused, or bad input; 3 a handler that
does not load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

import anyio

from udfd.history.lineprotocol import PRECISIONS, LineProtocolError
from udfd.protocol.client import UdfClient, UdfError, connect
from udfd.protocol.proto import udf_pb2 as pb
from udfd.run.feed import Feed
from udfd.run.options import OptionSyntaxError, duration_ns, parse_opt
from udfd.run.output import FORMATS, OutputWriter

__all__ = ["add_run_parser", "cmd_run"]

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_LOAD = 0, 1, 2, 3
#: how often the output is written out and progress refreshed
TICK = 0.05


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run a handler on line protocol (a file or stdin), as Kapacitor would feed it",
        description=(
            "Serves HANDLER (an entry-point name, package.module:Class or file.py:Class) on a "
            "fresh socket through udfd's engine and feeds it the line protocol in FILE (or "
            "stdin) as a stream, or as batches cut by --batch-size or --window per group. "
            "Options are typed as a TICKscript types literals: --opt size=10 (int), "
            "--opt scale=1.5 (float), --opt window=5m (duration), --opt name='x' or a bare "
            "word (string), TRUE/FALSE (bool); int:, float:, bool:, str:, dur: force a type. "
            "With --socket, drive a running daemon's function instead (no HANDLER)."
        ),
    )
    run.add_argument("args", nargs="*", metavar="HANDLER [FILE]")
    run.add_argument("--opt", "-o", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--socket", type=Path, metavar="PATH", help="a running function's socket")
    run.add_argument("--group-by", default="", metavar="TAG,...", help="group points by tags")
    edges = run.add_mutually_exclusive_group()
    edges.add_argument("--batch-size", type=int, metavar="N", help="batches of N points")
    edges.add_argument("--window", metavar="DURATION", help="batches per aligned time window")
    run.add_argument("--format", "-f", choices=FORMATS, default="lp", help="output (default lp)")
    run.add_argument("--precision", choices=sorted(PRECISIONS), default="ns")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress or summary")
    run.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the handler's answers"
    )


def _fail(message: str, code: int) -> int:
    print(f"udfd run: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from udfd import logs

    positional = list(args.args)
    if args.socket is None and not positional:
        return _fail("give a HANDLER, or --socket PATH of a running function", EXIT_USAGE)
    handler_ref = None if args.socket is not None else positional.pop(0)
    if len(positional) > 1:
        return _fail(f"unexpected arguments: {' '.join(positional[1:])}", EXIT_USAGE)
    source = positional[0] if positional else "-"
    try:
        options = [parse_opt(text) for text in args.opt]
    except OptionSyntaxError as exc:
        return _fail(str(exc), EXIT_USAGE)
    feed = Feed(
        group_by=tuple(t.strip() for t in args.group_by.split(",") if t.strip()),
        batch_size=args.batch_size,
        precision=args.precision,
    )
    if args.batch_size is not None and args.batch_size < 1:
        return _fail("--batch-size must be at least 1", EXIT_USAGE)
    if args.window is not None:
        try:
            feed.window_ns = duration_ns(args.window)
        except ValueError as exc:
            return _fail(f"--window: {exc}", EXIT_USAGE)
        if feed.window_ns <= 0:
            return _fail("--window must be longer than 0", EXIT_USAGE)
    logs.configure("error")  # the handler's errors on stderr; Init's answer is printed anyway
    spec = None
    if handler_ref is not None:
        from udfd.plugins.loader import PluginError, load_handler

        name = handler_ref.rsplit(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".py")
        try:
            spec, _ = load_handler(handler_ref, function=name or "udf")
        except PluginError as exc:
            return _fail(f"cannot load handler {handler_ref!r}: {exc}", EXIT_LOAD)
    try:
        lines = _open_input(source)
    except OSError as exc:
        return _fail(f"cannot read {source}: {exc.strerror or exc}", EXIT_USAGE)
    with lines as stream:
        runner = _Run(args, options, feed, stream, source)
        code = anyio.run(runner.main, spec)
    if runner.writer.broken:  # `| head`: not an error; keep the exit-time flush quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return code


def _open_input(source: str) -> contextlib.AbstractContextManager[TextIO]:
    """Opened now (so a missing file is reported before anything runs), closed by ``with``."""
    if source == "-":
        return contextlib.nullcontext(sys.stdin)
    return open(source, encoding="utf-8")


def _is_regular(stream: TextIO) -> bool:
    """A file (also ``< file``): read at full speed. Otherwise (a pipe, a terminal) lines
    are read off the event loop and sent one by one, so output follows input."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):
        return False


class _Run:
    def __init__(
        self,
        args: argparse.Namespace,
        options: list[pb.Option],
        feed: Feed,
        lines: TextIO,
        source: str,
    ) -> None:
        self.args = args
        self.options = options
        self.feed = feed
        self.lines = lines
        self.where = "stdin" if source == "-" else source
        self.writer = OutputWriter(sys.stdout, args.format)
        self.started = time.monotonic()
        self.progress = sys.stderr.isatty() and not args.quiet

    async def main(self, spec: Any) -> int:
        async with self._served(spec) as path:
            try:
                return await self._drive(path)
            except UdfError as exc:
                return _fail(str(exc), EXIT_TASK_FAILED)
            except OSError as exc:  # connecting: a --socket nobody serves, say
                return _fail(f"cannot connect to {path}: {exc.strerror or exc}", EXIT_USAGE)

    @contextlib.asynccontextmanager
    async def _served(self, spec: Any) -> AsyncIterator[Path]:
        if spec is None:
            yield self.args.socket
            return
        from udfd.testing import serve_handler

        async with serve_handler(spec) as site:
            yield site.path

    async def _drive(self, path: Path) -> int:
        async with connect(path, reply_timeout=self.args.timeout) as client:
            info = await client.info()
            wants_batch = info.wants == pb.BATCH
            if wants_batch and not self.feed.batched:
                return _fail(
                    "the handler wants batches: give --batch-size N or --window DURATION",
                    EXIT_USAGE,
                )
            if not wants_batch and self.feed.batched:
                return _fail("the handler wants a stream: drop --batch-size/--window", EXIT_USAGE)
            init = await client.init(self.options, task_id="udfd-run", node_id="udf1")
            if not init.success:
                await client.finish()
                return _fail(f"Init failed: {init.error}", EXIT_USAGE)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._print, client)
                await self._send(client)
                await client.finish()
                tg.cancel_scope.cancel()
            self._flush(client)
            self.writer.close()
            self._summary(client)
            if self.feed.error is not None:
                return _fail(self.feed.error, EXIT_USAGE)
            if client.errors:
                return _fail(f"the handler ended the task: {client.errors[0]}", EXIT_TASK_FAILED)
            return EXIT_OK

    def _lines(self) -> Iterator[str]:
        """The input, until stdout's reader has gone (nobody reads the rest of the output)."""
        for line in self.lines:
            if self.writer.broken:
                return
            yield line

    async def _send(self, client: UdfClient) -> None:
        try:
            if not _is_regular(self.lines):
                await self._send_as_read(client)
            elif self.feed.batched:
                for begin, points, end in self.feed.batches(self._lines(), self.where):
                    await client.send_batch(begin, points, end)
            else:
                await client.send_points(self.feed.points(self._lines(), self.where))
        except (anyio.BrokenResourceError, OSError):
            pass  # the handler ended the connection; its ErrorResponse says why

    async def _send_as_read(self, client: UdfClient) -> None:
        """A pipe or a terminal: each line as it comes (read in a thread, so the handler's
        output is written meanwhile)."""
        batcher = self.feed.batcher() if self.feed.batched else None
        number = 0
        while not self.writer.broken:
            line = await anyio.to_thread.run_sync(self.lines.readline, abandon_on_cancel=True)
            if not line:
                break
            number += 1
            try:
                point = self.feed.parse(line, number, self.where)
            except LineProtocolError as exc:
                self.feed.error = str(exc)
                break
            if point is None:
                continue
            if batcher is None:
                await client.send_point(point)
            else:
                for begin, points, end in batcher.add(point):
                    await client.send_batch(begin, points, end)
        if batcher is not None:
            for begin, points, end in batcher.flush():
                await client.send_batch(begin, points, end)

    def _flush(self, client: UdfClient) -> None:
        output, client.output = client.output, []
        self.writer.write(output)

    async def _print(self, client: UdfClient) -> None:
        shown = 0.0
        while True:
            self._flush(client)
            now = time.monotonic()
            if self.progress and now - shown >= 1.0:
                shown = now
                print(f"\r{self._counts(client)}", end="", file=sys.stderr, flush=True)
            await anyio.sleep(TICK)

    def _counts(self, client: UdfClient) -> str:
        elapsed = time.monotonic() - self.started
        text = f"{self.feed.points_read:,} point(s) in, {self.writer.points:,} out"
        if self.writer.batches:
            text += f" ({self.writer.batches:,} batch(es))"
        return text + f", {elapsed:.1f}s"

    def _summary(self, client: UdfClient) -> None:
        if self.args.quiet:
            return
        end = "\r" if self.progress else ""
        print(f"{end}udfd run: {self._counts(client)}", file=sys.stderr)
