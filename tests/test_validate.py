"""``udfd validate`` and ``udfd list``: a config checked without serving it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def udfd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "udfd", *args], capture_output=True, text=True, timeout=120
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "udfd.toml"
    path.write_text(f'socket_dir = "{tmp_path / "s"}"\nstate_dir = "{tmp_path / "state"}"\n' + text)
    return path


BROKEN = """
[functions.good]
handler = "moving_average"
[functions.good.options]
field = "usage"

[functions.typo_handler]
handler = "moving_averag"

[functions.typo_option]
handler = "moving_average"
[functions.typo_option.options]
feild = "usage"

[functions.bad_value]
handler = "moving_average"
[functions.bad_value.options]
size = "ten"
"""


def test_every_problem_is_reported_in_one_round_with_the_config_exit_code(tmp_path: Path) -> None:
    done = udfd("validate", "--config", str(write(tmp_path, BROKEN)))
    assert done.returncode == 3, done.stdout + done.stderr
    out = done.stdout
    assert "ok   good" in out
    assert "FAIL typo_handler" in out and "moving_averag" in out
    assert "FAIL typo_option" in out and "has no option 'feild'" in out
    assert "FAIL bad_value" in out and "functions.bad_value.options.size" in out
    assert "1 function(s) valid, 3 invalid" in out
    assert not (tmp_path / "s").exists()  # no socket was bound, no directory made


def test_a_valid_config_exits_0_and_says_which_options_are_required(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN.split("[functions.typo_handler]")[0])
    done = udfd("validate", "--config", str(path))
    assert done.returncode == 0, done.stdout
    assert ".size(int)  (required)" in done.stdout
    assert ".field(string)  (default 'usage' from the config)" in done.stdout
    rows = json.loads(udfd("validate", "--config", str(path), "--json").stdout)
    assert rows[0]["required"] == ["size"] and rows[0]["defaults"] == {"field": "usage"}
    assert rows[0]["socket"] == str(tmp_path / "s" / "good.sock")


def test_an_invalid_config_file_is_still_exit_3(tmp_path: Path) -> None:
    done = udfd("validate", "--config", str(write(tmp_path, "workers = 0\n[functions.f]\n")))
    assert done.returncode == 3 and "workers" in done.stderr


def test_list_shows_the_configured_functions_too(tmp_path: Path) -> None:
    done = udfd("list", "--config", str(write(tmp_path, BROKEN)))
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("configured functions (")[1]
    assert "ok   good  handler 'moving_average'  pool default" in listed
    assert "FAIL bad_value" in listed
    doc = json.loads(udfd("list", "--config", str(write(tmp_path, BROKEN)), "--json").stdout)
    assert {f["name"] for f in doc["functions"]} == {"good", "typo_handler", "typo_option",
                                                     "bad_value"}  # fmt: skip
    assert any(h["name"] == "moving_average" for h in doc["handlers"])
