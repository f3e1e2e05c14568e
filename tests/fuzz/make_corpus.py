"""Write the seed corpus of scripts/fuzz: valid frames of every kind, and broken ones.

Run: ``python tests/fuzz/make_corpus.py``; the files are committed, so this is only
needed to change them.
"""

from __future__ import annotations

from pathlib import Path

from udfd import make_point
from udfd.protocol import wire
from udfd.protocol.framing import encode_frame
from udfd.protocol.proto import udf_pb2 as pb

HERE = Path(__file__).resolve().parent / "corpus"


def request(**kwargs: object) -> bytes:
    return wire.request_frame(pb.Request(**kwargs))  # type: ignore[arg-type]


def seeds() -> dict[str, bytes]:
    point = make_point("cpu", 7, {"v": 1.5, "n": 3, "s": "x", "b": True}, {"host": "a"}, group="g")
    options = [pb.Option(name="field", values=[pb.OptionValue(stringValue="v")])]
    return {
        "info": request(info=pb.InfoRequest()),
        "init": request(init=pb.InitRequest(taskID="t", nodeID="n", options=options)),
        "keepalive": request(keepalive=pb.KeepaliveRequest(time=123456789)),
        "snapshot": request(snapshot=pb.SnapshotRequest()),
        "restore-garbage": request(restore=pb.RestoreRequest(snapshot=b"\xff\x00not json")),
        "stream": b"".join(wire.point_request_frame(point) for _ in range(3)),
        "batch": request(begin=pb.BeginBatch(name="cpu", group="g", size=1))
        + wire.point_request_frame(point)
        + request(end=pb.EndBatch(name="cpu", group="g", tmax=9)),
        "long-prefix": encode_frame(bytes(300)),
        "overlong-varint": b"\xff" * 11,
        "truncated": wire.point_request_frame(point)[:-2],
        "empty-frame": b"\x00",
        "not-a-request": encode_frame(b"\x12\x03abc"),
    }


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, data in seeds().items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
