"""udfd's exception hierarchy: one root, a subclass per kind of failure.

Only the CLI turns these into exit codes; everything else raises or handles them.
"""

from __future__ import annotations

import errno


class UdfdError(Exception):
    """Root of every error udfd raises on purpose."""


class ProtocolError(UdfdError):
    """The peer broke the UDF protocol; the connection cannot continue."""


class FrameError(ProtocolError):
    """The byte stream is not a valid sequence of length-prefixed messages.

    ``frames`` holds the complete frames that preceded the bad bytes in the same
    input, so a caller can still process them: bad input loses nothing before it.
    """

    def __init__(self, message: str, frames: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.frames: list[bytes] = frames or []


class OptionsError(UdfdError):
    """Init options do not fit the handler's declared options."""


class HandlerDefinitionError(UdfdError):
    """A handler class does not satisfy the handler contract."""


class OutputError(UdfdError):
    """A handler produced output the protocol forbids (a handler bug)."""


class OutputTypeError(OutputError):
    """A callback returned something that is not a message at all (a dict, a str...).

    Unlike a framing violation it can be dropped without corrupting what is sent,
    so the ``drop`` error policy drops it; the message says what came back.
    """


class PointError(UdfdError):
    """A data problem the handler anticipates: the point is logged, counted and dropped.

    Raise it (or a subclass) from a handler callback for input that is wrong but
    expected now and then, such as a missing field; Kapacitor's own nodes drop
    such points too instead of stopping the task.
    """


class MissingField(PointError, KeyError):
    """A point lacks a field the handler needs."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "missing field"


class FieldTypeError(PointError, TypeError):
    """A point's field has a type the handler cannot use."""


class InitFailed(UdfdError):
    """Raised by a handler's ``init`` to refuse Init with exactly this message."""


class RestoreFailed(UdfdError):
    """Raised by a handler's ``restore`` to refuse Restore with exactly this message."""


class TaskError(UdfdError):
    """Raise from a data callback to stop the Kapacitor task with exactly this message.

    Unlike other exceptions it is neither prefixed with the exception type nor
    subject to the ``drop`` error policy: the handler has decided the task must stop.
    """


class ConfigError(UdfdError):
    """The configuration is invalid; the message names the key."""


class StartupError(UdfdError):
    """The daemon cannot start (a socket is owned by someone else, ...)."""


def describe_os_error(exc: BaseException) -> str:
    """An OSError as its errno name and text (``ECONNRESET: Connection reset by peer``)."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        return f"{errno.errorcode.get(cause.errno, cause.errno)}: {cause.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
