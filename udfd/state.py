"""Per-group state that snapshots and restores itself.

Kapacitor asks for snapshots about once a minute and hands the bytes back when the
task restarts; a handler that forgets part of its state there reports spurious
changes after every restart. Keeping state in :class:`GroupState` attributes makes
the default ``Handler.snapshot``/``restore`` correct without handler code.

Snapshots are JSON inside a small versioned envelope, so they survive udfd
upgrades, can be read by people, and fail loudly (not silently wrong) when a
handler's state layout changes without a migration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from udfd.errors import PointError, UdfdError

S = TypeVar("S")

SNAPSHOT_FORMAT = "udfd-state"


class SnapshotError(UdfdError):
    """Snapshot bytes that cannot be restored into this handler."""


def _identity(value: Any) -> Any:
    return value


class TooManyGroups(PointError):
    """A point of a new group, beyond ``max_groups``: dropped and counted."""


class GroupState(dict[str, S]):
    """A mapping from group key to one state object, created on first use.

    ``dump`` turns a state into JSON-serialisable data and ``load`` reverses it;
    both default to the identity, which suits states that are JSON already
    (numbers, strings, lists, dicts).

    It is a ``dict`` itself, so ``state[group]`` is one lookup in C for every
    point: only a group seen for the first time reaches Python (``__missing__``).
    """

    __slots__ = ("_dump", "_factory", "_load", "limit")

    def __init__(
        self,
        factory: Callable[[], S],
        *,
        dump: Callable[[S], Any] = _identity,
        load: Callable[[Any], S] = _identity,
    ) -> None:
        super().__init__()
        self._factory = factory
        self._dump = dump
        self._load = load
        #: the most groups it holds (0: no bound); udfd sets it from ``max_groups`` after
        #: Init, so a peer sending ever new groups cannot grow a connection's memory
        self.limit = 0

    def __missing__(self, group: str) -> S:
        if self.limit and len(self) >= self.limit:
            raise TooManyGroups(
                f"{len(self)} groups are kept already (max_groups = {self.limit}): a point "
                f"of the new group {group!r} is dropped"
            )
        state = self[group] = self._factory()
        return state

    # dicts compare by content; a handler's state is one object, compared by identity
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GroupState({dict.__repr__(self)})"

    def to_json(self) -> dict[str, Any]:
        return {group: self._dump(state) for group, state in self.items()}

    def load_json(self, data: Mapping[str, Any]) -> None:
        states = {str(group): self._load(value) for group, value in data.items()}
        self.clear()  # only once every state loaded: a failed load keeps the old ones
        self.update(states)


def encode_snapshot(
    handler_name: str, version: int, states: Mapping[str, GroupState[Any]]
) -> bytes:
    if not states:
        return b""
    envelope = {
        "format": SNAPSHOT_FORMAT,
        "handler": handler_name,
        "version": version,
        "states": {name: state.to_json() for name, state in states.items()},
    }
    return json.dumps(envelope, separators=(",", ":"), allow_nan=True).encode()


def decode_snapshot(data: bytes) -> tuple[str, int, dict[str, Any]]:
    """Parse a snapshot envelope into (handler name, version, states)."""
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"snapshot is not udfd state JSON: {exc}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError("snapshot was not written by udfd's group state")
    states = envelope.get("states")
    version = envelope.get("version")
    if not isinstance(states, dict) or not isinstance(version, int):
        raise SnapshotError("snapshot envelope is missing its version or states")
    return str(envelope.get("handler", "")), version, states
