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
    assert missing.returncode == 2
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
    point.tags["empty"] = ""  # InfluxDB rejects an empty tag value: left out
    point.fieldsString["path"] = "C:\\dir"
    point.fieldsString["s"] = 'say "hi"'
    point.fieldsInt["n"] = 3
    point.fieldsBool["ok"] = True
    point.fieldsDouble["f"] = 1.5
    line = format_line(point)
    assert line == 'my\\ cpu\\,x,a\\ b=c\\=d f=1.5,n=3i,ok=true,path="C:\\\\dir",s="say \\"hi\\"" 5'
    (back,) = list(points_from_lines([line]))
    assert back.name == "my cpu,x" and dict(back.tags) == {"a b": "c=d"}
    assert back.fieldsString["s"] == 'say "hi"' and back.fieldsInt["n"] == 3
    assert back.fieldsString["path"] == "C:\\dir"


def test_sub_microsecond_negative_and_out_of_range_values() -> None:
    from udfd.run.options import duration_ns

    assert [duration_ns(t) for t in ("500ns", "1ns", "1.5s", "-5m", "10u", "1h30m")] == [
        500, 1, 1_500_000_000, -300 * 10**9, 10_000, 5400 * 10**9,
    ]  # fmt: skip
    assert parse_opt("t=1ns").values[0].durationValue == 1
    # what a TICKscript cannot write is a word, not a number or a bool
    assert [parse_opt(f"x={t}").values[0].type for t in (".5", "1e3", "true", "-2.5", "-3")] == [
        pb.STRING, pb.STRING, pb.STRING, pb.DOUBLE, pb.INT,
    ]  # fmt: skip
    too_big = udfd_run("moving_average", "--opt", "size=99999999999999999999", stdin="")
    assert too_big.returncode == 2 and "out of range for a 64-bit integer" in too_big.stderr
    huge = udfd_run("state_change", "--opt", "field=v", stdin="m v=18446744073709551615u 1\n")
    assert huge.returncode == 2 and "stdin:1: unsigned field value" in huge.stderr
    assert "Traceback" not in too_big.stderr + huge.stderr


def test_output_that_line_protocol_cannot_carry_is_said_in_a_comment(tmp_path: Path) -> None:
    odd = pb.Point(name="m", time=7)
    odd.tags["host"] = ""
    odd.fieldsDouble["bad"] = float("nan")
    odd.fieldsDouble["ok"] = 1.0
    assert format_line(odd) == "m ok=1.0 7\n# ^ fields left out (NaN or infinite): bad"
    only_nan = pb.Point(name="m", time=7)
    only_nan.fieldsDouble["bad"] = float("inf")
    assert format_line(only_nan).startswith("# m 7 (no field line protocol can carry")
    hashed = pb.Point(name="#m", time=7)
    hashed.fieldsInt["n"] = 1
    assert format_line(hashed).startswith("# #m (a measurement beginning with '#'")
    # through the engine, from a handler given as file.py:Class, in every format
    handler = tmp_path / "nan.py"
    handler.write_text(
        "import udfd\n\n\nclass Nan(udfd.Handler[udfd.NoOptions]):\n"
        "    def point(self, point):\n"
        "        return udfd.derive(point, {'ratio': float('nan')})\n"
    )
    for fmt in ("lp", "json", "table"):
        done = udfd_run(f"{handler}:Nan", "--format", fmt, stdin="m v=1 1\n")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = udfd_run(f"{handler}:Nan", "--format", "json", stdin="m v=1 1\n").stdout
    assert json.loads(lines)["fields"] == {"ratio": None}  # derive() replaces the fields


def test_piped_input_is_handled_as_it_arrives() -> None:
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "udfd", "run", "state_change", "--opt", "field=value", "-q", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(ADSL_LP.splitlines(keepends=True)[0])
        proc.stdin.flush()
        started = time.monotonic()
        first = proc.stdout.readline()  # before the input ends: the pipe stays open
        waited = time.monotonic() - started
        assert first.startswith('adsl_connection,host=router1 value="SHOWTIME"')
        assert proc.poll() is None
    finally:
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == 0
    print(f"\nfirst output {waited:.2f}s after the first line, with the input still open")


def test_a_socket_nobody_serves_and_a_line_without_a_timestamp() -> None:
    gone = udfd_run("--socket", "/nonexistent/udf.sock", "--opt", "field=value", stdin=ADSL_LP)
    assert gone.returncode == 2 and "cannot connect to /nonexistent/udf.sock" in gone.stderr
    import time

    before = time.time_ns()
    (point,) = points_from_lines(["m v=1"])
    assert before <= point.time <= time.time_ns()  # stamped now, as InfluxDB does
