"""udfd: one asyncio daemon serving many Kapacitor UDF handlers, each on its own unix socket.

The names here are the handler API; everything else is the daemon's business.
"""

from __future__ import annotations

from udfd.errors import (
    FieldTypeError,
    InitFailed,
    MissingField,
    OptionsError,
    PointError,
    ProtocolError,
    RestoreFailed,
    TaskError,
    UdfdError,
)
from udfd.handler import BatchHandler, Context, Edge, Handler, Output, batch_output
from udfd.options import ConfigOnly, Flag, NoOptions, Options
from udfd.points import (
    BeginBatch,
    EndBatch,
    FieldValue,
    Point,
    derive,
    fields,
    get_field,
    get_number,
    group_key,
    has_field,
    make_point,
    remove_field,
    replace_fields,
    set_field,
)
from udfd.state import GroupState, SnapshotError

__version__ = "0.1.0"

__all__ = [
    "BatchHandler",
    "BeginBatch",
    "ConfigOnly",
    "Context",
    "Edge",
    "EndBatch",
    "FieldTypeError",
    "FieldValue",
    "Flag",
    "GroupState",
    "Handler",
    "InitFailed",
    "MissingField",
    "NoOptions",
    "Options",
    "OptionsError",
    "Output",
    "Point",
    "PointError",
    "ProtocolError",
    "RestoreFailed",
    "SnapshotError",
    "TaskError",
    "UdfdError",
    "__version__",
    "batch_output",
    "derive",
    "fields",
    "get_field",
    "get_number",
    "group_key",
    "has_field",
    "make_point",
    "remove_field",
    "replace_fields",
    "set_field",
]
