"""One historical point, as every reader yields it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

FieldValue = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Row:
    measurement: str
    fields: Mapping[str, FieldValue]
    tags: Mapping[str, str] = field(default_factory=dict)
    #: nanoseconds since the epoch; None where the source had no timestamp
    time: int | None = None


class HistoryError(Exception):
    """Reading history failed; the message says where and why (shown as is by the CLI)."""
