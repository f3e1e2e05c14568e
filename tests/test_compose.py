"""docker-compose.yml, without a Docker engine: validated by ``docker-compose config``
and read as a reviewer would, against what udfd and Kapacitor really use.

``scripts/test`` installs docker-compose into ``.venv-compose``. No container is
started here, so what cannot be checked without an engine (image pulls, the
services actually talking) is not claimed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from udfd.config import load_config, resolve_functions
from udfd.plugins.loader import discover, load_handler

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "config" / "compose"
DOCKER_COMPOSE = REPO / ".venv-compose" / "bin" / "docker-compose"
UDFD = Path(sys.executable).parent / "udfd"


def compose() -> dict[str, Any]:
    done = subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = yaml.safe_load(done.stdout)
    return data


def test_docker_compose_config_accepts_it() -> None:
    services = compose()["services"]
    assert set(services) == {"influxdb", "udfd", "kapacitor", "demo", "grafana"}


def test_docker_compose_config_does_reject_a_broken_file(tmp_path: Path) -> None:
    # the check above could not fail if `config` accepted anything
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(
        'version: "3.8"\nservices:\n  a:\n    image: x\n    depends_on: {b: {condition: nope}}\n'
    )
    done = subprocess.run([str(DOCKER_COMPOSE), "-f", str(bad), "config"], capture_output=True)
    assert done.returncode != 0


def test_kapacitor_waits_for_a_healthy_udfd_and_shares_its_socket_volume() -> None:
    services = compose()["services"]
    assert services["kapacitor"]["depends_on"]["udfd"]["condition"] == "service_healthy"
    config = load_config(COMPOSE / "udfd.toml", env={})
    sockets = str(config.socket_dir)

    def mount(service: str, target: str) -> str:
        for volume in services[service]["volumes"]:  # "source:target:mode"
            source, mounted, _ = volume.split(":")
            if mounted == target:
                return str(source)
        raise AssertionError(f"{service} mounts nothing at {target}")

    assert mount("udfd", sockets) == mount("kapacitor", sockets) == "udfd-sockets"
    assert services["udfd"]["environment"]["UDFD_CONFIG"] == "/etc/udfd/udfd.toml"
    assert mount("udfd", "/etc/udfd/udfd.toml") == str(COMPOSE / "udfd.toml")
    assert mount("kapacitor", "/etc/kapacitor/kapacitor.conf") == str(
        COMPOSE / "kapacitor" / "kapacitor.conf"
    )
    # the health endpoint the compose file publishes is the one udfd opens
    health = config.health_address()
    assert health is not None and not isinstance(health, Path)
    (published,) = services["udfd"]["ports"]  # "host_ip:host_port:container_port/tcp"
    host_ip, _, target = published.split(":")
    assert target == f"{health.port}/tcp" and host_ip == "127.0.0.1"


def test_kapacitor_conf_has_exactly_the_udf_sections_udfd_generates() -> None:
    done = subprocess.run(
        [str(UDFD), "kapacitor-conf", "--config", str(COMPOSE / "udfd.toml")],
        capture_output=True,
        text=True,
        check=True,
    )
    generated = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    conf = (COMPOSE / "kapacitor" / "kapacitor.conf").read_text()
    tail = conf[conf.index("\n[udf.functions.") :].strip().splitlines()
    assert tail == "\n".join(generated).strip().splitlines()
    assert 'dir = "/etc/kapacitor/load"' in conf  # where the compose file mounts the tasks


def udf_calls(script: str) -> list[tuple[str, list[str]]]:
    """``(function, [option, ...])`` for every ``@function()`` call of a TICKscript."""
    calls = []
    for match in re.finditer(r"@(\w+)\(\)((?:\s*\.\w+\([^)]*\))*)", script):
        options = re.findall(r"\.(\w+)\(", match.group(2))
        calls.append((match.group(1), options))
    return calls


def test_every_tickscript_calls_configured_functions_with_their_options() -> None:
    config = load_config(COMPOSE / "udfd.toml", env={})
    installed = discover()
    functions = {fn.name: fn for fn in resolve_functions(config, installed)}
    tasks = sorted((COMPOSE / "kapacitor" / "load" / "tasks").glob("*.tick"))
    assert len(tasks) == 4
    called = set()
    for task in tasks:
        script = task.read_text()
        assert script.count('dbrp "udfd"."autogen"') == 1, task.name  # the load service needs it
        calls = udf_calls(script)
        assert calls, f"{task.name} calls no udfd function"
        for name, options in calls:
            assert name in functions, f"{task.name}: @{name}() is not configured"
            spec, _ = load_handler(functions[name].handler, function=name, installed=installed)
            unknown = set(options) - set(spec.options)
            assert not unknown, f"{task.name}: @{name}() has no option {sorted(unknown)}"
            called.add(name)
    assert called == set(functions)  # and no configured function is left unused


def test_the_dashboard_reads_what_the_pipeline_writes() -> None:
    written = {"adsl", "sensors"}  # udfd demo
    for task in (COMPOSE / "kapacitor" / "load" / "tasks").glob("*.tick"):
        written.update(re.findall(r"\.measurement\('(\w+)'\)\s*$", task.read_text(), re.M))
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "udfd.json").read_text())
    read = {
        m for panel in dashboard["panels"] for t in panel["targets"]
        for m in re.findall(r'FROM "(\w+)"', t["query"])
    }  # fmt: skip
    assert read and read <= written, read - written
    assert {"adsl_changes", "adsl_rate", "temperature_level", "sensor_anomaly"} <= read
    demo = compose()["services"]["demo"]["command"]
    assert demo[0] == "demo" and demo[demo.index("--bucket") + 1] == "udfd/autogen"


def test_udfd_re_enables_tasks_through_the_kapacitor_service_of_the_stack() -> None:
    from urllib.parse import urlsplit

    services = compose()["services"]
    config = load_config(COMPOSE / "udfd.toml", env={})
    assert config.kapacitor.enabled and config.kapacitor.url is not None
    url = urlsplit(config.kapacitor.url)
    assert url.hostname in services  # the service name resolves on the compose network
    conf = (COMPOSE / "kapacitor" / "kapacitor.conf").read_text()
    assert f'bind-address = ":{url.port}"' in conf
    assert "auth-enabled = true" not in conf  # no credentials needed, none configured
