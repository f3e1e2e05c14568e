"""Points and batches cut from line protocol, shaped as Kapacitor's nodes send them.

* **Stream**: one point per line, in file order. With ``group_by`` tags each point
  carries Kapacitor's group ID (``tag=value,...`` in the order of the sorted tag
  names) and the dimensions, as after ``|groupBy('host')``; without, the group is
  empty and every point shares one state.
* **Batches by size**: per group, every ``size`` consecutive points make a batch
  (the rest at the end of input).
* **Batches by time window**: per group, windows aligned to multiples of
  ``window`` since the epoch, as ``|window().period(w).every(w).align()`` makes
  them. A window is sent when a later point of its group arrives, or at the end.
  ``EndBatch.tmax`` is the window's end, as Kapacitor sets it.

Batch points carry only time, group, tags and fields (as from Kapacitor's batch
nodes). Input is expected in time order, as Kapacitor's stream is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from udfd.history.lineprotocol import LineProtocolError, parse_lines
from udfd.history.rows import Row
from udfd.points import make_point
from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["Batch", "Feed", "batches_by_size", "batches_by_window", "points_from_lines"]

#: a batch as Kapacitor sends it: BeginBatch, its points, EndBatch
Batch = tuple[pb.BeginBatch, list[pb.Point], pb.EndBatch]


def group_id(tags: dict[str, str], group_by: Sequence[str]) -> str:
    """Kapacitor's group ID for a point grouped by ``group_by`` (empty: no grouping)."""
    return ",".join(f"{name}={tags.get(name, '')}" for name in sorted(group_by))


def _point(row: Row, group_by: Sequence[str], database: str, rp: str) -> pb.Point:
    dims = sorted(group_by)
    point = make_point(
        row.measurement,
        row.time or 0,
        row.fields,
        dict(row.tags),
        group=group_id(dict(row.tags), dims),
        dimensions=dims or None,
    )
    point.database, point.retentionPolicy = database, rp
    return point


def points_from_lines(
    lines: Iterable[str],
    *,
    group_by: Sequence[str] = (),
    precision: str = "ns",
    where: str = "",
    database: str = "",
    retention_policy: str = "",
) -> Iterator[pb.Point]:
    """Stream points from line protocol (``LineProtocolError`` names the bad line)."""
    for row in parse_lines(lines, precision, where):
        yield _point(row, group_by, database, retention_policy)


def _batch(points: list[pb.Point], tmax: int | None = None) -> Batch:
    first = points[0]
    tags = {k: first.tags[k] for k in first.dimensions}
    begin = pb.BeginBatch(name=first.name, group=first.group, tags=tags, size=len(points))
    body = []
    for p in points:
        q = pb.Point(time=p.time, group=p.group)
        q.tags.update(p.tags)
        q.fieldsDouble.update(p.fieldsDouble)
        q.fieldsInt.update(p.fieldsInt)
        q.fieldsString.update(p.fieldsString)
        q.fieldsBool.update(p.fieldsBool)
        body.append(q)
    end_time = max(p.time for p in points) if tmax is None else tmax
    end = pb.EndBatch(name=first.name, group=first.group, tags=tags, tmax=end_time)
    return begin, body, end


def batches_by_size(points: Iterable[pb.Point], size: int) -> Iterator[Batch]:
    """Per group (and measurement), every ``size`` consecutive points."""
    if size < 1:
        raise ValueError("a batch size must be at least 1")
    open_: dict[tuple[str, str], list[pb.Point]] = {}
    for point in points:
        key = (point.name, point.group)
        pending = open_.setdefault(key, [])
        pending.append(point)
        if len(pending) == size:
            yield _batch(pending)
            open_[key] = []
    for pending in open_.values():
        if pending:
            yield _batch(pending)


def batches_by_window(points: Iterable[pb.Point], window_ns: int) -> Iterator[Batch]:
    """Per group (and measurement), the points of each aligned window of ``window_ns``."""
    if window_ns < 1:
        raise ValueError("a window must be longer than 0")
    open_: dict[tuple[str, str], tuple[int, list[pb.Point]]] = {}
    for point in points:
        key = (point.name, point.group)
        start = point.time - point.time % window_ns
        current = open_.get(key)
        if current is not None and current[0] != start:
            yield _batch(current[1], tmax=current[0] + window_ns)
            current = None
        if current is None:
            current = open_[key] = (start, [])
        current[1].append(point)
    for start, pending in open_.values():
        yield _batch(pending, tmax=start + window_ns)


@dataclass
class Feed:
    """How ``udfd run`` feeds a handler: as a stream, or batches by size or window."""

    group_by: tuple[str, ...] = ()
    batch_size: int | None = None
    window_ns: int | None = None
    precision: str = "ns"
    database: str = ""
    retention_policy: str = ""
    counted: list[int] = field(default_factory=lambda: [0])
    #: the first bad input line's error; the points before it were fed
    error: str | None = None

    @property
    def batched(self) -> bool:
        return self.batch_size is not None or self.window_ns is not None

    def points(self, lines: Iterable[str], where: str = "") -> Iterator[pb.Point]:
        """The points up to the first bad line, whose error is kept in :attr:`error` (so
        everything before it is still sent and handled)."""
        try:
            for point in points_from_lines(
                lines,
                group_by=self.group_by,
                precision=self.precision,
                where=where,
                database=self.database,
                retention_policy=self.retention_policy,
            ):
                self.counted[0] += 1
                yield point
        except LineProtocolError as exc:
            self.error = str(exc)

    def batches(self, lines: Iterable[str], where: str = "") -> Iterator[Batch]:
        points = self.points(lines, where)
        if self.batch_size is not None:
            return batches_by_size(points, self.batch_size)
        assert self.window_ns is not None
        return batches_by_window(points, self.window_ns)
