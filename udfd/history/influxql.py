"""InfluxQL over InfluxDB 1.x's HTTP API: ``/query``, streamed in chunks.

The deployments udfd serves run InfluxDB 1.x, whose ``/query`` endpoint takes
``db``, ``q`` and ``epoch=ns`` and, with ``chunked=true``, answers with one JSON
object per chunk of ``chunk_size`` rows, so a long history is never held as one
response. Each object has ``results``, each result ``series`` (``name``,
optional ``tags`` from GROUP BY, ``columns``, ``values``) or an ``error``.
Plain stdlib HTTP: the 1.x API is simple, and influxdb-client speaks only 2.x's.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from udfd.history.rows import FieldValue, HistoryError, Row

CHUNK_SIZE = 10_000


def query_url(url: str) -> str:
    return url.rstrip("/") + "/query"


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300]
    return str(data.get("error") or data)


def influxql_rows(
    url: str,
    database: str,
    query: str,
    *,
    username: str | None = None,
    password: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    timeout: float = 60.0,
    on_chunk: Callable[[int], None] | None = None,
) -> Iterator[Row]:
    """The rows ``query`` returns; ``on_chunk(rows)`` after each chunk (for progress)."""
    form = {"q": query, "epoch": "ns", "chunked": "true", "chunk_size": str(chunk_size)}
    if database:
        form["db"] = database
    request = urllib.request.Request(
        query_url(url), data=urllib.parse.urlencode(form).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if username is not None:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise HistoryError(
            f"InfluxDB at {url}: HTTP {exc.code}: {_error_text(exc.read())}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HistoryError(f"InfluxDB at {url}: cannot connect: {reason}") from None
    try:
        with response:
            yield from _chunks(response, url, on_chunk)
    except (OSError, http.client.HTTPException) as exc:  # the stream broke off midway
        raise HistoryError(f"InfluxDB at {url}: reading the answer failed: {exc}") from None


def _chunks(response: Any, url: str, on_chunk: Callable[[int], None] | None) -> Iterator[Row]:
    for line in response:
        if not line.strip():
            continue
        try:
            chunk = json.loads(line)
        except ValueError:
            raise HistoryError(f"InfluxDB at {url}: not a JSON chunk: {line[:200]!r}") from None
        if chunk.get("error"):
            raise HistoryError(f"InfluxDB at {url}: {chunk['error']}")
        count = 0
        for result in chunk.get("results", []):
            if result.get("error"):
                raise HistoryError(f"InfluxDB at {url}: {result['error']}")
            for series in result.get("series", []):
                for row in _series_rows(series):
                    count += 1
                    yield row
        if on_chunk is not None:
            on_chunk(count)


def _series_rows(series: dict[str, Any]) -> Iterator[Row]:
    name = str(series.get("name", ""))
    tags = {str(k): str(v) for k, v in (series.get("tags") or {}).items()}
    columns = list(series.get("columns", []))
    time_index = columns.index("time") if "time" in columns else None
    for values in series.get("values", []):
        fields: dict[str, FieldValue] = {}
        for column, value in zip(columns, values, strict=False):
            if column == "time" or value is None:
                continue
            fields[column] = value
        time = values[time_index] if time_index is not None else None
        yield Row(name, fields, tags, int(time) if time is not None else None)
