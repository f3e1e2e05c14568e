"""Cross-check against kdrive, an independent Go implementation of Kapacitor's side.

udfd's own client grew up with udfd; kdrive did not (it was written from the
protocol documents and checked against Kapacitor's official Python agent), so a
misreading of the protocol shared by udfd and its client shows up here. The
daemon runs as a subprocess serving a mirror and three first-party handlers;
every exchange goes through kdrive over the real sockets.

kdrive lives in ``../shared/tools`` beside the checkout: developers and CI have
it, users who clone the repository do not, and then this module is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonProcess
from golden import ADSL, ADSL_CHANGES

from udfd.protocol.client import probe_info
from udfd.protocol.proto import udf_pb2 as pb
from udfd.testing import short_socket_dir

KDRIVE = Path(__file__).resolve().parents[2] / "shared" / "tools" / "kdrive"

pytestmark = pytest.mark.skipif(
    not os.access(KDRIVE, os.X_OK),
    reason=f"kdrive not found at {KDRIVE} (a developers' and CI tool beside the checkout, "
    "not part of the repository)",
)

CONFIG = """
    [functions.mirror]
    handler = "HANDLERS/handlers.py:Mirror"
    [functions.moving_average]
    handler = "moving_average"
    [functions.state_change]
    handler = "state_change"
    [functions.outliers]
    handler = "outliers"
"""
FUNCTIONS = ("mirror", "moving_average", "state_change", "outliers")


@pytest.fixture(scope="module")
def served() -> Iterator[DaemonProcess]:
    """One daemon for the module: kdrive runs are independent connections."""
    workdir = short_socket_dir("udfd-k-")
    proc = DaemonProcess(workdir, CONFIG)
    try:
        line = proc.wait_for("ready:")
        assert "ready: 4 function(s) ready, 0 failed" in line, proc.log
        yield proc
        assert proc.stop() == 0, proc.log
    finally:
        proc.close()
        shutil.rmtree(workdir, ignore_errors=True)


def kdrive(*args: str | int | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(KDRIVE), *map(str, args)], capture_output=True, text=True, timeout=60
    )
    if ok:
        assert result.returncode == 0, f"kdrive {args}: exit {result.returncode}\n{result.stderr}"
    return result


def kdrive_json(*args: str | int | Path, ok: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(kdrive(*args, ok=ok).stdout)
    return data


def only_run(report: dict[str, Any]) -> dict[str, Any]:
    (run,) = report["runs"]
    run_: dict[str, Any] = run
    return run_


def assert_clean(report: dict[str, Any]) -> dict[str, Any]:
    """Not failed, no errors, every point sent, every keepalive answered; returns the run."""
    run = only_run(report)
    assert report["failed"] is False, run.get("errors")
    assert "errors" not in run
    assert run["points_sent"] == report["n_per_conn"] * run["conns"]
    assert run["keepalive"]["received"] == run["keepalive"]["sent"]
    for conn in run["per_conn"]:
        assert conn["keepalive"]["received"] == conn["keepalive"]["sent"]
    return run


def as_kdrive_info(info: pb.InfoResponse) -> dict[str, Any]:
    """udfd's client's InfoResponse in kdrive's JSON shape."""
    return {
        "wants": pb.EdgeType.Name(info.wants),
        "provides": pb.EdgeType.Name(info.provides),
        "options": {
            name: [pb.ValueType.Name(t) for t in option.valueTypes]
            for name, option in info.options.items()
        },
    }


@pytest.mark.anyio
async def test_info_matches_udfds_own_client(served: DaemonProcess) -> None:
    seen = {}
    for name in FUNCTIONS:
        theirs = kdrive_json("info", "-socket", served.socket(name))
        assert theirs["rtt_us"] > 0
        ours = as_kdrive_info(await probe_info(served.socket(name)))
        assert {k: theirs[k] for k in ("wants", "provides", "options")} == ours, name
        seen[name] = ours
    # the comparison is about something: the handlers' own declarations
    assert seen["mirror"] == {"wants": "STREAM", "provides": "STREAM", "options": {}}
    assert seen["moving_average"]["options"] == {
        "field": ["STRING"],
        "size": ["INT"],
        "as": ["STRING"],
        "fullOnly": [],
    }
    assert seen["outliers"]["wants"] == seen["outliers"]["provides"] == "BATCH"
    assert seen["outliers"]["options"]["scale"] == ["DOUBLE"]
    assert seen["state_change"]["options"]["durationUnit"] == ["DURATION"]

    ready = kdrive_json("wait", "-timeout", "20s", *(served.socket(n) for n in FUNCTIONS))
    assert ready["all_ready"] is True
    assert [s["provides"] for s in ready["sockets"]] == ["STREAM", "STREAM", "STREAM", "BATCH"]


def test_stream_through_the_mirror(
    served: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    report = kdrive_json("stream", "-socket", served.socket("mirror"), "-n", 20000, "-k", 500)
    run = assert_clean(report)
    assert run["points_received"] == 20000
    assert run["keepalive"]["sent"] == 40
    (conn,) = run["per_conn"]
    # as many bytes came back as went out: every point (and keepalive) re-encoded to its size
    assert conn["bytes_received"] == conn["bytes_sent"]
    assert run["first_point"] == {
        "time": "1577836800000000000",
        "name": "cpu",
        "database": "kdrive",
        "retentionPolicy": "autogen",
        "tags": {"host": "server"},
        "fieldsDouble": {"value": 0.5},
    }
    with capsys.disabled():
        print(
            f"\n[kdrive] mirror stream 20000 points: {run['points_per_s']} points/s, "
            f"keepalive p50 {run['keepalive']['p50_us']} us, "
            f"p99 {run['keepalive']['p99_us']} us"
        )


def test_stream_through_moving_average(served: DaemonProcess) -> None:
    socket = served.socket("moving_average")
    report = kdrive_json(
        "stream", "-socket", socket, "-n", 2000, "-k", 100, "-opt", "field=value", "-opt", "size=5"
    )
    assert [o["values"][0]["type"] for o in report["options"]["options"]] == ["STRING", "INT"]
    run = assert_clean(report)
    assert run["points_received"] == 2000
    assert run["keepalive"]["sent"] == 20
    first = run["first_point"]
    assert first["fieldsDouble"] == {"avg": 0.5}  # kdrive's values are 0.5, 1.5, ...
    assert first["time"] == "1577836800000000000" and first["tags"] == {"host": "server"}

    # a float where Info declares an int is refused at Init, naming the option
    bad = kdrive_json(
        "stream",
        "-socket",
        socket,
        "-n",
        10,
        "-opt",
        "field=value",
        "-opt",
        "size=float:5",
        ok=False,
    )
    assert bad["failed"] is True
    (error,) = only_run(bad)["errors"]
    assert "init failed" in error and "option 'size'" in error, error


@pytest.mark.parametrize(
    ("scale", "received"),
    [
        # kdrive's values rise by 1 within each batch of 100: nothing is outside the fences
        ("float:1.5", 0),
        # fences at the quartiles: the lowest 25 and the highest 25 of every batch
        ("float:0", 1000),
    ],
)
def test_batch_through_outliers(served: DaemonProcess, scale: str, received: int) -> None:
    report = kdrive_json(
        "batch",
        "-socket",
        served.socket("outliers"),
        "-n",
        2000,
        "-b",
        100,
        "-opt",
        "field=value",
        "-opt",
        f"scale={scale}",
    )
    (value,) = report["options"]["options"][1]["values"]
    assert value["type"] == "DOUBLE"
    run = assert_clean(report)
    (conn,) = run["per_conn"]
    assert conn["begins_received"] == conn["ends_received"] == 20
    assert run["points_received"] == received


def test_batch_option_typed_as_kapacitor_types_it(served: DaemonProcess) -> None:
    """``scale=2`` is an INT literal in TICKscript, and outliers' scale is a float."""
    report = kdrive_json(
        "batch",
        "-socket",
        served.socket("outliers"),
        "-n",
        100,
        "-opt",
        "field=value",
        "-opt",
        "scale=2",
        ok=False,
    )
    assert report["failed"] is True
    (error,) = only_run(report)["errors"]
    assert "option 'scale' expects .scale(float) but got .scale(int)" in error, error


@pytest.mark.parametrize(
    ("function", "options"),
    [("mirror", []), ("moving_average", ["-opt", "field=value", "-opt", "size=3", "-groups", "7"])],
)
def test_concurrent_connections(served: DaemonProcess, function: str, options: list[str]) -> None:
    report = kdrive_json(
        "conns", "-socket", served.socket(function), "-c", 4, "-n", 5000, "-k", 500, *options
    )
    run = assert_clean(report)
    assert run["conns"] == 4
    assert [c["points_received"] for c in run["per_conn"]] == [5000] * 4
    assert run["points_received"] == 20000
    assert run["keepalive"]["sent"] == 40


def _adsl_file(tmp_path: Path) -> Path:
    path = tmp_path / "adsl.lp"
    path.write_text("".join(f'adsl_connection,host=router1 value="{v}" {t}\n' for t, v in ADSL))
    return path


def _replay(served: DaemonProcess, path: Path, *options: str) -> tuple[list[str], dict[str, Any]]:
    socket = served.socket("state_change")
    result = kdrive("replay", "-socket", socket, "-groupby", "host", "-meta", *options, path)
    summary: dict[str, Any] = json.loads(result.stderr)
    assert summary["failed"] is False and summary["eof"] is True, summary
    assert summary["points_sent"] == len(ADSL)
    assert summary["errors_received"] == 0
    lines = result.stdout.splitlines()
    points = lines[1::2]
    # every output point keeps the input's identity (group, dimensions, database)
    assert lines[0::2] == [
        '# point db=telegraf rp=autogen group="host=router1" dims=host byName=false'
    ] * len(points)
    assert summary["points_received"] == len(points)
    return points, summary


def test_replay_adsl_through_state_change(served: DaemonProcess, tmp_path: Path) -> None:
    points, _ = _replay(served, _adsl_file(tmp_path))
    assert points == [f'adsl_connection,host=router1 value="{v}" {t}' for t, v in ADSL_CHANGES]


def test_replay_adsl_debounced_with_previous_and_duration(
    served: DaemonProcess, tmp_path: Path
) -> None:
    """The README's second example: durationUnit=1s is typed DURATION by kdrive."""
    points, _ = _replay(
        served,
        _adsl_file(tmp_path),
        *("-opt", "previous=prev", "-opt", "duration=lasted"),
        *("-opt", "durationUnit=1s", "-opt", "stable=2"),
    )
    assert points == [
        'adsl_connection,host=router1 value="SHOWTIME" 1514979231065000000',
        'adsl_connection,host=router1 lasted=449i,prev="SHOWTIME",value="TRAINING" 1514979681040000000',
        'adsl_connection,host=router1 lasted=359i,prev="TRAINING",value="SHOWTIME" 1514980041020000000',
        'adsl_connection,host=router1 lasted=179i,prev="SHOWTIME",value="TRAINING" 1514980221010000000',
    ]
