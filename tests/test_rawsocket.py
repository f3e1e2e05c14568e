"""Ending a connection while its peer still sends: no stray tracebacks, no lost error.

Two findings of the robustness issue, each reproduced here so the tests can fail:
anyio's asyncio unix stream logs ``InvalidStateError`` when a read or write is
cancelled in the loop iteration in which the socket becomes ready (udfd cancels
its reader whenever it ends a connection), and a handler that failed while the
reader waited on a full queue made the reader raise, which took the connection's
task group down instead of sending the ErrorResponse.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import udfd
from udfd.engine.rawsocket import race_free
from udfd.protocol.framing import encode_frame
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import serve_handler

pytestmark = pytest.mark.anyio

ROUNDS = 50


def _until_blocked(step: Callable[[Any], object], arg: Any) -> None:
    try:
        while True:
            step(arg)
    except BlockingIOError:
        pass


async def _cancel_as_ready(
    make_stream: Callable[[socket.socket], Any], direction: str
) -> list[str]:
    """Park a read (or write) on a stream, make the socket ready and cancel the waiter in
    the next loop iteration, before the readiness callback runs; return what asyncio logged."""
    logged: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: logged.append(context["message"]))
    try:
        for _ in range(ROUNDS):
            ours, peer = socket.socketpair()
            ours.setblocking(False)
            peer.setblocking(False)
            if direction == "send":  # fill both buffers so that the next send waits
                _until_blocked(ours.send, b"x" * 65536)
            stream = make_stream(ours)
            scope = anyio.CancelScope()

            async def wait(stream: Any = stream, scope: anyio.CancelScope = scope) -> None:
                with scope:
                    if direction == "send":
                        await stream.send(b"y" * 65536)
                    else:
                        await stream.receive()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.sleep(0.002)  # parked in its wait
                if direction == "send":
                    _until_blocked(peer.recv, 1 << 20)
                else:
                    peer.send(b"ready")
                await anyio.lowlevel.checkpoint()  # the selector sees it in the next iteration
                scope.cancel()
            ours.close()
            peer.close()
    finally:
        loop.set_exception_handler(previous)
    return logged


def _anyio_stream(sock: socket.socket) -> Any:
    from anyio._backends._asyncio import UNIXSocketStream  # what from_socket() returns

    return UNIXSocketStream(sock)


@pytest.mark.parametrize("direction", ["receive", "send"])
async def test_a_cancelled_wait_on_a_ready_socket_logs_nothing(direction: str) -> None:
    upstream = await _cancel_as_ready(_anyio_stream, direction)
    ours = await _cancel_as_ready(lambda s: race_free(_anyio_stream(s)), direction)
    print(
        f"\n{direction}: anyio's stream logged {len(upstream)} of {ROUNDS}; race_free: {len(ours)}"
    )
    assert ours == []
    # the race is real in anyio 4.16 (every round); if a new anyio stops logging it, this
    # fails on purpose: race_free may then be removed
    assert upstream and "Future.set_result" in upstream[0]


class FailsAtOnce(udfd.Handler[udfd.NoOptions]):
    def point(self, point: udfd.Point) -> udfd.Output:
        raise RuntimeError("boom")


async def test_a_handler_failing_under_a_flood_still_sends_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    init = encode_frame(pb.Request(init=pb.InitRequest(taskID="t", nodeID="n")).SerializeToString())
    point = encode_frame(
        pb.Request(point=pb.Point(name="m", fieldsDouble={"v": 1.0})).SerializeToString()
    )
    flood = point * 2000
    errors = 0
    caplog.set_level(logging.ERROR)
    async with serve_handler(FailsAtOnce) as site:
        for _ in range(100):
            stream = await anyio.connect_unix(site.path)
            await stream.send(init)
            received = b""

            async def pump(stream: Any = stream) -> None:
                try:
                    while True:
                        await stream.send(flood)
                except (anyio.BrokenResourceError, OSError):
                    pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                with anyio.move_on_after(10):
                    while True:
                        try:
                            received += await stream.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            break
                tg.cancel_scope.cancel()
            await stream.aclose()
            errors += b"boom" in received
    unexpected = [r for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert unexpected == []
    assert errors == 100  # every connection got its ErrorResponse
