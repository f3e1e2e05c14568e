"""The schema: generated code is fresh, the runtime range fits it, field numbers match the protocol."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from udfd.protocol.proto import udf_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("udf_pb2.py", "udf_pb2.pyi"):
        fresh = (tmp_path / "udfd" / "protocol" / "proto" / name).read_bytes()
        checked_in = (ROOT / "udfd" / "protocol" / "proto" / name).read_bytes()
        assert fresh == checked_in, f"udfd/protocol/proto/{name} is stale: run scripts/gen_proto.py"


def _protobuf_range() -> SpecifierSet:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for dep in meta["project"]["dependencies"]:
        if re.match(r"protobuf\b", dep):
            return SpecifierSet(dep[len("protobuf") :])
    raise AssertionError("protobuf is not a dependency")


def test_runtime_range_admits_the_gencode_and_the_installed_runtime() -> None:
    text = (ROOT / "udfd" / "protocol" / "proto" / "udf_pb2.py").read_text()
    match = re.search(r"Protobuf Python Version: (\d+\.\d+\.\d+)", text)
    assert match, "generated code no longer states its gencode version"
    gencode = Version(match.group(1))
    spec = _protobuf_range()
    # the runtime must never be older than the gencode: the lowest admitted version
    # is at least the gencode version
    lowest = min(
        (Version(s.version) for s in spec if s.operator in (">=", "==", "~=")), default=None
    )
    assert lowest is not None, f"protobuf{spec} has no lower bound"
    assert lowest >= gencode, f"protobuf{spec} admits runtimes older than gencode {gencode}"
    installed = Version(version("protobuf"))
    assert installed in spec, f"installed protobuf {installed} is outside protobuf{spec}"


# Field numbers as the protocol states them (../shared/docs/kapacitor-udf-protocol.md).
EXPECTED_FIELDS = {
    "Point": {
        "time": 1,
        "name": 2,
        "database": 3,
        "retentionPolicy": 4,
        "group": 5,
        "dimensions": 6,
        "tags": 7,
        "fieldsDouble": 8,
        "fieldsInt": 9,
        "fieldsString": 10,
        "byName": 11,
        "fieldsBool": 12,
    },
    "BeginBatch": {"name": 1, "group": 2, "tags": 3, "size": 4, "byName": 5},
    "EndBatch": {"name": 1, "group": 2, "tmax": 3, "tags": 4, "byName": 5},
    "Request": {
        "info": 1,
        "init": 2,
        "keepalive": 3,
        "snapshot": 4,
        "restore": 5,
        "begin": 16,
        "point": 17,
        "end": 18,
    },
    "Response": {
        "info": 1,
        "init": 2,
        "keepalive": 3,
        "snapshot": 4,
        "restore": 5,
        "error": 6,
        "begin": 16,
        "point": 17,
        "end": 18,
    },
    "InfoResponse": {"wants": 1, "provides": 2, "options": 3},
    "OptionInfo": {"valueTypes": 1},
    "InitRequest": {"options": 1, "taskID": 2, "nodeID": 3},
    "Option": {"name": 1, "values": 2},
    "OptionValue": {
        "type": 1,
        "boolValue": 2,
        "intValue": 3,
        "doubleValue": 4,
        "stringValue": 5,
        "durationValue": 6,
    },
    "InitResponse": {"success": 1, "error": 2},
    "SnapshotResponse": {"snapshot": 1},
    "RestoreRequest": {"snapshot": 1},
    "RestoreResponse": {"success": 1, "error": 2},
    "KeepaliveRequest": {"time": 1},
    "KeepaliveResponse": {"time": 1},
    "ErrorResponse": {"error": 1},
}


@pytest.mark.parametrize("message", sorted(EXPECTED_FIELDS))
def test_field_numbers_match_the_protocol(message: str) -> None:
    descriptor = getattr(pb, message).DESCRIPTOR
    got = {f.name: f.number for f in descriptor.fields}
    assert got == EXPECTED_FIELDS[message]


def test_enum_values_match_the_protocol() -> None:
    assert (pb.STREAM, pb.BATCH) == (0, 1)
    assert (pb.BOOL, pb.INT, pb.DOUBLE, pb.STRING, pb.DURATION) == (0, 1, 2, 3, 4)


def test_known_bytes_decode() -> None:
    # Request{keepalive{time: 5}}: field 3, length 2, then field 1 varint 5
    request = pb.Request.FromString(bytes([0x1A, 0x02, 0x08, 0x05]))
    assert request.WhichOneof("message") == "keepalive"
    assert request.keepalive.time == 5
    # Response{point{fieldsBool{"x": true}}} uses field 12 inside field 17
    response = pb.Response(point=pb.Point(fieldsBool={"x": True}))
    assert response.SerializeToString() == bytes(
        [0x8A, 0x01, 0x07, 0x62, 0x05, 0x0A, 0x01, ord("x"), 0x10, 0x01]
    )
