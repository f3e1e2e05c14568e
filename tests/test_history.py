"""The history readers on their own: line protocol as InfluxDB's reference defines it, and
CSV cells typed one by one. (InfluxQL and Flux are tested against servers, in
tests/plugins/test_train.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from udfd.history.csvfile import read_csv
from udfd.history.lineprotocol import LineProtocolError, parse_line, parse_lines
from udfd.history.rows import HistoryError, Row


def test_every_field_type_and_the_timestamp() -> None:
    row = parse_line('m,host=a f=1.5,neg=-2e3,i=7i,u=9u,s="x y",t=t,T=TRUE,f2=false 1700')
    assert row == Row(
        "m",
        {"f": 1.5, "neg": -2000.0, "i": 7, "u": 9, "s": "x y", "t": True, "T": True, "f2": False},
        {"host": "a"},
        1700,
    )
    assert isinstance(row.fields["i"], int) and isinstance(row.fields["f"], float)
    assert parse_line("m v=1").time is None
    assert parse_line("m v=1 5", precision="s").time == 5_000_000_000


def test_escapes_where_the_reference_puts_them() -> None:
    row = parse_line(r'we\,ather\ x,lo\=c=a\,b\ c,k=v f\ 1=1,s="say \"hi\" \\ ok" 3')
    assert row.measurement == "we,ather x"
    assert row.tags == {"lo=c": "a,b c", "k": "v"}
    assert row.fields["f 1"] == 1.0 and row.fields["s"] == 'say "hi" \\ ok'
    # a backslash before anything else is itself
    assert parse_line(r"m\n v=1").measurement == "m\\n"
    assert parse_line('m s="a,b=c d"').fields == {"s": "a,b=c d"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("m", "missing fields"),
        ("m v=", "empty field value"),
        ("m v=abc", "invalid field value 'abc'"),
        ('m s="open', "unterminated string"),
        ("m,t v=1", "tag 't' has no value"),
        ("m,t= v=1", "tag 't' has an empty value"),
        ("m v=1 12:00", "invalid timestamp '12:00'"),
        ("m v=-1u", "is negative"),
        (",t=1 v=1", "missing measurement"),
    ],
)
def test_malformed_lines_say_what_is_wrong(line: str, problem: str) -> None:
    with pytest.raises(LineProtocolError, match=problem):
        parse_line(line)


def test_files_skip_comments_and_name_the_line() -> None:
    lines = ["# exported", "", "m v=1 1", "m v=2 2", "m v=oops 3"]
    rows = parse_lines(lines[:4], where="f.lp")
    assert [r.fields["v"] for r in rows] == [1.0, 2.0]
    with pytest.raises(LineProtocolError, match=r"^f\.lp:5: invalid field value"):
        list(parse_lines(lines, where="f.lp"))


def test_csv_cells_are_typed_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        "time,name,temp,count,ok,label,tags\n"
        "2026-06-01T00:00:01Z,rooms,21.5,3,true,hot,\n"
        "1700,rooms,,4,false,,x=y\n"
    )
    first, second = read_csv(path)
    assert first == Row(
        "rooms", {"temp": 21.5, "count": 3, "ok": True, "label": "hot"}, {}, 1780272001000000000
    )
    assert second.fields == {"count": 4, "ok": False} and second.time == 1700
    bad = tmp_path / "bad.csv"
    bad.write_text("time,v\nyesterday,1\n")
    with pytest.raises(HistoryError, match=r"bad\.csv:2: time 'yesterday'"):
        list(read_csv(bad))


def test_double_backslashes_numbers_and_precisions_as_influxdb_reads_them() -> None:
    assert parse_line(r"win,path=C:\\,host=a value=1").tags == {"path": "C:\\", "host": "a"}
    assert parse_line(r"win,path=C:\\ value=1 10").time == 10
    for bad in ("m v=nan", "m v=inf", "m v=1_000", "m v=+5i", "m v=0x10"):
        with pytest.raises(LineProtocolError, match="invalid field value"):
            parse_line(bad)
    with pytest.raises(LineProtocolError, match="invalid timestamp"):
        parse_line("m v=1 1_000")
    (row,) = parse_lines(["   m v=.5e1 2"], precision="h")
    assert row.fields == {"v": 5.0} and row.time == 2 * 3_600_000_000_000


def test_rows_with_a_non_finite_feature_are_skipped_and_counted(tmp_path: Path) -> None:
    from udfd.train.command import build_dataset

    path = tmp_path / "d.csv"
    path.write_text("time,a,b\n1,1.0,2.0\n2,nan,2.0\n3,1.5,inf\n4,2.0,\n5,3.0,4.0\n")
    data = build_dataset(read_csv(path), ["a", "b"], None, "")
    assert data.rows == [[1.0, 2.0], [3.0, 4.0]] and data.read == 5
    assert data.skipped == {"a not finite": 1, "b not finite": 1, "missing a feature": 1}


def test_the_fast_path_for_simple_lines_agrees_with_the_full_scanner() -> None:
    """parse_line splits lines without escapes or strings; whatever it answers must be what
    the character scanner answers (it hands every doubtful line to the scanner)."""
    import random

    from udfd.history.lineprotocol import LineProtocolError, _parse_full, _simple

    rng = random.Random(5)
    words = ["cpu", "m", "host", "h1", "", "a=b", "x"]
    values = [
        "1",
        "-2.5",
        "1i",
        "7u",
        "-3u",
        "t",
        "FALSE",
        "1e3",
        "",
        "abc",
        "9999999999999999999i",
    ]

    def pairs(n: int, vals: list[str]) -> str:
        return ",".join(f"{rng.choice(words)}={rng.choice(vals)}" for _ in range(n))

    answered = 0
    for _ in range(20_000):
        line = rng.choice(words)
        if rng.random() < 0.6:
            line += "," + pairs(rng.randint(1, 3), words)
        line += " " + pairs(rng.randint(1, 3), values)
        if rng.random() < 0.7:
            line += " " + rng.choice(["1", "-5", "12x", "", "1514979051065000000"])
        fast = _simple(line, "ns")
        if fast is None:
            continue
        answered += 1
        try:
            full = _parse_full(line, "ns")
        except LineProtocolError as exc:
            raise AssertionError(f"{line!r}: fast path {fast}, scanner: {exc}") from None
        assert fast == full, line
    assert answered > 1000  # the fast path was exercised
