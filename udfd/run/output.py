"""A handler's output, written as line protocol, JSON lines or a table.

Line protocol is InfluxDB's, so the output can be written back or diffed against a
file: tags sorted by key, fields by key, integers with ``i``, strings quoted.
Batch edges are not points; in line protocol they appear as ``#`` comment lines
(``# batch NAME group=... size=N`` and ``# end ... tmax=T``), which InfluxDB and
``udfd run`` itself skip when reading the file back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, TextIO

from udfd.points import fields
from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["FORMATS", "OutputWriter", "format_line"]

FORMATS = ("lp", "json", "table")
Message = pb.Point | pb.BeginBatch | pb.EndBatch


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/")


def _escape(text: str, special: str) -> str:
    if _PLAIN.issuperset(text):  # the usual name: nothing to escape
        return text
    out = text.replace("\\", "\\\\")
    for char in special:
        out = out.replace(char, "\\" + char)
    return out


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))


def _field_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fields(point: pb.Point) -> dict[str, Any]:
    """All fields, sorted by key (line protocol's canonical order)."""
    return dict(sorted(fields(point).items()))


def format_line(point: pb.Point, name: str = "") -> str:
    """One point as line protocol (``name`` for batch points, which carry none).

    What line protocol cannot carry is said in a ``#`` comment line instead of writing a
    line InfluxDB would reject or skip: NaN and infinite fields are left out (named in a
    trailing comment line), empty tag values are left out (InfluxDB drops them too), and a
    point without writable fields, or whose measurement begins with ``#``, is a comment.
    """
    values = _fields(point)
    fields = {k: v for k, v in values.items() if _finite(v)}
    measurement = point.name or name or "unnamed"
    parts = [_escape(measurement, ", ")]
    parts += [
        f"{_escape(k, ',= ')}={_escape(v, ',= ')}" for k, v in sorted(point.tags.items()) if v
    ]
    head = ",".join(parts)
    if measurement.startswith("#"):
        return f"# {head} (a measurement beginning with '#' reads as a comment in line protocol)"
    if not fields:
        return f"# {head} {point.time} (no field line protocol can carry: {sorted(values)})"
    dropped = sorted(set(values) - set(fields))
    note = f"\n# ^ fields left out (NaN or infinite): {', '.join(dropped)}" if dropped else ""
    body = ",".join(f"{_escape(k, ',= ')}={_field_value(v)}" for k, v in fields.items())
    return f"{head} {body} {point.time}{note}"


def _as_dict(message: Message) -> dict[str, Any]:
    if isinstance(message, pb.BeginBatch):
        return {"begin": message.name, "group": message.group, "tags": dict(message.tags),
                "size": message.size}  # fmt: skip
    if isinstance(message, pb.EndBatch):
        return {"end": message.name, "group": message.group, "tags": dict(message.tags),
                "tmax": message.tmax}  # fmt: skip
    doc: dict[str, Any] = {"name": message.name, "time": message.time}
    if message.group:
        doc["group"] = message.group
    if message.dimensions:
        doc["dimensions"] = list(message.dimensions)
    doc["tags"] = dict(sorted(message.tags.items()))
    doc["fields"] = {k: v if _finite(v) else None for k, v in _fields(message).items()}
    return doc


class OutputWriter:
    """Writes messages as they arrive; a table is written at the end (it needs widths)."""

    def __init__(self, out: TextIO, fmt: str = "lp") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} ({', '.join(FORMATS)})")
        self._out = out
        self._format = fmt
        self._batch_name = ""
        self._rows: list[dict[str, Any]] = []
        self.points = 0
        self.batches = 0
        #: stdout was closed by its reader; the rest of the output is discarded
        self.broken = False

    def write(self, messages: Iterable[Message]) -> None:
        """Write (and flush) ``messages``; a closed stdout (``| head``) stops the writing."""
        if self.broken:
            return
        try:
            self._write(messages)
        except BrokenPipeError:
            self.broken = True

    def _write(self, messages: Iterable[Message]) -> None:
        for message in messages:
            if isinstance(message, pb.Point):
                self.points += 1
            elif isinstance(message, pb.BeginBatch):
                self.batches += 1
            if self._format == "json":
                self._out.write(json.dumps(_as_dict(message), allow_nan=False) + "\n")
            elif self._format == "table":
                if isinstance(message, pb.Point):
                    row = _as_dict(message)
                    row["name"] = row["name"] or self._batch_name
                    self._rows.append(row)
                elif isinstance(message, pb.BeginBatch):
                    self._batch_name = message.name
            elif isinstance(message, pb.BeginBatch):
                self._batch_name = message.name
                self._out.write(
                    f"# batch {message.name} group={message.group!r} size={message.size}\n"
                )
            elif isinstance(message, pb.EndBatch):
                self._out.write(
                    f"# end {message.name} group={message.group!r} tmax={message.tmax}\n"
                )
            else:
                self._out.write(format_line(message, self._batch_name) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._format != "table" or not self._rows or self.broken:
            return
        try:
            self._table()
        except BrokenPipeError:
            self.broken = True

    def _table(self) -> None:
        tags = sorted({k for r in self._rows for k in r["tags"]})
        fields = sorted({k for r in self._rows for k in r["fields"]})
        header = ["time", "name", *tags, *fields]
        table = [header] + [
            [str(r["time"]), r["name"], *(r["tags"].get(t, "") for t in tags),
             *(_cell(r["fields"].get(f)) for f in fields)]
            for r in self._rows
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            cells = (c.ljust(w) for c, w in zip(row, widths, strict=True))
            self._out.write("  ".join(cells).rstrip() + "\n")
        self._out.flush()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
