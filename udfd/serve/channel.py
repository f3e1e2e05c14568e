"""The control channel between udfd's own processes: records with file descriptors.

One ``SOCK_SEQPACKET`` socketpair per worker (and one to the spawner) keeps
record boundaries, so a record is one message: a small header (pickled; both
ends are udfd's own code, never a peer's), optional raw bytes, and optional
file descriptors passed with ``SCM_RIGHTS`` (an accepted Kapacitor connection,
or a worker's end of its own channel). Nothing here knows what the records
mean: the supervisor, the spawner and the worker each speak their part.
"""

from __future__ import annotations

import array
import os
import pickle
import socket
import struct
from typing import Any

import anyio

__all__ = ["Channel", "ChannelClosed", "decode", "encode", "pair"]

#: the largest record: a header plus the bytes a held connection read ahead
MAX_RECORD = 256 * 1024
_MAX_FDS = 4
_HEAD = struct.Struct("!I")


class ChannelClosed(Exception):
    """The other process closed its end (it exited, or it is shutting down)."""


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair; both ends inheritable only where a caller passes them on."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_RECORD * 2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_RECORD * 2)
    return a, b


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    record = _HEAD.pack(len(head)) + head + payload
    if len(record) > MAX_RECORD:
        raise ValueError(f"control record of {len(record)} bytes exceeds {MAX_RECORD}")
    return record


def decode(record: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = _HEAD.unpack_from(record)
    header = pickle.loads(record[_HEAD.size : _HEAD.size + size])
    if not isinstance(header, dict):
        raise ValueError("control record without a header")
    return header, record[_HEAD.size + size :]


def _ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds


def send_blocking(sock: socket.socket, header: dict[str, Any], payload: bytes = b"",
                  fds: list[int] | None = None) -> None:  # fmt: skip
    """Send one record from code without an event loop (the spawner)."""
    sock.sendmsg([encode(header, payload)], _ancillary(fds or []))


def recv_blocking(sock: socket.socket) -> tuple[dict[str, Any], bytes, list[int]]:
    """Receive one record without an event loop; raises ChannelClosed at EOF."""
    data, ancdata, _, _ = sock.recvmsg(MAX_RECORD, socket.CMSG_SPACE(_MAX_FDS * 4))
    fds = _received_fds(ancdata)
    if not data:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed
    header, payload = decode(data)
    return header, payload, fds


class Channel:
    """One end of a control socketpair, used from an anyio event loop.

    Records are sent whole (``sendmsg`` of one datagram), so concurrent senders
    on one loop never interleave; a send waits while the peer's buffer is full.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._closed = False

    async def send(
        self, header: dict[str, Any], payload: bytes = b"", fds: list[int] | None = None
    ) -> None:
        record = encode(header, payload)
        ancillary = _ancillary(fds or [])
        while True:
            if self._closed:
                raise ChannelClosed
            try:
                self.sock.sendmsg([record], ancillary)
                return
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                raise ChannelClosed from exc

    async def receive(self) -> tuple[dict[str, Any], bytes, list[int]]:
        while True:
            if self._closed:
                raise ChannelClosed
            try:
                return recv_blocking(self.sock)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
            except ConnectionResetError as exc:
                raise ChannelClosed from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()
