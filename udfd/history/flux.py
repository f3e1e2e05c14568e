"""Flux queries through influxdb-client, for InfluxDB 1.8+ (Flux enabled) and 2.x.

Records are read as a stream (``query_stream``), so a long history is not held
twice. A query that ends in ``pivot(rowKey: ["_time"], columnKey: ["_field"],
valueColumn: "_value")`` (what :func:`flux_query` writes) yields one record per
point; a query without the pivot yields one record per field value, and those
are joined back into points here, by table and time.

Authentication: a 2.x token, or for 1.8 a user and password, which 1.8 takes as
the token ``user:password`` with the org ``-`` (its documented compatibility
convention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from udfd.history.rows import FieldValue, HistoryError, Row

#: columns every Flux table carries that are neither tags nor fields
_META = frozenset({"result", "table", "_start", "_stop", "_time", "_measurement"})
#: columns that differ between the records of one point's fields
_PER_FIELD = frozenset({"result", "table", "_field", "_value"})


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flux_query(bucket: str, measurement: str, fields: Sequence[str], start: str = "-30d") -> str:
    """The query for one measurement's fields, pivoted into one record per point."""
    wanted = " or ".join(f"r._field == {_quote(f)}" for f in fields)
    return (
        f"from(bucket: {_quote(bucket)})\n"
        f"  |> range(start: {start})\n"
        f"  |> filter(fn: (r) => r._measurement == {_quote(measurement)})\n"
        f"  |> filter(fn: (r) => {wanted})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
    )


def _nanoseconds(value: Any) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000
    return None


def _split(values: dict[str, Any]) -> tuple[dict[str, FieldValue], dict[str, str]]:
    """Columns of one pivoted record: strings not named like meta columns are tags."""
    fields: dict[str, FieldValue] = {}
    tags: dict[str, str] = {}
    for key, value in values.items():
        if key in _META or value is None:
            continue
        if isinstance(value, str) and not key.startswith("_"):
            tags[key] = value
        elif isinstance(value, bool | int | float | str):
            fields[key] = value
    return fields, tags


def flux_rows(
    url: str,
    query: str,
    *,
    org: str = "",
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 60.0,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[Row]:
    from influxdb_client.client.influxdb_client import InfluxDBClient  # heavy: only for Flux

    if token is None and username is not None:
        token = f"{username}:{password or ''}"  # InfluxDB 1.8's Flux authentication
    if token is None:
        raise HistoryError("Flux needs --token (2.x) or --username/--password (1.8)")
    client = InfluxDBClient(url=url, token=token, org=org or "-", timeout=int(timeout * 1000))
    pending: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    count = 0
    try:
        with client:
            for record in client.query_api().query_stream(query, org=org or "-"):
                values = dict(record.values)
                if "_field" in values and "_value" in values:
                    # not pivoted: one record per field value, each field in a table of its
                    # own; a point is what shares measurement, tags and time
                    key = tuple(
                        sorted((k, str(v)) for k, v in values.items() if k not in _PER_FIELD)
                    )
                    joined = pending.setdefault(
                        key, {k: v for k, v in values.items() if k not in ("_field", "_value")}
                    )
                    joined[str(values["_field"])] = values["_value"]
                    continue
                count += 1
                if on_rows is not None and not count % 1000:
                    on_rows(count)
                yield _row(values)
    except HistoryError:
        raise
    except Exception as exc:  # the client raises ApiException, urllib3's errors, ...
        raise HistoryError(f"Flux query at {url} failed: {_describe(exc)}") from None
    for values in pending.values():
        count += 1
        yield _row(values)
    if on_rows is not None:
        on_rows(count)


def _row(values: dict[str, Any]) -> Row:
    fields, tags = _split(values)
    return Row(str(values.get("_measurement", "")), fields, tags, _nanoseconds(values.get("_time")))


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None) or getattr(exc, "message", None)
    if status:
        return f"HTTP {status}: {body or exc}"
    return f"{type(exc).__name__}: {exc}"
