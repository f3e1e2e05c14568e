"""docs/api.md is generated from the docstrings; this fails when they drift apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_reference_matches_the_code() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "apidoc.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr + "\n(run: python scripts/apidoc.py)"


def test_the_reference_covers_the_public_handler_api() -> None:
    import udfd

    page = (ROOT / "docs" / "api.md").read_text()
    for name in udfd.__all__:
        if not name.startswith("__"):
            assert f"udfd.{name}" in page, name
    assert "(no docstring)" not in page
    for needed in ("serve_handler", "UdfClient", "fixture `udf`", "check_conformance",
                   "GroupState", "NoOptions", "BatchHandler"):  # fmt: skip
        assert needed in page, needed
