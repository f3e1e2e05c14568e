"""``udfd run``: a handler on line protocol without Kapacitor, through the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess
from golden import ADSL, ADSL_CHANGES

from udfd.protocol.proto import udf_pb2 as pb
from udfd.run.feed import batches_by_size, batches_by_window, points_from_lines
from udfd.run.options import OptionSyntaxError, parse_opt
from udfd.run.output import format_line

HANDLERS = Path(__file__).resolve().parent / "daemon_handlers"
ADSL_LP = "".join(f'adsl_connection,host=router1 value="{v}" {t}\n' for t, v in ADSL)


def udfd_run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "udfd", "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_state_change_prints_exactly_the_six_changes_of_the_golden_data() -> None:
    # the README's command, on the file it names (the golden data, one copy in the repo)
    readme_file = Path(__file__).resolve().parents[1] / "docs" / "adsl.lp"
    assert readme_file.read_text() == ADSL_LP
    done = udfd_run("state_change", "--opt", "field=value", stdin=readme_file.read_text())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f'adsl_connection,host=router1 value="{v}" {t}' for t, v in ADSL_CHANGES
    ]
    assert "udfd run: 17 point(s) in, 6 out" in done.stderr


def test_options_are_typed_as_a_tickscript_types_literals() -> None:
    def kinds(text: str) -> list[int]:
        return [v.type for v in parse_opt(text).values]

    assert kinds("size=10") == [pb.INT]
    assert kinds("scale=1.5") == [pb.DOUBLE]
    assert kinds("window=5m") == [pb.DURATION]
    assert parse_opt("window=1h30m").values[0].durationValue == 5400 * 10**9
    assert kinds("name='x'") == kinds("name=value") == [pb.STRING]
    assert kinds("on=TRUE") == [pb.BOOL]
    assert kinds("s=str:10") == [pb.STRING] and parse_opt("s=str:10").values[0].stringValue == "10"
    assert kinds("range=10,20.5") == [pb.INT, pb.DOUBLE]
    assert parse_opt("x='a,b'").values[0].stringValue == "a,b"
    assert kinds("flag") == []
    with pytest.raises(OptionSyntaxError, match="not a valid int"):
        parse_opt("n=int:ten")
    with pytest.raises(OptionSyntaxError, match="expected name=value"):
        parse_opt("=3")


def test_init_errors_are_the_ones_kapacitor_would_show() -> None:
    typo = udfd_run("state_change", "--opt", "fild=value", stdin=ADSL_LP)
    assert typo.returncode == 2
    assert "Init failed: state_change: unknown option 'fild'" in typo.stderr
    wrong_type = udfd_run("moving_average", "--opt", "field=v", "--opt", "size=ten", stdin="")
    assert wrong_type.returncode == 2 and "Init failed: moving_average:" in wrong_type.stderr
    assert "size" in wrong_type.stderr
    missing = udfd_run("moving_average", "--opt", "field=v", stdin="")
    assert "option 'size' is required: .size(int)" in missing.stderr
    assert udfd_run("no_such_module:Nope").returncode == 3


def test_batches_by_size_and_window_per_group(tmp_path: Path) -> None:
    lines = [f"cpu,host=h{i % 2} v={float(i)} {i * 10**9}" for i in range(10)]
    points = list(points_from_lines(lines, group_by=["host"]))
    assert {p.group for p in points} == {"host=h0", "host=h1"}
    assert all(list(p.dimensions) == ["host"] for p in points)
    sized = list(batches_by_size(points, 2))
    assert [(b.group, b.size) for b, _, _ in sized] == [("host=h0", 2), ("host=h1", 2)] * 2 + [
        ("host=h0", 1),
        ("host=h1", 1),
    ]
    for begin, body, end in sized:  # batch points carry only time, group, tags, fields
        assert all(p.name == "" and p.group == begin.group for p in body)
        assert end.tmax == body[-1].time and dict(begin.tags) == {"host": body[0].tags["host"]}
    windows = list(batches_by_window(points, 4 * 10**9))
    assert [(b.group, len(p), e.tmax) for b, p, e in windows] == [
        ("host=h0", 2, 4 * 10**9),
        ("host=h1", 2, 4 * 10**9),
        ("host=h0", 2, 8 * 10**9),
        ("host=h1", 2, 8 * 10**9),
        ("host=h0", 1, 12 * 10**9),
        ("host=h1", 1, 12 * 10**9),
    ]
    path = tmp_path / "cpu.lp"
    path.write_text("\n".join(lines) + "\n")
    # a batch handler through the engine: outliers with a tight scale flags the extremes
    done = udfd_run("outliers", str(path), "--opt", "field=v", "--opt", "scale=0.1",
                    "--batch-size", "5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# batch cpu group='' size=")
    assert "# end cpu group=''" in done.stdout
    assert udfd_run("outliers", str(path), "--opt", "field=v").returncode == 2  # needs batches


def test_output_as_json_and_as_a_table(tmp_path: Path) -> None:
    path = tmp_path / "cpu.lp"
    path.write_text("".join(f"cpu,host=h{i % 2} v={i}.0 {i}\n" for i in range(6)))
    args = (
        "moving_average",
        str(path),
        "--opt",
        "field=v",
        "--opt",
        "size=2",
        "--group-by",
        "host",
    )
    done = udfd_run(*args, "--format", "json")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["tags"]["host"], r["fields"]["avg"]) for r in rows] == [
        ("h0", 0.0), ("h1", 1.0), ("h0", 1.0), ("h1", 2.0), ("h0", 3.0), ("h1", 4.0),
    ]  # fmt: skip
    assert rows[0]["group"] == "host=h0" and rows[0]["dimensions"] == ["host"]
    table = udfd_run(*args, "--format", "table").stdout.splitlines()
    assert table[0].split() == ["time", "name", "host", "avg"]
    assert table[-1].split() == ["5", "cpu", "h1", "4.0"]


def test_bad_input_names_its_line_and_keeps_what_came_before() -> None:
    done = udfd_run("state_change", "--opt", "field=value", stdin=ADSL_LP + "not line protocol\n")
    assert done.returncode == 2
    assert "stdin:18: field 'line' has no value" in done.stderr
    assert len(done.stdout.splitlines()) == 6


def test_a_handler_error_ends_the_run_with_it() -> None:
    done = udfd_run(f"{HANDLERS}/faults.py:FailsAtPoint", stdin="m v=1 1\n")
    assert done.returncode == 1
    assert "the handler ended the task:" in done.stderr


def test_socket_drives_a_running_daemons_function(
    daemon: Callable[..., DaemonProcess],
) -> None:
    served = daemon('[functions.changes]\nhandler = "state_change"\n')
    served.wait_for("ready:")
    done = udfd_run("--socket", str(served.socket("changes")), "--opt", "field=value",
                    stdin=ADSL_LP)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 6


def test_line_protocol_output_escapes_as_influxdb_reads_it() -> None:
    point = pb.Point(name="my cpu,x", time=5)
    point.tags["a b"] = "c=d"
    point.fieldsString["s"] = 'say "hi"'
    point.fieldsInt["n"] = 3
    point.fieldsBool["ok"] = True
    point.fieldsDouble["f"] = 1.5
    line = format_line(point)
    assert line == 'my\\ cpu\\,x,a\\ b=c\\=d f=1.5,n=3i,ok=true,s="say \\"hi\\"" 5'
    (back,) = list(points_from_lines([line]))
    assert back.name == "my cpu,x" and dict(back.tags) == {"a b": "c=d"}
    assert back.fieldsString["s"] == 'say "hi"' and back.fieldsInt["n"] == 3
