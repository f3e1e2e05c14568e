"""CSV files with a header row, as spreadsheets and ``influx -format csv`` write them.

Columns named ``time``/``_time`` hold the timestamp (integer nanoseconds, or
RFC 3339), ``name``/``measurement``/``_measurement`` the measurement; ``influx``'s
``tags`` column is ignored. Every other column is a field whose cells are typed
one by one: integer, float, ``true``/``false``, else string. An empty cell is
an absent field, as in InfluxDB, where a point need not carry every field.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from udfd.history.rows import FieldValue, HistoryError, Row

TIME_COLUMNS = ("time", "_time")
MEASUREMENT_COLUMNS = ("measurement", "_measurement", "name")
IGNORED_COLUMNS = ("tags",)


def cell_value(text: str) -> FieldValue:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def parse_time(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HistoryError(f"time {text!r} is neither integer nanoseconds nor RFC 3339") from None
    return int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000


def read_csv(path: Path, measurement: str = "") -> Iterator[Row]:
    """Rows of ``path``; ``measurement`` names them where the file has no such column."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise HistoryError(f"{path}: no header row")
        columns = list(reader.fieldnames)
        time_col = next((c for c in TIME_COLUMNS if c in columns), None)
        name_col = next((c for c in MEASUREMENT_COLUMNS if c in columns), None)
        skip = {time_col, name_col, *IGNORED_COLUMNS}
        value_cols = [c for c in columns if c not in skip]
        for number, record in enumerate(reader, 2):
            try:
                time = parse_time(record[time_col]) if time_col and record[time_col] else None
            except HistoryError as exc:
                raise HistoryError(f"{path}:{number}: {exc}") from None
            fields = {
                c: cell_value(record[c]) for c in value_cols if record.get(c) not in ("", None)
            }
            name = record[name_col] if name_col else measurement
            yield Row(name, fields, {}, time)
