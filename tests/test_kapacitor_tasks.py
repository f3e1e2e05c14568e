"""Kapacitor tasks re-enabled after udfd restarts, against tests/kapacitor_api.py.

The peer is a stand-in for Kapacitor's task API (no Kapacitor can be installed
here; see that module for what it follows). Its tasks hold real UDF connections
to a real ``udfd serve`` over its unix sockets, so "the task stopped because udfd
went away" and "the re-enabled task reconnected" are observed, not assumed.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess
from kapacitor_api import StandInKapacitor, Task

from udfd.protocol.proto import udf_pb2 as pb

TOKEN = "s3cr3t-token-never-logged"

FAST = """
[kapacitor]
url = "{url}"
token_file = "{token_file}"
settle = "0.2s"
backoff = "0.2s"
max_backoff = "1s"
attempts = 5
"""


@pytest.fixture
def kapacitor() -> Iterator[StandInKapacitor]:
    stand_in = StandInKapacitor(token=TOKEN).start()
    yield stand_in
    stand_in.close()


def _config(kapacitor: StandInKapacitor, workdir: Path, extra: str = "") -> str:
    token_file = workdir / "kapacitor.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    return (
        'shutdown_grace = "0.5s"\n'
        '[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n'
        '[functions.crash]\nhandler = "HANDLERS/handlers.py:Crash"\n'
        + FAST.format(url=kapacitor.url, token_file=token_file)
        + extra
    )


def _records(workdir: Path) -> dict[str, list[list[str]]]:
    path = workdir / "state" / "tasks.json"
    if not path.exists():
        return {}
    tasks: dict[str, list[list[str]]] = json.loads(path.read_text())["tasks"]
    return tasks


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _one_task_running(
    daemon: Callable[..., DaemonProcess], config: str, kapacitor: StandInKapacitor, workdir: Path
) -> DaemonProcess:
    """A daemon serving one Kapacitor task, cpu_alert, recorded in tasks.json."""
    first = daemon(config)
    first.wait_for("ready:")
    kapacitor.define("cpu_alert", first.socket("mirror"))
    _wait(lambda: "cpu_alert" in _records(workdir))
    return first


def _kapacitor_status(workdir: Path) -> dict[str, int]:
    status: dict[str, int] = json.loads((workdir / "state" / "status.json").read_text())[
        "kapacitor"
    ]
    return status


def test_tasks_are_re_enabled_after_a_restart_and_only_those(
    workdir: Path, kapacitor: StandInKapacitor, daemon: Callable[..., DaemonProcess]
) -> None:
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = f'health = "127.0.0.1:{port}"\n' + _config(kapacitor, workdir)
    first = daemon(config)
    first.wait_for("ready:")
    sock = first.socket("mirror")
    kapacitor.define("cpu_alert", sock)
    kapacitor.define("mem_alert", sock, node="udf5")
    kapacitor.define("by_hand", sock)
    kapacitor.define("deleted_later", sock)
    _wait(lambda: set(_records(workdir)) == {"cpu_alert", "mem_alert", "by_hand", "deleted_later"})
    assert _records(workdir)["mem_alert"] == [["mirror", "udf5"]]
    kapacitor.disable("by_hand")  # a stop by the user: the connection ends from Kapacitor's side
    _wait(lambda: "by_hand" not in _records(workdir))

    kapacitor.define("disabled_later", sock)
    _wait(lambda: "disabled_later" in _records(workdir))
    assert first.stop() == 0
    kapacitor.wait(lambda: not kapacitor.tasks["cpu_alert"].executing)  # it saw udfd go away
    assert kapacitor.tasks["cpu_alert"].status == "enabled"
    assert set(_records(workdir)) == {"cpu_alert", "mem_alert", "deleted_later", "disabled_later"}
    del kapacitor.tasks["deleted_later"]  # deleted while udfd was down
    kapacitor.disable("disabled_later")  # and one disabled by the user meanwhile
    first.close()

    second = daemon(config)
    second.wait_for("ready:")
    second.wait_for("re-enabled Kapacitor task cpu_alert")
    second.wait_for("re-enabled Kapacitor task mem_alert")
    second.wait_for("Kapacitor task deleted_later no longer exists; forgotten")
    second.wait_for("Kapacitor task disabled_later is disabled; left alone")
    kapacitor.wait(lambda: kapacitor.tasks["cpu_alert"].executing)
    kapacitor.wait(lambda: kapacitor.tasks["mem_alert"].executing)
    # enabled-but-not-executing takes a disable first, then the enable
    assert kapacitor.patches("cpu_alert") == ["disabled", "enabled"]
    assert kapacitor.patches("by_hand") == []  # disabled by the user: never touched
    assert kapacitor.patches("disabled_later") == []  # the user's choice: never touched
    assert kapacitor.tasks["disabled_later"].status == "disabled"
    assert not kapacitor.tasks["by_hand"].executing
    assert all(auth == f"Bearer {TOKEN}" for *_, auth in kapacitor.requests)
    # the reconnected tasks are live again; the gone one is forgotten
    _wait(lambda: set(_records(workdir)) == {"cpu_alert", "mem_alert"})
    _wait(lambda: _kapacitor_status(workdir)["reenabled"] == 2)
    status = _kapacitor_status(workdir)
    assert status["gone"] == 1 and status["disabled"] == 1 and status["failed"] == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'udfd_kapacitor_reenables_total{result="reenabled"} 2.0' in metrics
    assert 'udfd_kapacitor_reenables_total{result="gone"} 1.0' in metrics
    assert 'udfd_kapacitor_tasks{state="live"} 2.0' in metrics
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        health = json.loads(answer.read())
    assert health["kapacitor"]["reenabled"] == 2 and health["kapacitor"]["tasks"]["live"] == 2
    assert TOKEN not in second.log and TOKEN not in first.log
    assert TOKEN not in json.dumps(health) and TOKEN not in metrics
    assert second.stop() == 0
    assert "Traceback" not in second.log


def test_a_sigkill_of_udfd_still_leaves_the_tasks_to_re_enable(
    workdir: Path, kapacitor: StandInKapacitor, daemon: Callable[..., DaemonProcess]
) -> None:
    config = _config(kapacitor, workdir)
    first = _one_task_running(daemon, config, kapacitor, workdir)
    first.proc.send_signal(signal.SIGKILL)  # no shutdown code runs at all
    first.wait()
    kapacitor.wait(lambda: not kapacitor.tasks["cpu_alert"].executing)
    first.close()

    second = daemon(config)
    second.wait_for("re-enabled Kapacitor task cpu_alert")
    kapacitor.wait(lambda: kapacitor.tasks["cpu_alert"].executing)
    assert kapacitor.tasks["cpu_alert"].starts == 2


def test_a_worker_crash_re_enables_its_tasks_but_never_in_a_loop(
    workdir: Path, kapacitor: StandInKapacitor, daemon: Callable[..., DaemonProcess]
) -> None:
    # the crash handler kills its worker at a negative value; this task sends one at every
    # start, so each re-enable crashes the worker again: the loop guard must end it
    config = _config(kapacitor, workdir, 'max_reenables = 2\nreenable_window = "10m"\n')
    config = config.replace(
        'Crash"\n', 'Crash"\npool = "fragile"\n[pools.fragile]\nworkers = 1\n', 1
    )
    server = daemon(config)
    server.wait_for("ready:")
    kapacitor.define("steady", server.socket("mirror"))
    bad = pb.Point(name="m", time=1, fieldsDouble={"value": -1.0})
    kapacitor.define("crashing", server.socket("crash"), points=[bad])
    server.wait_for("re-enabled Kapacitor task crashing")
    server.wait_for("not re-enabling Kapacitor task crashing again", timeout=60)
    assert kapacitor.tasks["crashing"].starts == 3  # the first start and two re-enables
    assert kapacitor.patches("crashing") == ["disabled", "enabled"] * 2
    # the other function runs in another pool's worker: its task never stopped
    assert kapacitor.tasks["steady"].executing and kapacitor.tasks["steady"].starts == 1
    assert kapacitor.patches("steady") == []
    _wait(lambda: _kapacitor_status(workdir)["limited"] == 1)
    assert server.stop() == 0


def test_transient_errors_are_retried_with_backoff_and_logged(
    workdir: Path, kapacitor: StandInKapacitor, daemon: Callable[..., DaemonProcess]
) -> None:
    config = _config(kapacitor, workdir).replace("attempts = 5", "attempts = 12")
    first = _one_task_running(daemon, config, kapacitor, workdir)
    assert first.stop() == 0
    first.close()
    kapacitor.close()  # Kapacitor is down when udfd comes back: connection refused

    second = daemon(config)
    second.wait_for("trying again in 0.2s (attempt 1 of 12)")
    kapacitor.fail_next = [503]  # back up, but still answering 503 once
    kapacitor.start()
    second.wait_for("re-enabled Kapacitor task cpu_alert")
    assert "HTTP 503" in second.log
    assert "Connection refused" in second.log
    _wait(lambda: _kapacitor_status(workdir)["retries"] >= 2)
    assert _kapacitor_status(workdir)["request_errors"] >= 2
    kapacitor.wait(lambda: kapacitor.tasks["cpu_alert"].executing)


def test_wrong_credentials_fail_at_once_and_change_nothing(
    workdir: Path, kapacitor: StandInKapacitor, daemon: Callable[..., DaemonProcess]
) -> None:
    config = _config(kapacitor, workdir)
    first = _one_task_running(daemon, config, kapacitor, workdir)
    assert first.stop() == 0
    first.close()
    (workdir / "kapacitor.token").write_text("a-wrong-token-also-secret\n")

    second = daemon(config)
    line = second.wait_for("cannot re-enable Kapacitor task cpu_alert")
    assert "HTTP 401" in line and "check kapacitor.username/password or token" in line
    assert kapacitor.patches("cpu_alert") == []  # nothing was changed in Kapacitor
    assert len(kapacitor.requests) == 1  # and a 401 is not retried
    assert "a-wrong-token-also-secret" not in second.log
    _wait(lambda: _kapacitor_status(workdir)["failed"] == 1)


def test_without_a_url_udfd_names_the_stopped_tasks(
    workdir: Path, kapacitor: StandInKapacitor, daemon: Callable[..., DaemonProcess]
) -> None:
    config = (
        'shutdown_grace = "0.5s"\n[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n'
    )
    first = _one_task_running(daemon, config, kapacitor, workdir)
    assert first.stop() == 0
    first.close()

    second = daemon(config)
    line = second.wait_for("Kapacitor stopped 1 task(s) that used udfd")
    assert "cpu_alert" in line and "set [kapacitor] url" in line
    assert kapacitor.requests == []
    assert second.stop() == 0
    third = daemon(config)  # said once: the records are cleared
    third.wait_for("ready:")
    assert third.stop() == 0
    assert "Kapacitor stopped" not in third.log


def test_a_damaged_task_file_is_ignored_with_a_warning(
    workdir: Path, daemon: Callable[..., DaemonProcess]
) -> None:
    (workdir / "state").mkdir()
    (workdir / "state" / "tasks.json").write_text('{"tasks": [1, 2')
    server = daemon('[functions.mirror]\nhandler = "HANDLERS/handlers.py:Mirror"\n')
    server.wait_for("ignoring unreadable task records")
    server.wait_for("ready:")
    assert server.stop() == 0


# ---------------------------------------------------------------- the API client itself


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made by openssl for this test."""
    import subprocess

    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_the_client_over_tls_verifies_the_server(tmp_path: Path) -> None:
    import ssl

    from udfd.config.kapacitor import KapacitorConfig
    from udfd.kapacitor.api import ApiError, TaskApi

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    stand_in = StandInKapacitor(basic=("udfd", "pw"), tls=context).start()
    try:
        stand_in.tasks["t"] = Task("t", tmp_path / "none.sock")
        pw = tmp_path / "pw"
        pw.write_text("pw\n")
        trusted = TaskApi(
            KapacitorConfig(url=stand_in.url, username="udfd", password_file=pw, ca_file=cert)
        )
        assert trusted.get("t").status == "disabled"
        assert stand_in.requests[-1][3].startswith("Basic ")
        with pytest.raises(ApiError) as unknown_ca:  # the system CAs do not know it
            TaskApi(KapacitorConfig(url=stand_in.url, username="udfd", password_file=pw)).get("t")
        assert unknown_ca.value.kind == "transient" and "CERTIFICATE_VERIFY_FAILED" in str(
            unknown_ca.value
        )
        skipping = KapacitorConfig(
            url=stand_in.url, username="udfd", password_file=pw, insecure_skip_verify=True
        )
        assert TaskApi(skipping).get("t").executing is False
        with pytest.raises(ApiError) as wrong:
            TaskApi(KapacitorConfig(url=stand_in.url, username="udfd", ca_file=cert)).get("t")
        assert wrong.value.kind == "final" and "HTTP 401" in str(wrong.value)
        with pytest.raises(ApiError) as gone:
            trusted.get("missing")
        assert gone.value.kind == "gone" and "no task exists" in str(gone.value)
        with pytest.raises(ApiError) as moved:  # the Authorization header stays here
            trusted.get("redirected")
        assert moved.value.kind == "final" and "redirect" in str(moved.value)
        assert not any(t == "elsewhere" for _, t, _, _ in stand_in.requests)
        no_ca = TaskApi(KapacitorConfig(url=stand_in.url, ca_file=tmp_path / "no-ca.pem"))
        with pytest.raises(ApiError) as unusable:  # at the request, not at construction
            no_ca.get("t")
        assert unusable.value.kind == "final" and "no-ca.pem" in str(unusable.value)
        upper = KapacitorConfig(url=stand_in.url.replace("https", "HTTPS"), username="udfd",
                                password_file=pw, ca_file=cert)  # fmt: skip
        assert TaskApi(upper).get("t").status == "disabled"  # TLS options still apply
        missing = KapacitorConfig(url=stand_in.url, token_file=tmp_path / "no-such-token")
        with pytest.raises(ApiError) as unreadable:
            TaskApi(missing).get("t")
        assert unreadable.value.kind == "final" and "no-such-token" in str(unreadable.value)
    finally:
        stand_in.close()


def test_config_keeps_secrets_out_of_urls_errors_and_reprs(tmp_path: Path) -> None:
    from udfd.config import load_config
    from udfd.errors import ConfigError

    for url in ("http://udfd:hunter2@localhost:9092", "http://u:hunter2@", "htp://u:hunter2@h",
                "http://k:9092/?token=hunter2"):  # fmt: skip
        with pytest.raises(ConfigError) as bad:
            load_config(None, env={"UDFD_KAPACITOR__URL": url})
        assert "kapacitor.url" in str(bad.value) and "hunter2" not in str(bad.value)
    path = tmp_path / "udfd.toml"
    path.write_text('serve_installed = true\n[kapacitor]\nurl = "http://k:9092"\ntoken = 12345\n')
    with pytest.raises(ConfigError) as wrong_type:
        load_config(path, env={})
    assert "kapacitor.token" in str(wrong_type.value) and "12345" not in str(wrong_type.value)
    config = load_config(None, env={"UDFD_KAPACITOR__URL": "http://k:9092",
                                    "UDFD_KAPACITOR__TOKEN": "hunter2"})  # fmt: skip
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.kapacitor)
    assert config.kapacitor.token is not None
    assert config.kapacitor.token.get_secret_value() == "hunter2"


def test_a_task_udfd_disabled_before_a_stop_is_enabled_again_not_left_alone(
    workdir: Path, kapacitor: StandInKapacitor, daemon: Callable[..., DaemonProcess]
) -> None:
    # what a stop between udfd's disable and its enable leaves: the task disabled, and the
    # record that udfd did it (written before the disable was sent)
    (workdir / "state").mkdir()
    record = {"tasks": {"cpu_alert": [["mirror", "udf2"]]}, "disabled_by_udfd": ["cpu_alert"]}
    (workdir / "state" / "tasks.json").write_text(json.dumps(record))
    server = daemon(_config(kapacitor, workdir))
    task = Task("cpu_alert", server.socket("mirror"), status="disabled")
    kapacitor.tasks["cpu_alert"] = task
    server.wait_for("re-enabled Kapacitor task cpu_alert")
    assert kapacitor.patches("cpu_alert") == ["enabled"]
    kapacitor.wait(lambda: task.executing)
    _wait(lambda: json.loads((workdir / "state" / "tasks.json").read_text())["disabled_by_udfd"]
          == [])  # fmt: skip


def test_reconnected_means_every_lost_node_is_back() -> None:
    from udfd.kapacitor.book import TaskBook

    book = TaskBook(Path("/nonexistent/tasks.json"))
    book.started("t", "f", "n1")
    book.started("t", "g", "n2")
    book.ended("t", "f", "n1", keep=True)  # one node's worker died; the other still runs
    assert book.is_live("t") and book.uses("t") == [("f", "n1")]
    assert not book.reconnected("t", book.uses("t"))
    uses = book.uses("t")
    book.started("t", "f", "n1")
    assert book.reconnected("t", uses) and book.pending == []
