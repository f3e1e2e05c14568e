"""Handlers written for the official Kapacitor Python agent, served unchanged by udfd.

The handler files under ``tests/legacy_handlers/`` are written in the official
agent's style (``kapacitor.udf.agent``, ``udf_pb2.Response``,
``self._agent.write_response``). Each test loads one by file path, serves it on
a real unix socket and drives it with udfd's Kapacitor-side client.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread
import pytest

import udfd
from udfd.errors import HandlerDefinitionError, TaskError
from udfd.handler import Context, inspect_handler
from udfd.plugins.compat import (
    install_kapacitor_shim,
    real_kapacitor_available,
    shim_installed,
    uninstall_kapacitor_shim,
)
from udfd.plugins.compat.kapacitor_agent import StandaloneAgentError
from udfd.plugins.legacy import (
    LegacyAdapter,
    LegacyHandlerError,
    is_legacy_handler_class,
    legacy_handler,
    legacy_info,
    load_legacy,
    load_legacy_file,
)
from udfd.protocol import wire
from udfd.protocol.client import connect
from udfd.protocol.framing import FrameDecoder
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

HANDLERS = Path(__file__).parent / "legacy_handlers"
PROTO = Path(udfd.__file__).parent / "protocol" / "proto" / "udf.proto"


def load(file: str, class_name: str) -> type[LegacyAdapter]:
    return load_legacy(HANDLERS / file, class_name)


def module_of(adapter: type[LegacyAdapter]) -> ModuleType:
    """The module the legacy file was loaded as (to reach its events)."""
    return sys.modules[adapter.legacy_class.__module__]


def point(name: str, time: int, value: float, group: str = "", **tags: str) -> pb.Point:
    p = udfd.make_point(name, time, {"value": value}, tags, group=group)
    p.dimensions.extend(sorted(tags))
    return p


def warnings_in(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def forget_handler_files() -> None:
    """Drop the imported modules of ``legacy_handlers/`` files (each is imported once per
    path), for tests that need them imported again against another ``kapacitor.udf``."""
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").parent == HANDLERS:
            del sys.modules[name]


# ---------------------------------------------------------------- the shim


def test_shim_exposes_the_official_names() -> None:
    assert install_kapacitor_shim() is True
    assert shim_installed()
    agent_module = importlib.import_module("kapacitor.udf.agent")
    udf_pb2 = importlib.import_module("kapacitor.udf.udf_pb2")
    for name in ("Agent", "Handler", "Server"):
        assert isinstance(getattr(agent_module, name), type)
    for name in ("Request", "InfoResponse", "InitRequest", "InitResponse", "Option",
                 "OptionInfo", "OptionValue", "SnapshotRequest", "RestoreRequest",
                 "RestoreResponse", "KeepaliveRequest", "KeepaliveResponse", "ErrorResponse",
                 "BeginBatch", "Point", "EndBatch", "EdgeType", "ValueType"):  # fmt: skip
        assert getattr(udf_pb2, name) is getattr(pb, name), name
    for name in ("STREAM", "BATCH", "BOOL", "INT", "DOUBLE", "STRING", "DURATION"):
        assert getattr(udf_pb2, name) == getattr(pb, name), name
    # the tolerant Response stands for the real class
    assert isinstance(pb.Response(), udf_pb2.Response)
    assert udf_pb2.Response.DESCRIPTOR is pb.Response.DESCRIPTOR
    response = udf_pb2.Response()
    response.point.CopyFrom(pb.Point(name="m"))
    assert pb.Response.FromString(response.SerializeToString()).point.name == "m"


def test_the_names_are_the_real_classes_except_inside_a_snapshot() -> None:
    # a proxy per Response would cost more than the rest of a point's path
    from udfd.plugins.compat import kapacitor_udf_pb2 as stand_in

    assert stand_in.Response is pb.Response and stand_in.SnapshotResponse is pb.SnapshotResponse
    with pytest.raises(TypeError):
        stand_in.Response().snapshot.snapshot = "{}"  # type: ignore[assignment]
    with stand_in.tolerant_snapshots():
        response = stand_in.Response()
        with stand_in.tolerant_snapshots():  # another thread's snapshot, ending first
            pass
        response.snapshot.snapshot = "{}"  # still tolerant: one snapshot is still running
        assert stand_in.unwrap(response).snapshot.snapshot == b"{}"
        assert stand_in.notes(response) == [stand_in.SNAPSHOT_STR_NOTE]
        assert isinstance(pb.Response(), stand_in.Response)
    assert stand_in.Response is pb.Response and stand_in.SnapshotResponse is pb.SnapshotResponse


def test_standalone_agent_and_server_explain_themselves() -> None:
    install_kapacitor_shim()
    from kapacitor.udf.agent import Agent, Server

    with pytest.raises(StandaloneAgentError, match="udfd imports this UDF file"):
        Agent()
    with pytest.raises(StandaloneAgentError, match="handler = "):
        Server("/tmp/x.sock", object())


def test_main_block_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "main-ran"
    source = HANDLERS.joinpath("mirror.py").read_text()
    source += f"\nif __name__ == '__main__':\n    open({str(marker)!r}, 'w').close()\n"
    file = tmp_path / "with_marker.py"
    file.write_text(source)
    cls = load_legacy_file(file, "MirrorHandler")
    assert cls.__name__ == "MirrorHandler"
    assert is_legacy_handler_class(cls)
    assert not marker.exists()
    # the module is importable by name for pickling/dataclasses, and not as __main__
    assert sys.modules[cls.__module__].__name__ != "__main__"


def test_file_that_starts_an_agent_on_import_fails_clearly(tmp_path: Path) -> None:
    file = tmp_path / "eager.py"
    file.write_text(
        textwrap.dedent(
            """
            from kapacitor.udf.agent import Agent, Handler

            class H(Handler):
                pass

            agent = Agent()
            """
        )
    )
    with pytest.raises(HandlerDefinitionError, match=r"StandaloneAgentError.*udfd imports"):
        load_legacy_file(file, "H")


def test_missing_class_names_the_handler_classes() -> None:
    with pytest.raises(HandlerDefinitionError, match=r"no class 'Nope'.*CountHandler"):
        load_legacy_file(HANDLERS / "sloppy.py", "Nope")


def test_a_file_is_imported_once_and_may_import_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "udfd_test_neighbour.py").write_text("FIELD = 'from the neighbour'\n")
    file = tmp_path / "uses_neighbour.py"
    file.write_text(
        HANDLERS.joinpath("mirror.py").read_text()
        + "\nimport udfd_test_neighbour\nFIELD = udfd_test_neighbour.FIELD\n"
    )
    try:
        cls = load_legacy_file(file, "MirrorHandler")
        assert sys.modules[cls.__module__].FIELD == "from the neighbour"
        # appended, so the file's neighbours never shadow the standard library
        assert sys.path[-1] == str(tmp_path)
        assert load_legacy_file(file, "MirrorHandler") is cls  # the same module, not a copy
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("udfd_test_neighbour", None)


RAISING_LEGACY = """
    import sys

    from kapacitor.udf import udf_pb2
    from kapacitor.udf.agent import Handler


    class H(Handler):
        def __init__(self, agent):
            self._agent = agent
            {init}

        def info(self):
            {info}
            response = udf_pb2.Response()
            response.info.wants = udf_pb2.STREAM
            return response
"""


@pytest.mark.parametrize(
    ("where", "statement", "message"),
    [
        ("info", "sys.exit(2)", "H: info() failed: called sys.exit(2) while loading"),
        ("info", "sys.exit()", "H: info() failed: called sys.exit() while loading"),
        (
            "init",
            "raise GeneratorExit",
            "H: creating the handler with an agent failed: GeneratorExit",
        ),
    ],
)
def test_load_time_handler_code_that_exits_fails_only_this_handler(
    tmp_path: Path, where: str, statement: str, message: str
) -> None:
    code = {"init": "pass", "info": "pass", where: statement}
    file = tmp_path / f"raising_{where}.py"
    file.write_text(textwrap.dedent(RAISING_LEGACY).format(**code))
    cls = load_legacy_file(file, "H")
    with pytest.raises(HandlerDefinitionError) as info:
        legacy_info(cls)
    assert str(info.value) == message


def test_what_counts_as_a_legacy_handler_class() -> None:
    install_kapacitor_shim()
    from kapacitor.udf.agent import Handler as AgentHandler

    class Subclass(AgentHandler):  # the usual way: all callbacks inherited
        pass

    class DuckTyped:  # the official agent never required its base class
        def info(self) -> None: ...
        def init(self, init_req: object) -> None: ...
        def begin_batch(self, begin: object) -> None: ...
        def point(self, point: object) -> None: ...
        def end_batch(self, end: object) -> None: ...

    class InfoAndInit:  # unrelated code has methods with these names too
        def info(self) -> None: ...
        def init(self, request: object) -> None: ...

    assert is_legacy_handler_class(Subclass)
    assert is_legacy_handler_class(DuckTyped)
    assert not is_legacy_handler_class(InfoAndInit)
    assert not is_legacy_handler_class(DuckTyped())
    assert not is_legacy_handler_class(udfd.Handler)
    assert not is_legacy_handler_class(load("mirror.py", "MirrorHandler"))  # an adapter


def test_adapter_declaration() -> None:
    adapter = load("batch_echo.py", "SelectHandler")
    spec = inspect_handler(adapter, "select")
    assert spec.threaded
    assert adapter.raw_options
    assert spec.wants is udfd.Edge.BATCH
    assert spec.provides is udfd.Edge.BATCH
    assert dict(spec.info.options) == {
        "field": pb.OptionInfo(valueTypes=[pb.STRING]),
        "min": pb.OptionInfo(valueTypes=[pb.DOUBLE]),
    }
    with pytest.raises(HandlerDefinitionError, match=r"already a udfd\.Handler"):
        legacy_handler(adapter)


# ---------------------------------------------------------------- serving


@pytest.mark.anyio
async def test_mirror_sends_every_point_back() -> None:
    adapter = load("mirror.py", "MirrorHandler")
    sent = [point("cpu", i, float(i), host=f"h{i % 2}") for i in range(1, 6)]
    async with serve_handler(adapter, name="mirror") as site, connect(site.path) as client:
        info = await client.info()
        assert (info.wants, info.provides) == (pb.STREAM, pb.STREAM)
        assert (await client.init()).success
        await client.send_points(sent)
        assert await client.wait_output(len(sent)) == sent
        assert await client.snapshot() == b""
        assert (await client.restore(b"anything")).success
        await client.finish()
    assert client.errors == []


@pytest.mark.anyio
async def test_moving_average_survives_a_restart_through_snapshot() -> None:
    adapter = load("moving_avg.py", "AvgHandler")
    options = {"field": "value", "size": 3, "as": "avg"}
    async with serve_handler(adapter, name="avg") as site:
        async with connect(site.path) as first:
            assert (await first.init(options)).success
            await first.send_points(
                [
                    point("cpu", 1, 1.0, "a", host="a"),
                    point("cpu", 2, 10.0, "b", host="b"),
                    point("cpu", 3, 3.0, "a", host="a"),
                    point("cpu", 4, 5.0, "a", host="a"),
                ]
            )
            out = await first.wait_output(4)
            assert [p.fieldsDouble["avg"] for p in first.points] == [1.0, 10.0, 2.0, 3.0]
            # group identity is echoed, as Kapacitor needs to regroup
            assert out[1].tags == {"host": "b"} and list(out[1].dimensions) == ["host"]
            snapshot = await first.snapshot()
            await first.finish()
        assert json.loads(snapshot) == {"a": [1.0, 3.0, 5.0], "b": [10.0]}
        async with connect(site.path) as second:
            assert (await second.init(options)).success
            assert (await second.restore(snapshot)).success
            await second.send_points(
                [point("cpu", 5, 7.0, "a", host="a"), point("cpu", 6, 20.0, "b", host="b")]
            )
            await second.wait_output(2)
            assert [p.fieldsDouble["avg"] for p in second.points] == [5.0, 15.0]
            await second.finish()
        assert first.errors == second.errors == []


@pytest.mark.anyio
async def test_init_refusal_carries_the_handlers_message() -> None:
    adapter = load("moving_avg.py", "AvgHandler")
    async with serve_handler(adapter, name="avg") as site, connect(site.path) as client:
        response = await client.init({"as": "x"})
        assert not response.success
        assert response.error == "field is required; size must be at least 1"


@pytest.mark.anyio
async def test_batch_handler_frames_its_output() -> None:
    adapter = load("batch_echo.py", "SelectHandler")
    async with serve_handler(adapter, name="select") as site, connect(site.path) as client:
        assert (await client.init({"field": "value", "min": 2.0})).success
        for n, tmax in ((1, 100), (2, 200)):
            tags = {"host": f"h{n}"}
            await client.send_batch(
                pb.BeginBatch(name="cpu", group=f"g{n}", tags=tags),
                [point("", t, float(t)) for t in range(1, 5)],
                pb.EndBatch(name="cpu", group=f"g{n}", tmax=tmax, tags=tags),
            )
        out = await client.wait_output(2 * (1 + 3 + 1))
        await client.finish()
    assert client.errors == []
    first, second = out[:5], out[5:]
    for batch, n, tmax in ((first, 1, 100), (second, 2, 200)):
        begin, *points, end = batch
        assert isinstance(begin, pb.BeginBatch)
        assert (begin.name, begin.group, begin.size) == ("cpu", f"g{n}", 3)
        assert [p.time for p in points] == [2, 3, 4]
        assert isinstance(end, pb.EndBatch)
        assert (end.name, end.group, end.tmax, dict(end.tags)) == (
            "cpu",
            f"g{n}",
            tmax,
            {"host": f"h{n}"},
        )


@pytest.mark.anyio
async def test_a_reused_response_is_sent_as_it_was_when_written() -> None:
    adapter = load("reuse.py", "ReusingHandler")
    sent = [point("cpu", i, float(i)) for i in range(1, 4)]
    async with serve_handler(adapter, name="reuse") as site, connect(site.path) as client:
        assert (await client.init()).success
        await client.send_points(sent)
        out = await client.wait_output(2 * len(sent))
        await client.finish()
    assert client.errors == []
    assert [(p.name, p.time, p.fieldsDouble["copy"]) for p in out] == [  # type: ignore[union-attr]
        ("cpu", t, c) for t in (1, 2, 3) for c in (1.0, 2.0)
    ]


@pytest.mark.anyio
async def test_output_written_in_init_follows_the_init_response() -> None:
    adapter = load("reuse.py", "GreetingHandler")
    async with serve_handler(adapter, name="greet") as site:
        stream = await anyio.connect_unix(site.path)
        async with stream:
            init = pb.Request(init=pb.InitRequest(taskID="t", nodeID="n"))
            await stream.send(
                wire.request_frame(init) + wire.point_request_frame(point("cpu", 1, 1.0))
            )
            await stream.send_eof()
            decoder, kinds = FrameDecoder(), []
            while True:
                try:
                    data = await stream.receive()
                except anyio.EndOfStream:
                    break
                for frame in decoder.feed(data):
                    response = pb.Response.FromString(frame)
                    kind = response.WhichOneof("message")
                    kinds.append(response.point.name if kind == "point" else kind)
    assert kinds == ["init", "hello", "cpu"]


@pytest.mark.anyio
async def test_keepalives_are_answered_while_point_is_busy() -> None:
    adapter = load("slow.py", "SlowHandler")
    module = module_of(adapter)
    started, gate = module.STARTED, module.GATE
    async with serve_handler(adapter, name="slow") as site, connect(site.path) as client:
        try:
            assert (await client.init({"delay": 0.05})).success
            await client.send_point(point("cpu", 1, 1.0))
            assert await anyio.to_thread.run_sync(started.wait, 10)
            # point() cannot return before the gate opens, so this answer came first
            latency = await client.keepalive()
            assert client.output == []
            print(f"keepalive latency during a busy point(): {latency * 1000:.2f} ms")
        finally:
            gate.set()
        await client.wait_output(1)
        await client.finish()
    assert client.errors == []


@pytest.mark.anyio
async def test_an_exception_ends_only_its_own_connection() -> None:
    adapter = load("faulty.py", "FaultyHandler")
    async with serve_handler(adapter, name="faulty") as site:
        async with connect(site.path) as bad, connect(site.path) as good:
            assert (await bad.init()).success
            assert (await good.init()).success
            await good.send_point(point("ok", 1, 1.0))
            await good.wait_output(1)
            await bad.send_point(point("p1", 1, 1.0, action="raise"))
            error = await bad.wait_error()
            assert "ValueError: cannot handle p1" in error
            await bad.wait_closed()
            await good.send_point(point("ok", 2, 2.0))
            await good.keepalive()
            await good.wait_output(2)
            await good.finish()
        assert good.errors == []
        assert site.stats.handler_errors == 1


@pytest.mark.anyio
async def test_error_response_written_by_the_handler_ends_the_connection() -> None:
    adapter = load("faulty.py", "FaultyHandler")
    async with serve_handler(adapter, name="faulty") as site, connect(site.path) as client:
        assert (await client.init()).success
        await client.send_points([point("p0", 1, 1.0), point("p1", 2, 1.0, action="report")])
        error = await client.wait_error()
        await client.wait_closed()
    assert "bad point p1" in error
    # what the handler wrote before the error still went out, in order
    assert [p.name for p in client.points] == ["p0", "p1"]


@pytest.mark.anyio
async def test_reported_error_stops_the_task_even_under_the_drop_policy() -> None:
    # the drop policy is for unexpected exceptions; an ErrorResponse the handler
    # writes is its decision to stop the task, and reaches Kapacitor verbatim
    adapter = load("faulty.py", "FaultyHandler")
    async with (
        serve_handler(adapter, name="faulty", error_policy="drop") as site,
        connect(site.path) as client,
    ):
        assert (await client.init()).success
        await client.send_points(
            [point("p0", 1, 1.0), point("p1", 2, 1.0, action="report"), point("p2", 3, 1.0)]
        )
        error = await client.wait_error()
        await client.wait_closed()
    assert error == "bad point p1"
    assert [p.name for p in client.points] == ["p0", "p1"]
    assert site.stats.handler_errors == 1


@pytest.mark.anyio
async def test_error_written_from_a_background_thread_ends_the_connection() -> None:
    adapter = load("faulty.py", "FaultyHandler")
    release = module_of(adapter).RELEASE
    async with serve_handler(adapter, name="faulty") as site, connect(site.path) as client:
        try:
            assert (await client.init()).success
            await client.send_point(point("p1", 1, 1.0, action="fail-later"))
            await client.keepalive()
            assert client.errors == []
        finally:
            release.set()
        assert "gave up on p1" in await client.wait_error()
        await client.wait_closed()


@pytest.mark.anyio
async def test_writing_something_else_than_a_response_is_an_error() -> None:
    adapter = load("faulty.py", "FaultyHandler")
    async with serve_handler(adapter, name="faulty") as site, connect(site.path) as client:
        assert (await client.init()).success
        await client.send_point(point("p1", 1, 1.0, action="bare"))
        error = await client.wait_error()
    assert "write_response() expects a udf_pb2.Response, not Point" in error


@pytest.mark.anyio
async def test_output_from_a_background_thread_is_sent_promptly() -> None:
    adapter = load("faulty.py", "FaultyHandler")
    release = module_of(adapter).RELEASE
    release.clear()
    async with serve_handler(adapter, name="faulty") as site, connect(site.path) as client:
        try:
            assert (await client.init()).success
            await client.send_point(point("late", 1, 1.0, action="later"))
            await client.keepalive()
            assert client.output == []  # the thread is still waiting
        finally:
            release.set()
        # no further input: only the flush the write requested can deliver it
        out = await client.wait_output(1)
        assert out[0].name == "late"
        await client.finish()
    assert client.errors == []


def _write_from_a_thread(adapter: LegacyAdapter, *responses: Any) -> None:
    """What a handler's own thread writes between callbacks (none of the adapter runs)."""

    def write() -> None:
        for response in responses:
            adapter.agent.write_response(response)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()


def _response(name: str = "", error: str = "") -> pb.Response:
    response = pb.Response()
    if error:
        response.error.error = error
    else:
        response.point.CopyFrom(point(name, 1, 1.0))
    return response


# The engine calls close() once, when Kapacitor's input ends, and sends what it
# returns; if close() raises, nothing it would have returned is sent. Output and
# an error written from a thread just before the end can only be buffered then:
# the connection's flush would otherwise have delivered them. No socket can
# order that race, so these tests call close() as the engine does.


def _names(out: Any) -> list[str]:
    """Point names in adapter output (points come encoded, as the frames the wire gets)."""
    names = []
    for item in out:
        assert isinstance(item, bytes), item
        (body,) = FrameDecoder().feed(item)
        names.append(pb.Response.FromString(body).point.name)
    return names


def test_output_written_before_an_error_at_the_end_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adapter = load("faulty.py", "FaultyHandler")(pb.InitRequest(), Context(function="faulty"))
    adapter.init()
    _write_from_a_thread(
        adapter, _response("p0"), _response("p1"), _response(error="bad"), _response("p2")
    )
    out = adapter.close()
    assert isinstance(out, list)
    assert _names(out) == ["p0", "p1"]
    # the error is not lost without trace: it is logged with its message
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert "FaultyHandler wrote an ErrorResponse as its input ended" in message
    assert "the 2 message(s) written before it are sent" in message
    assert "the 1 written after it dropped" in message
    assert message.endswith(": bad")


def test_an_error_with_nothing_before_it_at_the_end_is_raised() -> None:
    adapter = load("faulty.py", "FaultyHandler")(pb.InitRequest(), Context(function="faulty"))
    adapter.init()
    _write_from_a_thread(adapter, _response(error="gave up"), _response("late"))
    with pytest.raises(LegacyHandlerError, match=r"^gave up$") as info:
        adapter.close()
    assert isinstance(info.value, TaskError)  # reaches Kapacitor verbatim
    assert adapter.close() is None  # nothing left, nothing accepted after the end
    _write_from_a_thread(adapter, _response("after"))
    assert adapter.close() is None


# ---------------------------------------------------------------- tolerated mistakes


@pytest.mark.anyio
async def test_sloppy_info_init_snapshot_and_restore_are_tolerated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = load("sloppy.py", "CountHandler")
    async with serve_handler(adapter, name="count") as site:
        async with connect(site.path) as first:
            info = await first.info()
            # wants/provides forgotten: proto3 defaults, i.e. stream in, stream out
            assert (info.wants, info.provides) == (pb.STREAM, pb.STREAM)
            assert list(info.options) == ["as"]
            assert (await first.init()).success  # init() returned None
            await first.send_points([point("a", 1, 1.0, "g"), point("a", 2, 1.0, "g")])
            await first.wait_output(2)
            snapshot = await first.snapshot()  # set from a str
            await first.finish()
        assert json.loads(snapshot) == {"g": 2}
        async with connect(site.path) as second:
            assert (await second.init()).success
            assert (await second.restore(snapshot)).success  # restore() returned None
            await second.send_point(point("a", 3, 1.0, "g"))
            await second.wait_output(1)
            await second.finish()
        assert second.points[0].fieldsInt["count"] == 3
    logged = warnings_in(caplog)
    assert "init() returned no InitResponse; treated as success" in logged
    assert "snapshot set from a str; encoded as UTF-8" in logged
    assert "restore() returned no RestoreResponse" in logged


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("class_name", "warning"),
    [
        ("StrSnapshotHandler", "snapshot() returned a str; encoded as UTF-8"),
        ("KwSnapshotHandler", "snapshot set from a str; encoded as UTF-8"),
    ],
)
async def test_str_snapshots_are_encoded(
    caplog: pytest.LogCaptureFixture, class_name: str, warning: str
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = load("sloppy.py", class_name)
    async with serve_handler(adapter, name="count") as site, connect(site.path) as client:
        assert (await client.init()).success
        await client.send_point(point("a", 1, 1.0, "g"))
        await client.wait_output(1)
        assert json.loads(await client.snapshot()) == {"g": 1}
        await client.finish()
    assert warning in warnings_in(caplog)


@pytest.mark.anyio
async def test_info_returning_nothing_and_missing_snapshot_support(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = load("sloppy.py", "NoInfoHandler")
    assert "info() returned no InfoResponse" in warnings_in(caplog)
    assert not adapter.has_snapshot and not adapter.has_restore
    async with serve_handler(adapter, name="noinfo") as site, connect(site.path) as client:
        info = await client.info()
        assert info == pb.InfoResponse(wants=pb.STREAM, provides=pb.STREAM)
        assert (await client.init()).success  # a bare InitResponse
        assert await client.snapshot() == b""  # no snapshot(): nothing to keep
        assert (await client.restore(b"old state")).success  # no restore(): ignored
        await client.send_point(point("a", 1, 1.0))
        await client.wait_output(1)
        await client.finish()
    assert client.errors == []
    logged = warnings_in(caplog)
    assert "returned a bare InitResponse instead of a Response" in logged
    assert "has no restore(); the snapshot is ignored" in logged


@pytest.mark.anyio
async def test_unsolicited_management_responses_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = load("sloppy.py", "ChattyHandler")
    async with serve_handler(adapter, name="chatty") as site, connect(site.path) as client:
        assert (await client.init()).success
        await client.send_points([point("a", 1, 1.0), point("a", 2, 1.0)])
        await client.wait_output(2)
        # a forwarded stray snapshot response would be taken for this answer
        assert await client.snapshot() == b"real"
        await client.finish()
    assert client.errors == []
    assert [p.time for p in client.points] == [1, 2]
    logged = warnings_in(caplog)
    assert "got a snapshot response, which Kapacitor did not ask for; dropped" in logged
    assert "got a init response" in logged
    assert "point() returned Response, which is ignored" in logged


@pytest.mark.anyio
async def test_refusals_carry_exactly_the_handlers_message() -> None:
    adapter = load("sloppy.py", "RefuserHandler")
    async with serve_handler(adapter, name="refuser") as site:
        async with connect(site.path) as client:
            response = await client.init()
            assert (response.success, response.error) == (False, "option ok is required")
        async with connect(site.path) as client:
            assert (await client.init({"ok": ()})).success
            response = await client.restore(b"v1")
            assert (response.success, response.error) == (False, "cannot restore v1")
            assert await client.snapshot() == b"state"


# ---------------------------------------------------------------- the official package


# A stand-in for the official package's agent module, as small as the test needs.
FAKE_AGENT = '''
"""Test double of kapacitor.udf.agent (only the names legacy files import)."""


class Handler(object):
    pass


class Agent(object):
    def __init__(self, _in=None, _out=None):
        raise RuntimeError("test double: no agent loop")


class Server(object):
    def __init__(self, socket_path, accepter):
        raise RuntimeError("test double: no server")
'''


@pytest.fixture
def official_package(tmp_path: Path) -> Iterator[ModuleType]:
    """A ``kapacitor.udf`` on sys.path whose udf_pb2 protoc generated (package ``agent``)."""
    protoc = Path(sys.executable).parent / "protoc"
    if not protoc.exists():
        pytest.skip("protoc is not installed next to the interpreter")
    root = tmp_path / "site-packages"
    udf = root / "kapacitor" / "udf"
    udf.mkdir(parents=True)
    (root / "kapacitor" / "__init__.py").write_text("")
    (udf / "__init__.py").write_text("")
    (udf / "agent.py").write_text(FAKE_AGENT)
    proto_dir = tmp_path / "proto"
    proto_dir.mkdir()
    schema = PROTO.read_text().replace("package udfd.agent;", "package agent;")
    assert "package agent;" in schema
    (proto_dir / "udf.proto").write_text(schema)
    subprocess.run(
        [str(protoc), f"-I{proto_dir}", f"--python_out={udf}", "udf.proto"],
        check=True,
        capture_output=True,
    )
    saved = {k: m for k, m in sys.modules.items() if k == "kapacitor" or k.startswith("kapacitor.")}
    for name in saved:
        del sys.modules[name]
    forget_handler_files()  # imported against the stand-ins by earlier tests
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module("kapacitor.udf.udf_pb2")
    finally:
        sys.path.remove(str(root))
        for name in [k for k in sys.modules if k == "kapacitor" or k.startswith("kapacitor.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        forget_handler_files()  # bound to the official package, which is gone now
        importlib.invalidate_caches()


@pytest.mark.anyio
async def test_official_package_is_used_when_importable(official_package: ModuleType) -> None:
    assert real_kapacitor_available()
    assert install_kapacitor_shim() is False
    assert not shim_installed()
    mirror = load("mirror.py", "MirrorHandler")
    avg = load("moving_avg.py", "AvgHandler")
    # the files bound to the official classes, and the adapters convert for them
    assert module_of(mirror).udf_pb2 is official_package
    assert official_package.Point is not pb.Point
    assert mirror.legacy_types["Point"] is official_package.Point
    assert avg.info_override is not None and type(avg.info_override) is pb.InfoResponse
    assert set(avg.info_override.options) == {"field", "size", "as"}
    sent = [point("cpu", i, float(i), host="h") for i in range(1, 4)]
    async with serve_handler(mirror, name="mirror") as site, connect(site.path) as client:
        assert (await client.init()).success
        await client.send_points(sent)
        assert await client.wait_output(3) == sent
        await client.finish()
    assert client.errors == []
    options = {"field": "value", "size": 2, "as": "avg"}
    async with serve_handler(avg, name="avg") as site:
        async with connect(site.path) as first:
            assert (await first.init(options)).success
            await first.send_points(sent[:2])
            await first.wait_output(2)
            snapshot = await first.snapshot()
            await first.finish()
        async with connect(site.path) as second:
            assert (await second.init(options)).success
            assert (await second.restore(snapshot)).success
            await second.send_point(sent[2])
            await second.wait_output(1)
            await second.finish()
    assert second.points[0].fieldsDouble["avg"] == 2.5


def test_shim_stands_in_again_once_the_official_package_is_gone() -> None:
    uninstall_kapacitor_shim()
    assert not shim_installed()
    assert install_kapacitor_shim() is True
    udf_pb2: Any = importlib.import_module("kapacitor.udf.udf_pb2")
    assert udf_pb2.Point is pb.Point
