"""InfluxDB line protocol, read into rows: what ``influx -execute``, Telegraf files and
``influxd inspect export`` produce, so an export is training data as it is.

The grammar, per InfluxDB's reference: ``measurement[,tag=value...] field=value[,...]
[timestamp]``. In the measurement, commas and spaces are escaped with a
backslash; in tag keys, tag values and field keys, commas, equals signs and
spaces are. Field values are floats (``1``, ``-1.5e3``), integers (``1i``),
unsigned integers (``1u``), booleans (``t``, ``true``, ``F``, ``FALSE``, ...) or
double-quoted strings in which ``\\"`` and ``\\\\`` are escaped. Two backslashes
are one everywhere; a backslash before any other character is literal. Numbers
are what the reference allows: no ``nan``, ``inf`` or digit separators. The
timestamp is an integer in the given precision (nanoseconds by default).
A string field value that spans lines is not supported (the line ends there).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from udfd.history.rows import FieldValue, HistoryError, Row

PRECISIONS = {
    "ns": 1,
    "n": 1,
    "us": 1_000,
    "u": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_FLOAT = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INT = re.compile(r"-?\d+")
_UINT = re.compile(r"\d+")
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})


class LineProtocolError(HistoryError):
    pass


def _scan(line: str, start: int, stops: str, escapes: str = ",= ") -> tuple[str, int]:
    """Read up to the first unescaped char of ``stops``; returns the unescaped text and
    the index of that char (len(line) at the end). A backslash escapes only a char
    of ``escapes``; before anything else it is itself."""
    out: list[str] = []
    i = start
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and (line[i + 1] in escapes or line[i + 1] == "\\"):
            out.append(line[i + 1])
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _string_value(line: str, start: int) -> tuple[str, int]:
    """A double-quoted string field starting at ``start`` (the quote)."""
    out: list[str] = []
    i = start + 1
    n = len(line)
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
            out.append(line[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise LineProtocolError("unterminated string field value")


def _number_or_bool(text: str) -> FieldValue:
    if not text:
        raise LineProtocolError("empty field value")
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    digits, suffix = text[:-1], text[-1]
    if suffix == "i" and _INT.fullmatch(digits):
        value = int(digits)
        if not -(2**63) <= value < 2**63:
            raise LineProtocolError(f"integer field value {text!r} is out of the int64 range")
        return value
    if suffix == "u" and _UINT.fullmatch(digits):
        value = int(digits)
        if value >= 2**63:  # the UDF protocol carries integers as int64
            raise LineProtocolError(f"unsigned field value {text!r} does not fit an int64")
        return value
    if suffix == "u" and _INT.fullmatch(digits):
        raise LineProtocolError(f"unsigned field value {text!r} is negative")
    if _FLOAT.fullmatch(text):
        return float(text)
    raise LineProtocolError(f"invalid field value {text!r}")


def _simple(line: str, precision: str) -> Row | None:
    """The common line (no escapes, no string fields) by splitting; None when the line is
    not that simple or looks wrong, so the full scanner parses it (and names the error)."""
    if "\\" in line or '"' in line:
        return None
    parts = line.split(" ")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    head = parts[0].split(",")
    tags: dict[str, str] = {}
    for pair in head[1:]:
        key, eq, value = pair.partition("=")
        if not key or not eq or not value or "=" in value:
            return None
        tags[key] = value
    fields: dict[str, FieldValue] = {}
    for pair in parts[1].split(","):
        key, eq, value = pair.partition("=")
        if not key or not eq or not value or "=" in value:
            return None
        try:
            fields[key] = _number_or_bool(value)
        except LineProtocolError:
            return None
    time = None
    if len(parts) == 3:
        if not _INT.fullmatch(parts[2]):
            return None
        time = int(parts[2]) * PRECISIONS[precision]
    return Row(head[0], fields, tags, time) if head[0] else None


def parse_line(line: str, precision: str = "ns") -> Row:
    """One line of line protocol; raises :class:`LineProtocolError` saying what is wrong."""
    simple = _simple(line, precision)
    if simple is not None:
        return simple
    return _parse_full(line, precision)


def _parse_full(line: str, precision: str) -> Row:
    measurement, i = _scan(line, 0, ", ", ", ")
    if not measurement:
        raise LineProtocolError("missing measurement")
    n = len(line)
    tags: dict[str, str] = {}
    while i < n and line[i] == ",":
        key, i = _scan(line, i + 1, ",= ")
        if i >= n or line[i] != "=" or not key:
            raise LineProtocolError(f"tag {key!r} has no value")
        tag_value, i = _scan(line, i + 1, ", ")
        if not tag_value:
            raise LineProtocolError(f"tag {key!r} has an empty value")
        tags[key] = tag_value
    if i >= n or line[i] != " ":
        raise LineProtocolError("missing fields")
    while i < n and line[i] == " ":
        i += 1
    fields: dict[str, FieldValue] = {}
    while True:
        key, i = _scan(line, i, ",= ")
        if i >= n or line[i] != "=" or not key:
            raise LineProtocolError(f"field {key!r} has no value")
        i += 1
        if i < n and line[i] == '"':
            fields[key], i = _string_value(line, i)
        else:
            start = i
            while i < n and line[i] not in ", ":
                i += 1
            fields[key] = _number_or_bool(line[start:i])
        if i < n and line[i] == ",":
            i += 1
            continue
        break
    rest = line[i:].strip()
    time = None
    if rest:
        if not _INT.fullmatch(rest):
            raise LineProtocolError(f"invalid timestamp {rest!r}")
        time = int(rest) * PRECISIONS[precision]
    return Row(measurement, fields, tags, time)


def parse_numbered(raw: str, number: int, precision: str = "ns", where: str = "") -> Row | None:
    """Line ``number`` of an input: None for a blank line or a ``#`` comment; the error
    names where it is (``where:number: ...``)."""
    line = raw.rstrip("\r\n").lstrip(" \t")
    if not line.strip() or line.startswith("#"):
        return None
    try:
        return parse_line(line, precision)
    except LineProtocolError as exc:
        raise LineProtocolError(f"{where or 'line protocol'}:{number}: {exc}") from None


def parse_lines(lines: Iterable[str], precision: str = "ns", where: str = "") -> Iterator[Row]:
    """Every point of ``lines``; blank lines and ``#`` comments are skipped."""
    if precision not in PRECISIONS:
        raise LineProtocolError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    for number, raw in enumerate(lines, 1):
        row = parse_numbered(raw, number, precision, where)
        if row is not None:
            yield row


def read_line_protocol(path: Path, precision: str = "ns") -> Iterator[Row]:
    with open(path, encoding="utf-8") as f:
        yield from parse_lines(f, precision, str(path))
