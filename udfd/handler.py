"""The public handler API: what a UDF author subclasses.

A handler declares, on the class, what it wants and provides and its options
model; udfd derives Kapacitor's ``InfoResponse`` from that declaration without
creating an instance, so Info is instant and never fails on handler code. One
instance is created per Kapacitor connection, at Init, with validated options.

Callbacks may be plain functions or coroutines. Plain ones are the fast path
(a chunk of points is processed in one loop) and, with ``threaded = True``, run
in a worker thread so a CPU-heavy handler never delays keepalives. A callback
returns its output: ``None``, one message, or an iterable of messages.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar, cast, get_args, get_origin

from udfd.errors import HandlerDefinitionError, PointError
from udfd.options import NoOptions, Options, OptionSpec, info_options, option_specs
from udfd.protocol.proto import udf_pb2 as pb
from udfd.shared import PROCESS_RESOURCES, SharedView
from udfd.state import GroupState, SnapshotError, decode_snapshot, encode_snapshot


class ErrorPolicy(enum.StrEnum):
    """What an unexpected handler exception does to the connection (per function)."""

    #: Send ErrorResponse (Kapacitor stops the task and shows the message).
    ERROR = "error"
    #: Log it, count it, drop the point, carry on.
    DROP = "drop"


class Edge(enum.IntEnum):
    """What a handler consumes and produces (the protocol's ``EdgeType``)."""

    STREAM = pb.STREAM
    BATCH = pb.BATCH


Message: TypeAlias = pb.Point | pb.BeginBatch | pb.EndBatch
Output: TypeAlias = Message | Iterable[Message] | None

OptionsT = TypeVar("OptionsT", bound=Options)

#: the most points one :meth:`Handler.points` call gets (bounds one call's latency)
MAX_POINTS_CALL = 4096


def _no_flush() -> None:
    """request_flush of a context that is not attached to a connection."""


def _drop_unattached(point: pb.Point, error: Exception) -> None:
    """Context.drop of a context that is not attached to a connection: log it."""
    logging.getLogger("udfd.handler").info("dropped point: %s", error)


@dataclass(frozen=True)
class Context:
    """Where a handler instance runs: which function, task and node."""

    function: str = ""
    task_id: str = ""
    node_id: str = ""
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("udfd.handler")
    )
    #: Thread-safe: ask the connection to call the handler's ``flush`` soon, for
    #: output produced outside a callback (timers, background threads).
    request_flush: Callable[[], None] = _no_flush
    #: Thread-safe and blocking, for threads of the handler's own: wait while the
    #: connection's output is above its high-water mark (a peer that stops reading).
    wait_writable: Callable[[], None] = _no_flush
    #: Adapters only, on the thread of the current callback: queue one encoded
    #: point frame (``wire.point_frame`` bytes) right after the output queued so
    #: far. Set for stream-providing handlers; None where output must be returned.
    emit_point_frame: Callable[[bytes], None] | None = None
    #: For :meth:`Handler.points`: report one point of the list that cannot be
    #: handled (a missing field, a wrong type) as ``point()`` would by raising
    #: ``PointError``: counted as dropped and logged, the rest goes on.
    drop: Callable[[pb.Point, Exception], None] = _drop_unattached
    #: Objects loaded once per worker process and shared by its connections
    #: (models, tables): ``context.shared.get(key, load)``; see :mod:`udfd.shared`.
    shared: SharedView = field(default_factory=lambda: SharedView(PROCESS_RESOURCES))
    #: Thread-safe, for one long call that loops (fitting one model per group, say):
    #: tell udfd's watchdog the handler is moving, so the call is neither logged as
    #: stuck nor ended by ``handler_timeout`` while each step is short.
    progressed: Callable[[], None] = _no_flush
    #: The option defaults from the function's config (``[functions.NAME.options]``), as
    #: written there: lets a handler tell what the operator set from what a task set.
    config_options: Mapping[str, Any] = field(default_factory=dict)


CALLBACKS = (
    "init",
    "point",
    "points",
    "begin_batch",
    "end_batch",
    "flush",
    "snapshot",
    "restore",
    "close",
)


class Handler(Generic[OptionsT]):
    """Base class of udfd handlers.

    Subclass it as ``class MyHandler(Handler[MyOptions])``; the type argument is
    the options model (omit it for a handler without options).
    """

    wants: ClassVar[Edge] = Edge.STREAM
    provides: ClassVar[Edge] = Edge.STREAM
    #: Run callbacks in a worker thread (for CPU-heavy handlers).
    threaded: ClassVar[bool] = False
    #: Bump when the layout of GroupState contents changes; see ``migrate_state``.
    state_version: ClassVar[int] = 1
    #: Filled from the generic argument; may also be set explicitly.
    options_model: ClassVar[type[Options]] = NoOptions
    #: Adapters only: skip option validation and hand ``InitRequest`` itself over
    #: as ``self.options``; Info then comes from ``info_override``.
    raw_options: ClassVar[bool] = False
    info_override: ClassVar[pb.InfoResponse | None] = None

    options: OptionsT
    context: Context

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is not None and issubclass(get_origin(base), Handler):
                args = get_args(base)
                if args and isinstance(args[0], type) and issubclass(args[0], Options):
                    cls.options_model = args[0]

    def __init__(self, options: OptionsT, context: Context | None = None) -> None:
        self.options = options
        self.context = context if context is not None else Context()

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        return self.context.logger

    # ---- callbacks (override what you need) ----

    def init(self) -> None:
        """Called once after options are validated, before any data."""

    def point(self, point: pb.Point) -> Output:
        """A point of a stream, or a point inside a batch."""
        return None

    def points(self, points: list[pb.Point]) -> Output:
        """Several consecutive points of a stream at once, for handlers that vectorise.

        Override it instead of :meth:`point` when one call over many points is much
        cheaper than many calls (a model scoring a matrix). udfd then hands over
        every run of consecutive points it has read, up to :data:`MAX_POINTS_CALL`,
        in order; management requests in between (snapshot, keepalives) split the
        runs, so a snapshot always sees every point before it. Report a point that
        cannot be handled with ``self.context.drop(point, error)``; raising fails
        the whole list under the function's error policy. Stream handlers only:
        a batch handler sees its batch whole in :meth:`BatchHandler.process_batch`.
        """
        out: list[Message] = []
        for point in points:
            result = self.point(point)
            if result is None:
                continue
            if isinstance(result, (pb.Point, pb.BeginBatch, pb.EndBatch)):
                out.append(result)
            else:
                out.extend(result)
        return out

    def begin_batch(self, begin: pb.BeginBatch) -> Output:
        return None

    def end_batch(self, end: pb.EndBatch) -> Output:
        return None

    def flush(self) -> Output:
        """Called after ``context.request_flush()``: return output produced meanwhile."""
        return None

    def close(self) -> Output:
        """Kapacitor finished sending (task stopped); last chance to emit."""
        return None

    def snapshot(self) -> bytes:
        """The handler's state; by default every :class:`GroupState` attribute."""
        return encode_snapshot(type(self).__qualname__, self.state_version, self._group_states())

    def restore(self, data: bytes) -> None:
        """Load what :meth:`snapshot` returned; raising makes Restore fail readably."""
        if not data:
            return  # what snapshot() gives a handler without GroupState: nothing was kept
        _, version, states = decode_snapshot(data)
        if version != self.state_version:
            states = self.migrate_state(version, states)
        own = self._group_states()
        unknown = set(states) - set(own)
        if unknown:
            # a renamed or removed GroupState must not stop the task on restart
            self.log.warning(
                "restore: ignoring snapshot state this handler no longer keeps: %s",
                ", ".join(sorted(unknown)),
            )
        for name, state in own.items():
            state.load_json(states.get(name, {}))

    def migrate_state(self, version: int, states: dict[str, Any]) -> dict[str, Any]:
        """Convert snapshot states of an older ``state_version``; override to support it."""
        raise SnapshotError(
            f"snapshot has state version {version}, this handler uses {self.state_version} "
            "and defines no migration"
        )

    def _group_states(self) -> dict[str, GroupState[Any]]:
        return {k: v for k, v in vars(self).items() if isinstance(v, GroupState)}


class BatchHandler(Handler[OptionsT]):
    """A handler that sees each batch whole: override :meth:`process_batch`.

    udfd collects the points between Begin and End and frames the output exactly
    as Kapacitor requires: a Begin with the exact size, the points, then an End
    that echoes the request's name, group, tags and tmax.
    """

    wants: ClassVar[Edge] = Edge.BATCH
    provides: ClassVar[Edge] = Edge.BATCH

    #: the most points a batch may hold (0: no bound); udfd sets it from
    #: ``max_batch_points``. A larger batch is dropped whole, each point counted: a
    #: truncated batch would be a wrong answer.
    max_batch_points: int = 0

    def __init__(self, options: OptionsT, context: Context | None = None) -> None:
        super().__init__(options, context)
        self._begin: pb.BeginBatch | None = None
        self._points: list[pb.Point] = []
        self._overflow = 0

    def process_batch(
        self, points: list[pb.Point], begin: pb.BeginBatch, end: pb.EndBatch
    ) -> Iterable[pb.Point]:
        """Return the batch's output points (default: the input unchanged)."""
        return points

    def begin_batch(self, begin: pb.BeginBatch) -> Output:
        self._begin = begin
        self._points = []
        self._overflow = 0
        return None

    def point(self, point: pb.Point) -> Output:
        if self.max_batch_points and len(self._points) >= self.max_batch_points:
            self._overflow += 1  # kept no longer: the batch is dropped at its end
            return None
        self._points.append(point)
        return None

    def end_batch(self, end: pb.EndBatch) -> Output:
        begin = self._begin if self._begin is not None else pb.BeginBatch()
        points, self._points, self._begin = self._points, [], None
        if self._overflow:
            total = len(points) + self._overflow
            error = PointError(
                f"batch of {total} points is over max_batch_points ({self.max_batch_points}): "
                "dropped whole"
            )
            self._overflow = 0
            for point in points:
                self.context.drop(point, error)
            for _ in range(total - len(points)):
                self.context.drop(pb.Point(), error)
            return None
        return batch_output(begin, list(self.process_batch(points, begin, end)), end)


def batch_output(begin: pb.BeginBatch, points: list[pb.Point], end: pb.EndBatch) -> list[Message]:
    """Frame output points as one batch, echoing the request's identity."""
    out_begin = pb.BeginBatch(
        name=end.name or begin.name,
        group=end.group or begin.group,
        tags=end.tags or begin.tags,
        size=len(points),
        byName=begin.byName,
    )
    out_end = pb.EndBatch(
        name=end.name or begin.name,
        group=end.group or begin.group,
        tmax=end.tmax,
        tags=end.tags or begin.tags,
        byName=begin.byName,  # Kapacitor's EndBatch never carries byName
    )
    return [out_begin, *points, out_end]


@dataclass(frozen=True)
class HandlerSpec:
    """Everything udfd needs to serve a handler class, checked once at load time."""

    cls: type[Handler[Any]]
    name: str
    info: pb.InfoResponse
    options: dict[str, OptionSpec]
    is_async: frozenset[str]
    #: the class overrides :meth:`Handler.points`: the engine passes runs of points
    vectorised: bool = False

    @property
    def threaded(self) -> bool:
        return self.cls.threaded

    @property
    def wants(self) -> Edge:
        """What Kapacitor was told (the served Info), which the engine then enforces."""
        return Edge(self.info.wants)

    @property
    def provides(self) -> Edge:
        return Edge(self.info.provides)


def inspect_handler(cls: object, name: str = "") -> HandlerSpec:
    """Check a handler class against the contract and derive its Info.

    Raises :class:`HandlerDefinitionError` naming what is wrong, so a broken
    handler fails when it is loaded rather than on Kapacitor's first Init.
    """
    label = name or getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise HandlerDefinitionError(f"{label}: not a subclass of udfd.Handler")
    for attr in ("wants", "provides"):
        value = getattr(cls, attr)
        if value not in (Edge.STREAM, Edge.BATCH):
            raise HandlerDefinitionError(f"{label}: {attr} must be Edge.STREAM or Edge.BATCH")
    model = cls.options_model
    if not (isinstance(model, type) and issubclass(model, Options)):
        raise HandlerDefinitionError(f"{label}: options_model must subclass udfd.Options")
    specs = {} if cls.raw_options else option_specs(model)
    if cls.raw_options and cls.info_override is None:
        raise HandlerDefinitionError(f"{label}: raw_options needs info_override")
    is_async = frozenset(
        cb for cb in CALLBACKS if inspect.iscoroutinefunction(getattr(cls, cb, None))
    )
    if cls.threaded and is_async:
        raise HandlerDefinitionError(
            f"{label}: threaded handlers need plain callbacks, "
            f"but {', '.join(sorted(is_async))} are coroutines"
        )
    vectorised = cls.points is not Handler.points
    if vectorised and "points" in is_async:
        raise HandlerDefinitionError(f"{label}: points() must be a plain function")
    if vectorised and cls.wants is Edge.BATCH:
        raise HandlerDefinitionError(
            f"{label}: points() is for stream handlers; a batch handler gets its batch "
            "whole in process_batch()"
        )
    if cls.info_override is not None:
        info = pb.InfoResponse()
        info.CopyFrom(cls.info_override)
    else:
        info = pb.InfoResponse(
            wants=cast("pb.EdgeType", int(cls.wants)),
            provides=cast("pb.EdgeType", int(cls.provides)),
            options=info_options(specs),
        )
    return HandlerSpec(
        cls=cls,
        name=name or cls.__qualname__,
        info=info,
        options=specs,
        is_async=is_async,
        vectorised=vectorised,
    )
