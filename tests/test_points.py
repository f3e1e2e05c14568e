"""The point helpers against a plain reference: fast paths must not change results."""

from __future__ import annotations

import enum
import random
from typing import Any

import pytest

import udfd
from udfd.engine.output import Encoded, OutputBuffer
from udfd.errors import OutputError
from udfd.protocol import wire
from udfd.protocol.proto import udf_pb2 as pb

MAPS = ("fieldsDouble", "fieldsInt", "fieldsString", "fieldsBool")


def map_of(value: Any) -> str:
    if isinstance(value, bool):
        return "fieldsBool"
    if isinstance(value, int):
        return "fieldsInt"
    if isinstance(value, float):
        return "fieldsDouble"
    return "fieldsString"


def reference_fields(point: pb.Point) -> dict[str, tuple[str, Any]]:
    """Every field with the map it sits in; a name in two maps would show up as a clash."""
    out: dict[str, tuple[str, Any]] = {}
    for m in MAPS:
        for name, value in getattr(point, m).items():
            assert name not in out, f"{name!r} is in {out[name][0]} and {m}"
            out[name] = (m, value)
    return out


def identity(point: pb.Point) -> tuple[Any, ...]:
    return (
        point.name,
        point.database,
        point.retentionPolicy,
        point.group,
        point.byName,
        list(point.dimensions),
        dict(point.tags),
        point.time,
    )


def random_point(rng: random.Random) -> pb.Point:
    values: list[Any] = [1.5, -2, "up", True, False, 0, 7.25, "", 2**62]
    fields = {f"f{i}": rng.choice(values) for i in range(rng.randint(0, 5))}
    tags = {f"t{i}": f"v{rng.randint(0, 9)}" for i in range(rng.randint(0, 3))}
    return udfd.make_point(
        rng.choice(["cpu", "mem"]),
        rng.randint(0, 10**18),
        fields,
        tags,
        group=rng.choice(["", "host=a", "host=b"]),
        dimensions=sorted(tags)[:1],
        by_name=rng.random() < 0.5,
    )


def random_values(rng: random.Random) -> dict[str, Any]:
    values: list[Any] = [3.5, 4, "down", False, True, 9.0, "x"]
    return {f"f{rng.randint(0, 6)}": rng.choice(values) for _ in range(rng.randint(0, 4))}


@pytest.mark.parametrize("seed", range(200))
def test_derive_replace_and_set_agree_with_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    point = random_point(rng)
    values = random_values(rng)
    original = point.SerializeToString()
    want_new = {name: (map_of(v), v) for name, v in values.items()}
    want_kept = {**reference_fields(point), **want_new}

    derived = udfd.derive(point, values)
    assert identity(derived) == identity(point) and reference_fields(derived) == want_new
    kept = udfd.derive(point, values, keep_fields=True, time=5)
    assert identity(kept)[:-1] == identity(point)[:-1] and kept.time == 5
    assert reference_fields(kept) == want_kept
    assert point.SerializeToString() == original  # derive never touches its input

    for name, value in values.items():
        udfd.set_field(point, name, value)
    assert reference_fields(point) == want_kept

    before = identity(point)
    same = udfd.replace_fields(point, values)
    assert same is point and identity(same) == before
    assert reference_fields(same) == want_new


def test_field_values_of_subclasses_are_stored_as_their_builtin() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str):
        pass

    point = udfd.make_point("m", 1, {"level": 1.0, "name": 2})
    udfd.set_field(point, "level", Level.HIGH)
    udfd.set_field(point, "name", Name("x"))
    assert reference_fields(point) == {"level": ("fieldsInt", 3), "name": ("fieldsString", "x")}
    with pytest.raises(TypeError, match="not a field type"):
        udfd.set_field(point, "bad", [1])  # type: ignore[arg-type]
    udfd.remove_field(point, "level")
    assert reference_fields(point) == {"name": ("fieldsString", "x")}


def test_group_state_creates_on_first_use_and_is_one_object() -> None:
    made: list[int] = []
    state: udfd.GroupState[list[int]] = udfd.GroupState(lambda: made.append(1) or [])  # type: ignore[func-returns-value]
    state["a"].append(1)
    state["a"].append(2)
    assert state["a"] == [1, 2] and len(made) == 1 and "b" not in state and state.get("b") is None
    other: udfd.GroupState[list[int]] = udfd.GroupState(list)
    other["a"].extend([1, 2])
    assert state != other and state == state  # states compare by identity, not content
    assert isinstance(hash(state), int)  # usable as a key, as before it was a dict


def test_group_state_keeps_its_states_when_a_load_fails() -> None:
    def load(data: Any) -> int:
        if not isinstance(data, int):
            raise udfd.SnapshotError("not an int")
        return data

    state: udfd.GroupState[int] = udfd.GroupState(int, load=load)
    state["a"] = 1
    with pytest.raises(udfd.SnapshotError):
        state.load_json({"a": 2, "b": "x"})
    assert dict(state) == {"a": 1}
    state.load_json({"b": 3})
    assert dict(state) == {"b": 3} and state.to_json() == {"b": 3}


def test_encoded_output_is_framed_like_any_other() -> None:
    point = udfd.make_point("cpu", 1, {"v": 1.0})
    frame = wire.point_frame(point)
    stream = OutputBuffer(provides_batch=False)
    stream.add(Encoded([frame, frame]))
    stream.add_stream_frame(frame)
    assert stream.points == 3 and stream.take() == frame * 3

    batch = OutputBuffer(provides_batch=True)
    with pytest.raises(OutputError, match="outside BeginBatch"):
        batch.add(Encoded([frame]))
    batch.add(Encoded([pb.BeginBatch(name="cpu", size=99), frame, frame, pb.EndBatch(name="cpu")]))
    data = batch.take()
    assert data.startswith(wire.begin_frame(pb.BeginBatch(name="cpu", size=2)))  # exact size
    assert batch.points == 2
