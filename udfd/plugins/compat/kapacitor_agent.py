"""Stand-in for ``kapacitor.udf.agent``: the names a legacy UDF file imports.

Under udfd a legacy file is not a program: udfd imports it as a module (its
``if __name__ == "__main__"`` block never runs), creates one handler per
Kapacitor connection, and gives each handler udfd's own agent (see
``udfd.plugins.legacy``), which delivers ``write_response`` output to that connection.
``Agent`` and ``Server`` therefore exist only so the imports and subclassing
work; creating one directly fails with an explanation rather than silently
doing nothing, because a file that builds its own agent at import time would
otherwise appear to load and then never answer.
"""

from __future__ import annotations

from typing import Any, NoReturn


class StandaloneAgentError(RuntimeError):
    """A legacy file tried to run the official agent's I/O loop inside udfd."""


def _refuse(what: str) -> NoReturn:
    raise StandaloneAgentError(
        f"{what} cannot be used on its own under udfd: udfd imports this UDF file as a "
        "module (its `if __name__ == '__main__'` block does not run), creates one handler "
        "per Kapacitor connection and serves it on the socket named in udfd's config. "
        'Name the handler class in udfd\'s config (handler = "/path/file.py:ClassName") '
        "instead of starting an Agent or Server in the file."
    )


class Handler:
    """Base class of legacy handlers: every callback must be overridden to be used.

    The constructor takes no arguments; subclasses conventionally accept the
    agent (``def __init__(self, agent): self._agent = agent``).
    """

    def info(self) -> Any:
        """Return a ``udf_pb2.Response`` whose ``info`` declares edges and options."""
        raise NotImplementedError(f"{type(self).__name__} does not implement info()")

    def init(self, init_req: Any) -> Any:
        """Return a ``udf_pb2.Response`` whose ``init`` says whether the options suit."""
        raise NotImplementedError(f"{type(self).__name__} does not implement init()")

    def snapshot(self) -> Any:
        """Return a ``udf_pb2.Response`` whose ``snapshot`` holds the state as bytes."""
        raise NotImplementedError(f"{type(self).__name__} does not implement snapshot()")

    def restore(self, restore_req: Any) -> Any:
        """Load ``restore_req.snapshot``; return a ``udf_pb2.Response`` with ``restore``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement restore()")

    def begin_batch(self, begin_req: Any) -> None:
        """A batch starts; output goes through the agent's ``write_response``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement begin_batch()")

    def point(self, point: Any) -> None:
        """A point arrives; output goes through the agent's ``write_response``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement point()")

    def end_batch(self, end_req: Any) -> None:
        """A batch ends; output goes through the agent's ``write_response``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement end_batch()")


class Agent:
    """The official agent's interface; only udfd's adapter agent (a subclass) is usable."""

    handler: Any = None

    def __init__(self, _in: Any = None, _out: Any = None) -> None:
        _refuse("kapacitor.udf.agent.Agent")

    def start(self) -> None:
        _refuse("Agent.start()")

    def wait(self) -> None:
        _refuse("Agent.wait()")

    def write_response(self, response: Any, flush: bool = False) -> None:
        _refuse("Agent.write_response() of an agent not created by udfd")


class Server:
    """The official socket server's interface; udfd owns the sockets, so it cannot run."""

    def __init__(self, socket_path: str, accepter: Any) -> None:
        _refuse("kapacitor.udf.agent.Server")

    def serve(self) -> None:
        _refuse("Server.serve()")

    def stop(self) -> None:
        _refuse("Server.stop()")


__all__ = ["Agent", "Handler", "Server", "StandaloneAgentError"]
