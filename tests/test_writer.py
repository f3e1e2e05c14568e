"""The single writer's ordering, on a real unix socket whose peer reads late."""

from __future__ import annotations

import shutil

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from udfd.engine.writer import FrameWriter
from udfd.testing import short_socket_dir

pytestmark = pytest.mark.anyio


async def test_urgent_data_overtakes_queued_but_not_sent_data() -> None:
    workdir = short_socket_dir("udfd-w-")
    try:
        received = bytearray()
        peer_ready = anyio.Event()
        start_reading = anyio.Event()
        peer_done = anyio.Event()

        async def peer(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                peer_ready.set()
                await start_reading.wait()  # like Kapacitor busy downstream
                try:
                    while True:
                        received.extend(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
                peer_done.set()

        listener = await anyio.create_unix_listener(workdir / "w.sock")
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, peer)
            stream = await anyio.connect_unix(workdir / "w.sock")
            await peer_ready.wait()
            writer = FrameWriter(stream, high_water=1 << 30)
            written = anyio.Event()

            async def write() -> None:
                await writer.run()
                written.set()

            tg.start_soon(write)
            big = b"B" * (8 << 20)  # far beyond the socket buffers: the send blocks
            writer.put(big)
            for _ in range(100):  # let the writer take `big` and block in send
                await anyio.lowlevel.checkpoint()
            writer.put(b"queued")
            writer.put_urgent(b"URGENT")
            start_reading.set()
            writer.close()
            with anyio.fail_after(30):
                await written.wait()
            await stream.aclose()
            with anyio.fail_after(30):
                await peer_done.wait()  # the peer read everything, up to our close
            tg.cancel_scope.cancel()
        # what was already being sent completes first; the urgent bytes then go
        # ahead of everything that was only queued
        assert bytes(received) == big + b"URGENT" + b"queued"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def test_bytes_being_sent_count_against_the_high_water_mark() -> None:
    """A send the peer does not take keeps the writer full: the reader and the handler
    threads must wait on it, not see an empty queue and pile up more."""
    workdir = short_socket_dir("udfd-w-")
    try:
        start_reading = anyio.Event()
        peer_done = anyio.Event()

        async def peer(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await start_reading.wait()
                try:
                    while True:
                        await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
                peer_done.set()

        listener = await anyio.create_unix_listener(workdir / "w.sock")
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, peer)
            stream = await anyio.connect_unix(workdir / "w.sock")
            writer = FrameWriter(stream, high_water=1 << 20)
            tg.start_soon(writer.run)
            writer.put(b"B" * (8 << 20))
            for _ in range(100):  # the writer takes it all and blocks in send
                await anyio.lowlevel.checkpoint()
            assert writer.full
            assert not writer.writable.is_set()
            start_reading.set()
            with anyio.fail_after(30):
                await writer.wait_writable()
            assert not writer.full
            assert writer.writable.is_set()
            writer.close()
            await anyio.lowlevel.checkpoint()
            await stream.aclose()
            with anyio.fail_after(30):
                await peer_done.wait()
            tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
