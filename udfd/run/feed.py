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

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from udfd.history.lineprotocol import LineProtocolError, parse_lines, parse_numbered
from udfd.history.rows import Row
from udfd.points import make_point
from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["Batch", "Feed", "batches_by_size", "batches_by_window", "points_from_lines"]

#: a batch as Kapacitor sends it: BeginBatch, its points, EndBatch
Batch = tuple[pb.BeginBatch, list[pb.Point], pb.EndBatch]


def group_id(tags: Mapping[str, str], group_by: Sequence[str]) -> str:
    """Kapacitor's group ID for a point grouped by ``group_by`` (empty: no grouping)."""
    return ",".join(f"{name}={tags.get(name, '')}" for name in sorted(group_by))


def _point(row: Row, group_by: Sequence[str], database: str, rp: str) -> pb.Point:
    dims = sorted(group_by)
    point = make_point(
        row.measurement,
        row.time if row.time is not None else time.time_ns(),  # as InfluxDB stamps it
        row.fields,
        row.tags,
        group=group_id(row.tags, dims),
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
    """Stream points from line protocol (``LineProtocolError`` names the bad line).

    A line without a timestamp gets the current time, as InfluxDB gives it."""
    for row in parse_lines(lines, precision, where):
        yield _point(row, group_by, database, retention_policy)


def _batch(points: list[pb.Point], tmax: int | None = None) -> Batch:
    first = points[0]
    tags = {k: first.tags.get(k, "") for k in first.dimensions}
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


class SizeBatcher:
    """Per group (and measurement), every ``size`` consecutive points make a batch."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a batch size must be at least 1")
        self._size = size
        self._open: dict[tuple[str, str], list[pb.Point]] = {}

    def add(self, point: pb.Point) -> list[Batch]:
        key = (point.name, point.group)
        pending = self._open.setdefault(key, [])
        pending.append(point)
        if len(pending) < self._size:
            return []
        self._open[key] = []
        return [_batch(pending)]

    def flush(self) -> list[Batch]:
        """The partial batches at the end of input, oldest first."""
        rest = [p for p in self._open.values() if p]
        self._open = {}
        return [_batch(p) for p in sorted(rest, key=lambda p: p[0].time)]


class WindowBatcher:
    """Per group (and measurement), the points of each window of ``window_ns`` aligned to
    the epoch; a window is sent when a later point of its group arrives, or at the end."""

    def __init__(self, window_ns: int) -> None:
        if window_ns < 1:
            raise ValueError("a window must be longer than 0")
        self._window = window_ns
        self._open: dict[tuple[str, str], tuple[int, list[pb.Point]]] = {}

    def add(self, point: pb.Point) -> list[Batch]:
        key = (point.name, point.group)
        start = point.time - point.time % self._window
        current = self._open.get(key)
        out = []
        if current is not None and current[0] != start:
            out.append(_batch(current[1], tmax=current[0] + self._window))
            current = None
        if current is None:
            current = self._open[key] = (start, [])
        current[1].append(point)
        return out

    def flush(self) -> list[Batch]:
        """The open windows at the end of input, in time order."""
        rest = sorted(self._open.values(), key=lambda w: w[0])
        self._open = {}
        return [_batch(points, tmax=start + self._window) for start, points in rest]


def _batched(points: Iterable[pb.Point], batcher: SizeBatcher | WindowBatcher) -> Iterator[Batch]:
    for point in points:
        yield from batcher.add(point)
    yield from batcher.flush()


def batches_by_size(points: Iterable[pb.Point], size: int) -> Iterator[Batch]:
    """Per group (and measurement), every ``size`` consecutive points."""
    return _batched(points, SizeBatcher(size))


def batches_by_window(points: Iterable[pb.Point], window_ns: int) -> Iterator[Batch]:
    """Per group (and measurement), the points of each aligned window of ``window_ns``."""
    return _batched(points, WindowBatcher(window_ns))


@dataclass
class Feed:
    """How ``udfd run`` feeds a handler: as a stream, or batches by size or window."""

    group_by: tuple[str, ...] = ()
    batch_size: int | None = None
    window_ns: int | None = None
    precision: str = "ns"
    database: str = ""
    retention_policy: str = ""
    #: points read so far (the progress line and the summary show it)
    points_read: int = 0
    #: the first bad input line's error; the points before it were fed
    error: str | None = None

    @property
    def batched(self) -> bool:
        return self.batch_size is not None or self.window_ns is not None

    def parse(self, line: str, number: int, where: str) -> pb.Point | None:
        """One input line as a point (None: blank or a comment); the error names the line."""
        row = parse_numbered(line, number, self.precision, where)
        if row is None:
            return None
        self.points_read += 1
        return _point(row, self.group_by, self.database, self.retention_policy)

    def points(self, lines: Iterable[str], where: str = "") -> Iterator[pb.Point]:
        """The points up to the first bad line, whose error is kept in :attr:`error` (so
        everything before it is still sent and handled)."""
        try:
            for number, line in enumerate(lines, 1):
                point = self.parse(line, number, where)
                if point is not None:
                    yield point
        except LineProtocolError as exc:
            self.error = str(exc)

    def batcher(self) -> SizeBatcher | WindowBatcher:
        if self.batch_size is not None:
            return SizeBatcher(self.batch_size)
        assert self.window_ns is not None
        return WindowBatcher(self.window_ns)

    def batches(self, lines: Iterable[str], where: str = "") -> Iterator[Batch]:
        return _batched(self.points(lines, where), self.batcher())
