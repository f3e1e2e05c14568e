"""state_change: pass a point on only when the state it reports changes.

Devices that poll a state (an ADSL line's ``SHOWTIME``/``TRAINING``, a door's
open/closed) report the same value over and over; alerts and dashboards want the
edges. This is Kapacitor's ``changeDetect`` plus what its users keep asking for:
several fields, the previous value and how long it lasted, debouncing, string
normalisation, and state that survives a task restart.

Comparison is by type *and* value, as ``changeDetect`` compares Go interface
values: ``1`` (int), ``1.0`` (float), ``"1"`` (string) and ``true`` are four
different states, and a field that changes type is a change. All NaNs are one
state (else every NaN would be a change).

Two entry points, because a handler class declares one edge type:
``state_change`` (stream in, stream out; state per group, snapshotted) and
``state_change_batch`` (batch in, batch out; detection restarts with each batch,
as ``changeDetect`` does on batches). Both share :class:`Detector`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Self, TypeAlias

from google.protobuf.message import DecodeError
from pydantic import Field, field_validator, model_validator
from udfd import (
    BatchHandler,
    BeginBatch,
    EndBatch,
    Flag,
    GroupState,
    Handler,
    Options,
    Point,
    SnapshotError,
    get_field,
    set_field,
)
from udfd.points import FieldValue

from ._common import FIELD_PLACEHOLDER, check_no_clash, nanoseconds, output_names, unique

#: One field's state as compared: its exact type and the (normalised) value.
StateKey: TypeAlias = tuple[tuple[type, FieldValue], ...]


class StateChangeOptions(Options):
    """Options of ``@state_change()`` and ``@state_change_batch()``."""

    #: ``.field('value')``, repeatable: a change of any of them is a change.
    field: list[str] = Field(default_factory=lambda: ["value"], min_length=1)
    #: ``.previous('prev')``: also emit the previous state's value under this name.
    previous: str | None = None
    #: ``.duration('lasted')``: also emit how long the previous state lasted.
    duration: str | None = None
    #: ``.durationUnit(1s)``: unit of ``duration`` (whole units); default nanoseconds.
    duration_unit: timedelta | None = Field(None, alias="durationUnit")
    #: ``.skipFirst()``: do not emit the first state of a group (changeDetect emits it).
    skip_first: Flag = Field(False, alias="skipFirst")
    #: ``.stable(3)``: a new state counts once seen this many times in a row.
    stable: int = Field(1, ge=1)
    #: ``.stableFor(5m)``: ... and once seen for at least this long.
    stable_for: timedelta = Field(timedelta(0), alias="stableFor", ge=timedelta(0))
    #: ``.ignoreCase()``: ``"Up"`` and ``"UP"`` are one string state.
    ignore_case: Flag = Field(False, alias="ignoreCase")
    #: ``.trim()``: leading/trailing whitespace does not make a string state differ.
    trim: Flag = False
    #: ``.normalize()``: both of the above.
    normalize: Flag = False

    @field_validator("field", mode="before")
    @classmethod
    def _one_field_as_list(cls, value: Any) -> Any:
        # a configured default (udfd.toml: field = "state") may name a single field
        return [value] if isinstance(value, str) else value

    @field_validator("field")
    @classmethod
    def _fields_unique(cls, value: list[str]) -> list[str]:
        unique(value, "field")
        return value

    @model_validator(mode="after")
    def _outputs_consistent(self) -> Self:
        written: list[str] = []
        if self.previous is not None:
            names = output_names(self.previous, self.field, "previous")
            check_no_clash(names, self.field, "previous")
            written.extend(names.values())
        if self.duration is not None:
            if not self.duration or FIELD_PLACEHOLDER in self.duration:
                raise ValueError(
                    ".duration() names one output field for the whole state; "
                    "give a plain name such as .duration('lasted')"
                )
            if self.duration in self.field:
                raise ValueError(
                    f".duration({self.duration!r}) would overwrite a field this handler "
                    "compares; choose another name"
                )
            if self.duration in written:
                raise ValueError(
                    f".duration({self.duration!r}) and .previous() would write the same field"
                )
        if self.duration_unit is not None:
            if self.duration is None:
                raise ValueError(".durationUnit() only applies together with .duration(name)")
            if self.duration_unit <= timedelta(0):
                raise ValueError(
                    ".durationUnit() must be at least 1us (udfd receives durations with "
                    "microsecond precision); leave it out for nanoseconds"
                )
        return self


@dataclass(slots=True)
class _Candidate:
    """A new state seen but not yet confirmed by ``stable``/``stableFor``."""

    key: StateKey
    values: list[FieldValue]
    point: Point
    count: int
    first: int


@dataclass(slots=True)
class GroupTrack:
    """The confirmed state of one group, and a candidate replacing it."""

    key: StateKey | None = None
    values: list[FieldValue] = field(default_factory=list)
    #: time the confirmed state was first seen (ns)
    since: int = 0
    candidate: _Candidate | None = None


class Detector:
    """The change logic shared by the stream and the batch handler."""

    __slots__ = (
        "_debounce",
        "_duration",
        "_fields",
        "_ignore_case",
        "_previous",
        "_skip_first",
        "_stable",
        "_stable_for",
        "_trim",
        "_unit",
    )

    def __init__(self, options: StateChangeOptions) -> None:
        self._fields = tuple(options.field)
        self._previous = (
            output_names(options.previous, options.field, "previous")
            if options.previous is not None
            else None
        )
        self._duration = options.duration
        self._unit = nanoseconds(options.duration_unit) if options.duration_unit else 1
        self._skip_first = options.skip_first
        self._stable = options.stable
        self._stable_for = nanoseconds(options.stable_for)
        self._debounce = self._stable > 1 or self._stable_for > 0
        self._ignore_case = options.ignore_case or options.normalize
        self._trim = options.trim or options.normalize

    # ---- comparison

    def key_of(self, values: Iterable[FieldValue]) -> StateKey:
        key = self._key
        return tuple([key(v) for v in values])

    def _key(self, value: FieldValue) -> tuple[type, FieldValue]:
        """What is compared: the exact type (``bool`` is not ``int``) and the value."""
        kind = type(value)
        if kind is float:
            return (float, "NaN") if value != value else (float, value)
        if kind is str:
            if self._trim:
                value = value.strip()  # type: ignore[union-attr]
            if self._ignore_case:
                value = value.casefold()  # type: ignore[union-attr]
        return (kind, value)

    def values(self, point: Point) -> list[FieldValue]:
        """The tracked fields of a point; a missing one drops the point (MissingField)."""
        doubles = point.fieldsDouble
        return [
            doubles[name] if name in doubles else get_field(point, name) for name in self._fields
        ]

    # ---- detection

    def observe(self, track: GroupTrack, point: Point) -> Point | None:
        """Feed one point; return the point to emit, if this point confirms a change."""
        values = self.values(point)
        key = self.key_of(values)
        if key == track.key:
            track.candidate = None  # a blip that went back is forgotten
            return None
        if not self._debounce:
            return self._commit(track, key, values, point, point.time)
        candidate = track.candidate
        if candidate is not None and candidate.key == key:
            candidate.count += 1
        else:
            candidate = track.candidate = _Candidate(key, values, point, 1, point.time)
        if candidate.count >= self._stable and point.time - candidate.first >= self._stable_for:
            track.candidate = None
            return self._commit(
                track, candidate.key, candidate.values, candidate.point, candidate.first
            )
        return None

    def _commit(
        self,
        track: GroupTrack,
        key: StateKey,
        values: list[FieldValue],
        point: Point,
        since: int,
    ) -> Point | None:
        """Make the new state the group's; the point that started it is what is emitted."""
        first = track.key is None
        out: Point | None = None
        if not (first and self._skip_first):
            out = point
            if not first:
                if self._previous is not None:
                    for name, value in zip(self._fields, track.values, strict=True):
                        set_field(out, self._previous[name], value)
                if self._duration is not None:
                    set_field(out, self._duration, _per_unit(since - track.since, self._unit))
        track.key, track.values, track.since = key, values, since
        return out

    # ---- snapshot form (JSON keeps bool/int/float/str apart, NaN and inf included)

    def dump(self, track: GroupTrack) -> dict[str, Any]:
        data: dict[str, Any] = {
            "fields": list(self._fields),
            "values": track.values if track.key is not None else None,
            "since": track.since,
        }
        c = track.candidate
        if c is not None:
            data["candidate"] = {
                "values": c.values,
                "point": base64.b64encode(c.point.SerializeToString()).decode(),
                "count": c.count,
                "first": c.first,
            }
        return data

    def load(self, data: Any) -> GroupTrack:
        """Rebuild a group's track; keys are recomputed, so changed normalisation applies.

        State saved for other ``.field()`` names describes another state: the group
        starts afresh rather than failing Restore, which would stop the task.
        """
        track = GroupTrack()
        try:
            if list(data["fields"]) != list(self._fields):
                return track
            if data["values"] is not None:
                track.values = self._checked(data["values"])
                track.key = self.key_of(track.values)
                track.since = int(data["since"])
            c = data.get("candidate")
            if c is not None:
                point = Point()
                point.ParseFromString(base64.b64decode(c["point"], validate=True))
                values = self._checked(c["values"])
                track.candidate = _Candidate(
                    self.key_of(values), values, point, int(c["count"]), int(c["first"])
                )
        except (KeyError, TypeError, ValueError, DecodeError) as exc:
            raise SnapshotError(f"state_change snapshot: malformed group state ({exc})") from None
        return track

    def _checked(self, values: Any) -> list[FieldValue]:
        if not isinstance(values, list) or len(values) != len(self._fields):
            raise ValueError(f"expected {len(self._fields)} values, got {values!r}")
        for value in values:
            if not isinstance(value, str | bool | int | float):
                raise ValueError(f"{value!r} is not a field value")
        return values


def _per_unit(ns: int, unit: int) -> int:
    """Whole units, truncated toward zero as Go's duration division (and Kapacitor) does."""
    whole = abs(ns) // unit
    return whole if ns >= 0 else -whole


class StateChange(Handler[StateChangeOptions]):
    """``@state_change()``: stream in, stream out; one state per group."""

    def init(self) -> None:
        self._detector = Detector(self.options)
        self._observe = self._detector.observe
        self.tracks = GroupState(GroupTrack, dump=self._detector.dump, load=self._detector.load)

    def point(self, point: Point) -> Point | None:
        return self._observe(self.tracks[point.group], point)


class StateChangeBatch(BatchHandler[StateChangeOptions]):
    """``@state_change_batch()``: batch in, batch out; each batch starts afresh.

    Nothing outlives a batch, so there is no state to snapshot: a restart loses
    at most the batch in flight, which Kapacitor re-queries anyway.
    """

    def init(self) -> None:
        self._detector = Detector(self.options)

    def point(self, point: Point) -> None:
        # check the fields here so one bad point is dropped, not its whole batch
        self._detector.values(point)
        super().point(point)

    def process_batch(self, points: list[Point], begin: BeginBatch, end: EndBatch) -> list[Point]:
        track = GroupTrack()
        out: list[Point] = []
        for point in points:
            emitted = self._detector.observe(track, point)
            if emitted is not None:
                out.append(emitted)
        return out
