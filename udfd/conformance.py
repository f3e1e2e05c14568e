"""A handler's conformance with what Kapacitor expects, checked in one call.

``check_conformance(Handler, options, points=...)`` serves the handler on a real
socket through udfd's engine and plays Kapacitor against it, several times:

* **info**: the Info served over the socket declares the handler's edges and
  options exactly as its class does (what Kapacitor checks a TICKscript against);
* **bad_options**: Init with a wrong-typed value for each declared option, and with
  an unknown option, fails (``success=false``) with an error naming the option;
* **snapshot**: the data in two halves, with a Snapshot after the first and a
  Restore of it on a fresh connection before the second, gives the same output
  as one uninterrupted run (state survives a task restart);
* **framing**: the output edge is the declared one: only points from a stream
  handler, whole ``BeginBatch``/points/``EndBatch`` batches from a batch one;
* **identity**: stream output keeps the measurement, group and dimensions of an
  input point (Kapacitor regroups by them; losing them loses the group);
* **keepalive**: keepalives sent while the handler works through the data (the
  data repeated up to ``busy_points``) are answered within ``keepalive_bound``.

Each check can be turned off for a handler that differs on purpose (a handler
that renames measurements: ``identity=False``). The report lists every check;
:func:`assert_conformant` raises one ``AssertionError`` naming every failure.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from udfd.handler import Edge, HandlerSpec, inspect_handler
from udfd.protocol.client import UdfError, connect, init_options
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import run_task, serve_handler

__all__ = ["CHECKS", "ConformanceReport", "assert_conformant", "check_conformance"]

CHECKS = ("info", "bad_options", "snapshot", "framing", "identity", "keepalive")
Batch = tuple[pb.BeginBatch, list[pb.Point], pb.EndBatch]
Message = pb.Point | pb.BeginBatch | pb.EndBatch

#: a value of another type for each declared type (what a TICKscript typo sends)
_WRONG: dict[int, pb.OptionValue] = {
    pb.BOOL: pb.OptionValue(type=pb.STRING, stringValue="not a bool"),
    pb.INT: pb.OptionValue(type=pb.STRING, stringValue="not an int"),
    pb.DOUBLE: pb.OptionValue(type=pb.STRING, stringValue="not a float"),
    pb.STRING: pb.OptionValue(type=pb.BOOL, boolValue=True),
    pb.DURATION: pb.OptionValue(type=pb.STRING, stringValue="not a duration"),
}
UNKNOWN_OPTION = "udfd_conformance_no_such_option"


@dataclass
class Result:
    check: str
    ok: bool
    detail: str = ""


@dataclass
class ConformanceReport:
    handler: str
    results: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def __str__(self) -> str:
        lines = [f"conformance of {self.handler}:"]
        for r in self.results:
            lines.append(
                f"  {'ok  ' if r.ok else 'FAIL'} {r.check}" + (f": {r.detail}" if r.detail else "")
            )
        return "\n".join(lines)


async def _run(
    path: Any,
    options: list[pb.Option],
    data: Sequence[pb.Point] | Sequence[Batch],
    *,
    restore: bytes | None = None,
    snapshot: bool = False,
) -> tuple[list[Message], bytes, list[str]]:
    """One task (``udfd.testing.run_task``) that must get through Init and Restore; the
    output before the Snapshot (close()'s output would not be in one long run), or all of
    it, the snapshot, and the errors."""
    points = [item for item in data if isinstance(item, pb.Point)]
    batches = [item for item in data if isinstance(item, tuple)]
    run = await run_task(
        path, options, points=points, batches=batches, restore=restore, snapshot=snapshot
    )
    if not run.init.success:
        raise UdfError(f"Init failed: {run.init.error}")
    if run.restore is not None and not run.restore.success:
        raise UdfError(f"Restore failed: {run.restore.error}")
    if snapshot and run.before_snapshot is None:
        if not run.errors:
            raise UdfError("the connection ended before the Snapshot was answered")
        return run.output, b"", run.errors
    output = run.output if run.before_snapshot is None else run.output[: run.before_snapshot]
    return output, run.snapshot, run.errors


async def _send(client: Any, data: Sequence[pb.Point] | Sequence[Batch]) -> None:
    for item in data:
        if isinstance(item, tuple):
            await client.send_batch(*item)
        else:
            await client.send_point(item)


def _same(a: Sequence[Message], b: Sequence[Message]) -> bool:
    return [m.SerializeToString(deterministic=True) for m in a] == [
        m.SerializeToString(deterministic=True) for m in b
    ]


async def check_conformance(
    handler: type[Any] | HandlerSpec,
    options: Mapping[str, Any] | Iterable[pb.Option] = (),
    *,
    points: Sequence[pb.Point] = (),
    batches: Sequence[Batch] = (),
    checks: Iterable[str] = CHECKS,
    identity: bool = True,
    busy_points: int = 20_000,
    keepalive_bound: float = 2.0,
    **serve: Any,
) -> ConformanceReport:
    """Run the checks (all by default) and report each; never raises for a failed check.

    ``points`` (stream handlers) or ``batches`` (batch handlers) are the sample data:
    realistic input for ``options``. ``serve`` goes to :func:`udfd.testing.serve_handler`
    (``defaults``, ``error_policy``, ``limits``).
    """
    spec = handler if isinstance(handler, HandlerSpec) else inspect_handler(handler)
    wanted = set(checks)
    if not identity:
        wanted.discard("identity")
    unknown = wanted - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    data: Sequence[pb.Point] | Sequence[Batch] = batches if spec.wants is Edge.BATCH else points
    if not data:
        raise ValueError(
            f"{spec.name} wants {'batches' if spec.wants is Edge.BATCH else 'points'}: "
            "give sample data for it"
        )
    ctx = _Case(spec, init_options(options), data, busy_points, keepalive_bound)
    report = ConformanceReport(spec.name)
    async with serve_handler(spec, **serve) as site:
        ctx.path = site.path
        for check in CHECKS:
            if check not in wanted:
                continue
            try:
                result = await _CHECKERS[check](ctx)
            except Exception as exc:  # a check that could not run is a failed check
                result = Result(check, False, _describe(exc))
            report.results.append(result)
    return report


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Case:
    spec: HandlerSpec
    opts: list[pb.Option]
    data: Sequence[pb.Point] | Sequence[Batch]
    busy: int
    bound: float
    path: Any = None


async def _info(ctx: _Case) -> Result:
    async with connect(ctx.path) as client:
        served = await client.info()
        await client.finish()
    if served != ctx.spec.info:
        return Result("info", False, f"served Info differs from the declaration: {served}")
    return Result("info", True)


async def _bad_options(ctx: _Case) -> Result:
    problems = []
    cases: list[tuple[str, pb.Option]] = [(UNKNOWN_OPTION, pb.Option(name=UNKNOWN_OPTION))]
    for name, option in sorted(ctx.spec.options.items()):
        if option.value_types:
            wrong = [_WRONG[t] for t in option.value_types]
            cases.append((name, pb.Option(name=name, values=wrong)))
    for name, bad in cases:
        request = [o for o in ctx.opts if o.name != name] + [bad]
        async with connect(ctx.path) as client:
            await client.info()
            init = await client.init(request)
            await client.finish()
        if init.success:
            problems.append(f"Init with a wrong {name!r} succeeded")
        elif name not in init.error:
            problems.append(f"Init's error for a wrong {name!r} does not name it: {init.error!r}")
    return Result("bad_options", not problems, "; ".join(problems) or f"{len(cases)} cases")


async def _snapshot(ctx: _Case) -> Result:
    data = ctx.data
    half = max(1, len(data) // 2)
    whole, _, errors = await _run(ctx.path, ctx.opts, data)
    first, snap, first_errors = await _run(ctx.path, ctx.opts, data[:half], snapshot=True)
    # Kapacitor restores only a snapshot it has: an empty one is never sent back
    second, _, second_errors = await _run(
        ctx.path, ctx.opts, data[half:], restore=snap if snap else None
    )
    for what, found in (("uninterrupted run", errors), ("first half", first_errors),
                        ("restored second half", second_errors)):  # fmt: skip
        if found:
            return Result("snapshot", False, f"the {what} ended with an error: {found[0]}")
    if not _same(whole, first + second):
        return Result(
            "snapshot",
            False,
            f"one run gave {len(whole)} message(s); with a snapshot and restore between the "
            f"halves: {len(first)} + {len(second)}, not the same (state lost in the snapshot?)",
        )
    return Result("snapshot", True, f"{len(snap)}-byte snapshot")


async def _output(ctx: _Case, check: str) -> tuple[list[Message], Result | None]:
    """One run's output, or the failed result when it ended in an error or gave nothing
    (a check with nothing to look at has not passed: give sample data that makes output)."""
    output, _, errors = await _run(ctx.path, ctx.opts, ctx.data)
    if errors:
        return output, Result(check, False, f"the run ended with an error: {errors[0]}")
    if not any(isinstance(m, pb.Point) for m in output):
        return output, Result(check, False, "no output points to check: give sample data "
                              "that makes the handler emit some")  # fmt: skip
    return output, None


async def _framing(ctx: _Case) -> Result:
    output, failed = await _output(ctx, "framing")  # the client checks Begin/End pairing
    if failed is not None:
        return failed
    if ctx.spec.provides is Edge.STREAM:
        edges = [m for m in output if not isinstance(m, pb.Point)]
        if edges:
            return Result("framing", False, f"a stream handler sent {type(edges[0]).__name__}")
    else:
        inside = False
        for i, message in enumerate(output):
            if isinstance(message, pb.BeginBatch):
                inside = True
            elif isinstance(message, pb.EndBatch):
                inside = False
            elif not inside:
                return Result("framing", False, f"output {i} is a point outside any batch")
    return Result("framing", True, f"{len(output)} message(s)")


def _identity_key(message: pb.Point | pb.BeginBatch, with_dimensions: bool) -> tuple[Any, ...]:
    dims = tuple(message.dimensions) if with_dimensions and isinstance(message, pb.Point) else ()
    return message.name, message.group, dims


async def _identity(ctx: _Case) -> Result:
    if ctx.spec.provides is not Edge.STREAM:
        return Result("identity", True, "batch output: identity is the batch's")
    output, failed = await _output(ctx, "identity")
    if failed is not None:
        return failed
    stream_in = ctx.spec.wants is Edge.STREAM
    known = {
        _identity_key(item if isinstance(item, pb.Point) else item[0], stream_in)
        for item in ctx.data
    }
    for point in output:
        if not isinstance(point, pb.Point) or _identity_key(point, stream_in) not in known:
            return Result(
                "identity",
                False,
                f"output (name {point.name!r}, group {point.group!r}) matches no input's name, "
                "group and dimensions; derive output from the input point (udfd.derive)",
            )
    return Result("identity", True, f"{len(output)} point(s)")


async def _keepalive(ctx: _Case) -> Result:
    first = ctx.data[0]
    per_item = len(first[1]) if isinstance(first, tuple) else 1
    count = max(len(ctx.data), ctx.busy // max(1, per_item))
    copies: list[Any] = list(itertools.islice(itertools.cycle(ctx.data), count))
    async with connect(ctx.path, reply_timeout=60) as client:
        await client.info()
        init = await client.init(ctx.opts)
        if not init.success:
            raise UdfError(f"Init failed: {init.error}")
        worst, samples = 0.0, 0
        sent = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def feed() -> None:
                await _send(client, copies)  # waits while the handler's backlog is full
                sent.set()

            tg.start_soon(feed)
            while not sent.is_set():
                worst = max(worst, await client.keepalive())
                samples += 1
                await anyio.sleep(0.02)
        worst = max(worst, await client.keepalive())  # the backlog is still being worked on
        await client.finish()
    detail = f"worst of {samples + 1} answers {worst * 1000:.0f} ms while busy"
    return Result("keepalive", worst <= ctx.bound, f"{detail} (bound {ctx.bound:g}s)")


_CHECKERS = {
    "info": _info,
    "bad_options": _bad_options,
    "snapshot": _snapshot,
    "framing": _framing,
    "identity": _identity,
    "keepalive": _keepalive,
}


def assert_conformant(report: ConformanceReport) -> None:
    """Raise one AssertionError naming every failed check (explicit, so ``-O`` keeps it)."""
    if not report.ok:
        raise AssertionError(str(report))
