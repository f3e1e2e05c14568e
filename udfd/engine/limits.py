"""The bounds of one connection, in one place so that every layer reads the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

from udfd.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: bytes asked of the socket per read; one read becomes one queued chunk.
    #: Small enough that the reader returns to the socket often (a keepalive is
    #: answered when it is read), large enough to amortise the read; 64 KiB
    #: measured best (see benchmarks/).
    read_size: int = 64 * 1024
    #: chunks queued between reader and runner before the reader waits: with
    #: read_size this bounds buffered input per connection to ~128 KiB
    queue_chunks: int = 2
    #: output bytes queued in the writer before the runner (and reader) wait
    write_high_water: int = 256 * 1024
    #: seconds one handler call may take before udfd stops feeding Kapacitor's
    #: keepalive timer and ends the connection (with the call's stack in the log)
    handler_timeout: float = 30.0
    #: seconds after which a handler call is logged as slow, with its stack
    slow_call: float = 1.0
    #: seconds of silence after which a connection whose handler is busy but
    #: moving gets an unsolicited keepalive answer (Kapacitor's timer is reset by
    #: any response); well under Kapacitor's own timeout (10 s by default)
    heartbeat: float = 1.0
    #: seconds a connection may stay open without a successful Init. Kapacitor sends
    #: Info and Init at once when a task starts (its start-up probe sends Info and
    #: closes), so a connection that idles here is not Kapacitor's: it would only hold
    #: a file descriptor (1,000 of them once made every function unreachable)
    init_timeout: float = 30.0
    #: groups one GroupState of a connection's handler may hold; a point of a new group
    #: beyond it is dropped and counted (a peer inventing groups cannot grow memory)
    max_groups: int = 100_000
    #: points one batch may hold in a BatchHandler; a larger batch is dropped whole
    max_batch_points: int = 1_000_000
