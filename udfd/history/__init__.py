"""Historical data as rows of points: from line-protocol and CSV files, InfluxQL and Flux.

What ``udfd train`` learns from, and what a developer replays through a UDF: the
same :class:`Row` whatever the source, so a model trained from an export and one
trained from a live InfluxDB see identical data.
"""

from __future__ import annotations

from udfd.history.rows import Row

__all__ = ["Row"]
