"""udfd.config: strict TOML + UDFD_* loading, readable errors, resolution, kapacitor.conf."""

from __future__ import annotations

import os
import textwrap
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydantic
import pytest

from udfd.config import (
    Config,
    FunctionConfig,
    TcpAddress,
    default_socket_dir,
    default_state_dir,
    format_duration,
    load_config,
    parse_duration,
    render_kapacitor_conf,
    resolve_functions,
)
from udfd.config import values as config_values
from udfd.errors import ConfigError
from udfd.handler import ErrorPolicy
from udfd.serve.sockets import MAX_SOCKET_PATH

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Installed:
    """Stands in for plugins.InstalledHandler: resolution needs only name and distribution."""

    name: str
    distribution: str = "udfd-test"


def write(tmp_path: Path, text: str, name: str = "udfd.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problem lines of the ConfigError that loading ``text`` must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {})
    return str(info.value).splitlines()[1:]


MINIMAL = """
    socket_dir = "/tmp/udfd-test"
    [functions.adsl_state]
    handler = "state_change"
"""


def minimal(top: str = "", function: str = "") -> str:
    """MINIMAL with top-level keys ``top`` and keys ``function`` in its function table."""
    return textwrap.dedent(MINIMAL).replace("[functions.", top + "\n[functions.") + function


# ---------------------------------------------------------------- loading


def test_example_configs_load() -> None:
    udfd_toml = load_config(REPO / "config" / "udfd.toml", env={})
    assert udfd_toml.functions["moving_avg"].options == {"field": "value", "size": 10}
    adsl = load_config(REPO / "config" / "adsl.toml", env={})
    assert set(adsl.functions) == {"adsl_state", "adsl_rate"}
    assert adsl.socket_mode == 0o660
    assert adsl.source == (REPO / "config" / "adsl.toml").resolve()


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.socket_dir == Path("/tmp/udfd-test")
    assert config.log_level == "info"
    assert config.log_format == "plain"
    assert config.timeout == timedelta(seconds=10)
    assert config.shutdown_grace == timedelta(seconds=10)
    assert config.error_policy is ErrorPolicy.ERROR
    assert config.allows("anything")
    assert config.socket_path("adsl_state") == Path("/tmp/udfd-test/adsl_state.sock")


def test_full_function_table(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            socket_dir = "/srv/udfd"
            socket_group = "kapacitor"
            timeout = "20s"
            error_policy = "drop"
            log_level = "DEBUG"
            [functions.avg]
            handler = "pkg.mod:Avg"
            socket = "sub/avg.sock"
            socket_mode = 0o640
            timeout = "1m30s"
            error_policy = "error"
            threaded = true
            [functions.avg.options]
            field = "x"
            [functions.other]
            socket_mode = "0600"
            """,
        ),
        env={},
    )
    assert config.log_level == "debug"
    avg, other = resolve_functions(config)
    assert avg.handler == "pkg.mod:Avg"
    assert avg.socket == Path("/srv/udfd/sub/avg.sock")
    assert avg.socket_mode == 0o640
    assert avg.socket_group == "kapacitor"  # inherited
    assert avg.timeout == timedelta(seconds=90)
    assert avg.error_policy is ErrorPolicy.ERROR
    assert avg.threaded is True
    assert dict(avg.options) == {"field": "x"}
    assert avg.base_dir == tmp_path.resolve()
    assert avg.origin == "config"
    assert other.handler == "other"  # defaults to the function name (an entry point)
    assert other.socket_mode == 0o600
    assert other.timeout == timedelta(seconds=20)
    assert other.error_policy is ErrorPolicy.DROP


def test_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    with pytest.raises(pydantic.ValidationError):
        config.socket_dir = Path("/elsewhere")
    with pytest.raises(pydantic.ValidationError):
        config.functions["adsl_state"].handler = "x"
    (fn,) = resolve_functions(config)
    with pytest.raises(TypeError):
        fn.options["field"] = "y"  # type: ignore[index]


# ---------------------------------------------------------------- errors, with key paths


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """
        socket_dir = "/tmp/u"
        colour = "blue"
        [functions.adsl_state]
        hander = "state_change"
        """,
    )
    assert "colour: unknown key" in lines
    assert "functions.adsl_state.hander: unknown key" in lines


def test_error_message_starts_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(top="bogus = 1"))
    with pytest.raises(ConfigError, match=rf"^{path}:\nbogus: unknown key$"):
        load_config(path, env={})


def test_wrong_types(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """
        socket_dir = "/tmp/u"
        max_message_size = "big"
        log_format = "xml"
        [functions.f]
        threaded = "sometimes"
        options = 3
        """,
    )
    by_key = dict(line.split(": ", 1) for line in lines)
    assert set(by_key) == {
        "max_message_size",
        "log_format",
        "functions.f.threaded",
        "functions.f.options",
    }
    assert by_key["log_format"] == "Input should be 'plain' or 'json' (got 'xml')"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ('"0660"', 0o660),
        ('"660"', 0o660),
        ('"0o600"', 0o600),
        ("0o640", 0o640),
        ("416", 0o640),
    ],
)
def test_socket_modes(tmp_path: Path, mode: str, expected: int) -> None:
    config = load_config(write(tmp_path, MINIMAL + f"socket_mode = {mode}\n"), env={})
    assert resolve_functions(config)[0].socket_mode == expected


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ('"0999"', "invalid socket mode '0999'"),
        ('"rw-rw----"', "invalid socket mode"),
        ('"01777"', "invalid socket mode"),
        ("660", "660 is not a permission mode"),  # decimal 660: the classic mistake
    ],
)
def test_bad_socket_mode(tmp_path: Path, mode: str, message: str) -> None:
    lines = problems(tmp_path, MINIMAL + f"socket_mode = {mode}\n")
    (line,) = lines
    assert line.startswith("functions.adsl_state.socket_mode: ")
    assert message in line


@pytest.mark.parametrize("duration", ['"10 seconds"', '"10"', '"-5s"', '""', "true", "-3"])
def test_bad_duration(tmp_path: Path, duration: str) -> None:
    (line,) = problems(tmp_path, MINIMAL + f"timeout = {duration}\n")
    assert line.startswith("functions.adsl_state.timeout: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("1m30s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(hours=1.5)),
        ("250us", timedelta(microseconds=250)),
        ("0", timedelta(0)),
        (5, timedelta(seconds=5)),
    ],
)
def test_parse_duration(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=10), "10s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2), "2h0m0s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(microseconds=250), "250us"),
        (timedelta(0), "0s"),
    ],
)
def test_format_duration_is_go_style_and_round_trips(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_duplicate_socket_paths(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """
        socket_dir = "/tmp/u"
        [functions.a]
        socket = "shared.sock"
        [functions.b]
        socket = "/tmp/u/../u/./shared.sock"
        """,
    )
    assert lines == ["functions.b.socket: '/tmp/u/shared.sock' is also the socket of functions.a"]


def test_function_socket_may_not_take_the_health_socket(tmp_path: Path) -> None:
    lines = problems(tmp_path, minimal(top='health = "adsl_state.sock"'))
    assert lines == ["functions.adsl_state.socket: '/tmp/udfd-test/adsl_state.sock' is also "
                     "the socket of health"]  # fmt: skip


def test_over_long_socket_path(tmp_path: Path) -> None:
    long_dir = "/tmp/" + "d" * (MAX_SOCKET_PATH - 10)
    (line,) = problems(tmp_path, minimal(top='health = ""').replace("/tmp/udfd-test", long_dir))
    assert line.startswith("functions.adsl_state.socket: ")
    assert f"unix sockets allow at most {MAX_SOCKET_PATH}" in line
    assert "shorten socket_dir" in line


def test_invalid_function_name(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """
        socket_dir = "/tmp/u"
        [functions.adsl-state]
        handler = "x"
        [functions."9lives"]
        handler = "x"
        """,
    )
    assert lines == [
        "functions.adsl-state: not a valid TICKscript identifier ([A-Za-z_][A-Za-z0-9_]*)",
        "functions.9lives: not a valid TICKscript identifier ([A-Za-z_][A-Za-z0-9_]*)",
    ]


def test_every_kind_of_problem_is_reported_in_one_round(tmp_path: Path) -> None:
    # field errors (a bad key, a bad name) and whole-config checks (sockets) together
    lines = problems(
        tmp_path,
        """
        socket_dir = "/tmp/u"
        colour = "blue"
        [functions.a]
        socket = "shared.sock"
        [functions.b]
        socket = "shared.sock"
        [functions.adsl-state]
        handler = "x"
        [functions.c]
        threaded = "sometimes"
        """,
    )
    assert sorted(lines) == sorted(
        [
            "colour: unknown key",
            "functions.adsl-state: not a valid TICKscript identifier ([A-Za-z_][A-Za-z0-9_]*)",
            "functions.c.threaded: Input should be a valid boolean, unable to interpret input "
            "(got 'sometimes')",
            "functions.b.socket: '/tmp/u/shared.sock' is also the socket of functions.a",
        ]
    )


def test_whole_config_checks_skip_inputs_that_are_invalid(tmp_path: Path) -> None:
    # a relative socket_dir is reported, and not replaced by a default to check sockets in
    (line,) = problems(tmp_path, minimal().replace('"/tmp/udfd-test"', '"rel"'))
    assert line.startswith("socket_dir: must be an absolute path")
    # a socket of the wrong type is not checked as if it were the default path
    lines = problems(
        tmp_path,
        """
        socket_dir = "/tmp/u"
        [functions.a]
        [functions.b]
        socket = 3
        """,
    )
    assert [line.split(":")[0] for line in lines] == ["functions.b.socket"]
    # misnamed functions are still functions: no "no functions configured"
    (line,) = problems(tmp_path, 'socket_dir = "/tmp/u"\n[functions.a-b]\nhandler = "x"\n')
    assert line.startswith("functions.a-b: not a valid TICKscript identifier")


def test_no_functions_needs_serve_installed(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, 'socket_dir = "/tmp/u"\n')
    assert line.startswith("functions: no functions configured")
    assert load_config(write(tmp_path, "serve_installed = true\n"), env={}).functions == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [("socket_dir", '"relative/dir"'), ("health", '"localhost:http"'), ("health", '"h:0"')],
)
def test_bad_paths_and_addresses(tmp_path: Path, key: str, value: str) -> None:
    if key == "socket_dir":
        text = minimal().replace('"/tmp/udfd-test"', value)
    else:
        text = minimal(top=f"{key} = {value}")
    (line,) = problems(tmp_path, text)
    assert line.startswith(f"{key}: ")


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'socket_dir = "/tmp/u"\n[functions.x]\nhandler = \n')
    with pytest.raises(ConfigError, match=r"invalid TOML: .*\(at line 3, column 11\)"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})


# ---------------------------------------------------------------- environment


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[functions.adsl_state.options]\nfield = 'a'\n")
    config = load_config(
        path,
        env={
            "UDFD_SOCKET_DIR": "/tmp/from-env",
            "UDFD_LOG_FORMAT": "json",
            "UDFD_FUNCTIONS__ADSL_STATE__SOCKET_MODE": "0600",
            "UDFD_FUNCTIONS__ADSL_STATE__OPTIONS__SIZE": "5",
            "UDFD_FUNCTIONS__NEW_FN__HANDLER": "pkg.mod:New",
            "UDFD_ALLOW_DISTRIBUTIONS": '["udfd_ADSL"]',
            "UDFD_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PATH": "/usr/bin",
        },
    )
    assert config.socket_dir == Path("/tmp/from-env")
    assert config.log_format == "json"
    fn = config.functions["adsl_state"]
    assert fn.handler == "state_change"  # the file's value survives a sibling override
    assert fn.socket_mode == 0o600
    assert fn.options == {"field": "a", "size": "5"}
    assert config.functions["new_fn"].handler == "pkg.mod:New"
    assert config.allow_distributions == ("udfd_ADSL",)
    assert config.allows("udfd-adsl") and not config.allows("other")
    assert config.disable_plugin_autoload is True


def test_env_matches_function_names_regardless_of_case(tmp_path: Path) -> None:
    path = write(tmp_path, 'socket_dir = "/tmp/u"\n[functions.adslState]\nhandler = "x"\n')
    config = load_config(path, env={"UDFD_FUNCTIONS__ADSLSTATE__TIMEOUT": "3s"})
    assert set(config.functions) == {"adslState"}
    assert config.functions["adslState"].timeout == timedelta(seconds=3)


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    lines = problems(tmp_path, MINIMAL, env={"UDFD_FUNCTIONS__ADSL_STATE__SOCKET_MODE": "999"})
    (line,) = lines
    assert line.startswith("functions.adsl_state.socket_mode: invalid socket mode")
    assert line.endswith("(from UDFD_FUNCTIONS__ADSL_STATE__SOCKET_MODE)")


def test_unknown_env_setting_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="UDFD_SOKET_DIR: unknown setting"):
        load_config(write(tmp_path, MINIMAL), env={"UDFD_SOKET_DIR": "/x"})


def test_env_json_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JSON"):
        load_config(write(tmp_path, MINIMAL), env={"UDFD_ALLOW_DISTRIBUTIONS": "a,b"})


def test_udfd_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(None, env={"UDFD_CONFIG": str(path)})
    assert set(config.functions) == {"adsl_state"}
    assert config.source == path.resolve()


# ---------------------------------------------------------------- embedded default


def test_embedded_default_serves_installed_handlers() -> None:
    config = load_config(None, env={"RUNTIME_DIRECTORY": "/run/user/1000/udfd"})
    assert config.source is None
    assert config.serve_installed is True
    assert config.functions == {}
    assert config.socket_dir == Path("/run/user/1000/udfd")
    functions = resolve_functions(
        config, [Installed("moving_average"), Installed("state_change", "udfd-adsl")]
    )
    assert [(f.name, f.handler, f.origin) for f in functions] == [
        ("moving_average", "moving_average", "installed"),
        ("state_change", "state_change", "installed"),
    ]
    assert functions[0].socket == Path("/run/user/1000/udfd/moving_average.sock")


def test_resolution_honours_config_and_allow_list(tmp_path: Path) -> None:
    text = """
        socket_dir = "/tmp/u"
        serve_installed = true
        allow_distributions = ["udfd-good"]
        [functions.avg]
        handler = "moving_average"
        [functions.state_change]
        handler = "pkg:Custom"
    """
    config = load_config(write(tmp_path, text), env={})
    functions = resolve_functions(
        config,
        [
            Installed("state_change", "udfd-good"),  # configured already: the table wins
            Installed("mirror", "udfd_Good"),
            Installed("evil", "udfd-evil"),  # not allowed: not served
            Installed("not-an-identifier", "udfd-good"),  # skipped
        ],
    )
    assert [(f.name, f.handler, f.origin) for f in functions] == [
        ("avg", "moving_average", "config"),
        ("state_change", "pkg:Custom", "config"),
        ("mirror", "mirror", "installed"),
    ]


def test_autoload_switch_turns_serve_installed_off(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, 'socket_dir = "/tmp/u"\nserve_installed = true\n'),
        env={"UDFD_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert resolve_functions(config, [Installed("mirror")]) == ()


def test_resolution_checks_sockets_of_installed_handlers(tmp_path: Path) -> None:
    long_dir = "/tmp/" + "d" * (MAX_SOCKET_PATH - 20)
    text = f'socket_dir = "{long_dir}"\nserve_installed = true\nhealth = "127.0.0.1:8649"\n'
    config = load_config(write(tmp_path, text), env={})
    with pytest.raises(ConfigError, match=r"functions\.a_rather_long_name\.socket: .* bytes"):
        resolve_functions(config, [Installed("a_rather_long_name")])


def test_default_socket_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_socket_dir({"RUNTIME_DIRECTORY": "/run/udfd-unit"}) == Path("/run/udfd-unit")
    monkeypatch.setattr(config_values, "_writable_dir", lambda path: path == Path("/run/udfd"))
    assert default_socket_dir({}) == Path("/run/udfd")
    monkeypatch.setattr(config_values, "_writable_dir", lambda path: False)
    assert default_socket_dir({"XDG_RUNTIME_DIR": "/tmp"}) == Path("/tmp/udfd")
    assert default_socket_dir({"XDG_RUNTIME_DIR": "/does/not/exist"}) == Path(
        f"/tmp/udfd-{os.getuid()}"
    )
    assert default_socket_dir({}) == Path(f"/tmp/udfd-{os.getuid()}")


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/udfd2"}) == Path("/var/lib/udfd2")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir({"HOME": "/home/u"}) == Path("/var/lib/udfd")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_state_dir({"XDG_STATE_HOME": "/x/state"}) == Path("/x/state/udfd")
    assert default_state_dir({"HOME": "/home/u"}) == Path("/home/u/.local/state/udfd")


def test_health_address(tmp_path: Path) -> None:
    def health(value: str) -> TcpAddress | Path | None:
        text = minimal(top=f'health = "{value}"')
        return load_config(write(tmp_path, text), env={}).health_address()

    assert health("127.0.0.1:8649") == TcpAddress("127.0.0.1", 8649)
    assert health("[::1]:8649") == TcpAddress("::1", 8649)
    assert health("") is None
    assert health("h.sock") == Path("/tmp/udfd-test/h.sock")
    assert health("/run/h.sock") == Path("/run/h.sock")
    assert load_config(write(tmp_path, MINIMAL), env={}).health_address() is None


def test_a_long_socket_dir_is_not_rejected_for_a_health_socket_nobody_asked_for(
    tmp_path: Path,
) -> None:
    long_dir = "/tmp/" + "d" * 85  # 91 bytes: a reserved udfd-health.sock would not fit
    text = f'socket_dir = "{long_dir}"\n[functions.a]\nhandler = "state_change"\n'
    config = load_config(write(tmp_path, text), env={})
    assert config.health_address() is None


def test_state_file_location(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal(top='state_dir = "/var/lib/x"')), env={})
    assert config.state_file == Path("/var/lib/x/info.json")


# ---------------------------------------------------------------- kapacitor.conf


def test_render_kapacitor_conf_matches_the_config(tmp_path: Path) -> None:
    text = """
        socket_dir = "/run/udfd"
        serve_installed = true
        timeout = "15s"
        [functions.adsl_state]
        handler = "state_change"
        timeout = "1m30s"
        [functions.quoted]
        socket = '/run/odd "dir"/q.sock'
    """
    config = load_config(write(tmp_path, text), env={})
    rendered = render_kapacitor_conf(config, [Installed("mirror")])
    assert rendered.startswith("# udfd functions")
    parsed = tomllib.loads(rendered)
    assert parsed == {
        "udf": {
            "functions": {
                "adsl_state": {"socket": "/run/udfd/adsl_state.sock", "timeout": "1m30s"},
                "quoted": {"socket": '/run/odd "dir"/q.sock', "timeout": "15s"},
                "mirror": {"socket": "/run/udfd/mirror.sock", "timeout": "15s"},
            }
        }
    }
    # the same numbers as the functions the daemon will serve
    for fn in resolve_functions(config, [Installed("mirror")]):
        section = parsed["udf"]["functions"][fn.name]
        assert Path(section["socket"]) == fn.socket
        assert parse_duration(section["timeout"]) == fn.timeout


def test_render_pastes_below_existing_udf_tables(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env={})
    kapacitor_conf = "[udf]\n[udf.functions]\n" + render_kapacitor_conf(config)
    assert "adsl_state" in tomllib.loads(kapacitor_conf)["udf"]["functions"]


def test_config_direct_construction_uses_defaults() -> None:
    config = Config(functions={"f": FunctionConfig(handler="x")}, socket_dir=Path("/tmp/d"))
    assert config.socket_path("f") == Path("/tmp/d/f.sock")
    assert config.source is None


def test_the_commented_example_config_names_every_key() -> None:
    import re

    from udfd.config import Config, FunctionConfig, KapacitorConfig

    text = (Path(__file__).resolve().parents[1] / "config" / "udfd.toml").read_text()
    written = set(re.findall(r"^[# ]*([a-z_]+) *=", text, re.MULTILINE))
    for model in (Config, FunctionConfig, KapacitorConfig):
        missing = set(model.model_fields) - written - {"functions", "pools", "kapacitor", "options"}
        assert not missing, f"{model.__name__}: {sorted(missing)} not in config/udfd.toml"
