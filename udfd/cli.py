"""``udfd``: the command line. Parses arguments, calls the library, maps errors to exit codes.

This is the only module that exits the process. Exit codes are distinct so that
systemd (``RestartPreventExitStatus=``) and scripts can tell a broken
configuration from a transient failure:

=====  ==========================================================
0      success
1      ``check``: a function did not answer Info, failed to load or is loading
2      usage error (bad arguments)
3      configuration error (the message names the key)
4      start-up failure (a socket owned by another process, ...)
130    ``serve`` forced to exit by a second SIGINT
=====  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from udfd import __version__, logs
from udfd.config import Config, load_config, render_kapacitor_conf, resolve_functions
from udfd.errors import ConfigError, StartupError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_STARTUP = 4

DESCRIPTION = """\
udfd serves Kapacitor user-defined functions (UDFs): one daemon, many handlers,
each on its own unix socket. Handlers are Python plugins (entry point group
`udfd.handlers`), module paths, or files written for Kapacitor's own Python agent.

Without --config (or $UDFD_CONFIG) udfd uses its embedded default: every installed
handler, each as a function of the same name, on <socket_dir>/<name>.sock.
"""

EPILOG = """\
examples:
  udfd serve                          serve every installed handler
  udfd serve --config /etc/udfd/udfd.toml
  udfd kapacitor-conf --config ...    the [udf.functions.*] sections for kapacitor.conf
  udfd check                          exit 0 when every socket answers Info (HEALTHCHECK)
  udfd list                           installed handlers and configured functions
  udfd validate --config FILE         load every handler, check option defaults (no sockets)
  udfd run state_change --opt field=value < in.lp   a handler on line protocol, no Kapacitor
  udfd new my_udf                     a plugin distribution to start from, with its tests
  udfd systemd-units --config FILE -o DIR   udfd.service and a socket unit per function
"""


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="TOML config file (default: $UDFD_CONFIG, else the embedded default)",
    )


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udfd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"udfd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the daemon (the main job)",
        description="Bind every function's socket, load the handlers, serve until SIGTERM.",
    )
    _add_config(serve)

    listing = sub.add_parser(
        "list",
        help="installed handlers, where they come from, their options and edges",
        description="Lists every handler entry point (importing each to read its options).",
    )
    _add_config(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    validate = sub.add_parser(
        "validate",
        help="load every configured handler and check its option defaults (exit 0/3)",
        description=(
            "Does what the daemon does at load time, without binding a socket: resolves "
            "every function, imports its handler and validates the configured option "
            "defaults against the handler's options. Reports every problem at once; exit 3 "
            "when the config or any function is invalid, as `udfd serve` would for the config."
        ),
    )
    _add_config(validate)
    validate.add_argument("--json", action="store_true", help="machine-readable output")

    check = sub.add_parser(
        "check",
        help="probe every configured socket with Info (exit 0/1; for HEALTHCHECK)",
        description=(
            "Connects to each function's socket, as Kapacitor does at start-up, and reads "
            "the daemon's status file: a function whose handler failed to load, or is "
            "still loading, fails the check too."
        ),
    )
    _add_config(check)
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per socket")
    check.add_argument("--quiet", "-q", action="store_true", help="print only failures")

    reload = sub.add_parser(
        "reload",
        help="make the running daemon re-read its config (SIGHUP); exit 3 if it is invalid",
        description=(
            "Sends SIGHUP to the daemon named in <state_dir>/status.json and waits for its "
            "answer there: exit 0 when the new config is serving, 3 when it failed "
            "validation (nothing changed), 1 when no daemon answered."
        ),
    )
    _add_config(reload)
    reload.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")

    conf = sub.add_parser(
        "kapacitor-conf",
        help="print the [udf.functions.*] sections matching the config",
        description="Prints kapacitor.conf sections derived from the udfd config.",
    )
    _add_config(conf)

    units = sub.add_parser(
        "systemd-units",
        help="write udfd.service and a socket unit per configured function",
        description=(
            "Writes a hardened udfd.service (Type=notify, watchdog, dedicated user) and "
            "udfd-NAME.socket for every configured function into DIR, ExecStart pointing "
            "at this udfd and --config at FILE. Install them in /etc/systemd/system."
        ),
    )
    _add_config(units)
    units.add_argument(
        "--output", "-o", type=Path, default=Path("."), metavar="DIR", help="default: ."
    )

    demo = sub.add_parser(
        "demo",
        help="write the examples' ADSL and sensor data to InfluxDB (v2 write API)",
        description=(
            "Writes the data the README's examples use (adsl: line, state, downstream_rate; "
            "sensors: temperature, humidity, pressure) through influxdb-client, one step "
            "per --interval until interrupted, or --count steps."
        ),
    )
    demo.add_argument("--url", default=os.environ.get("INFLUX_URL", "http://localhost:8086"))
    demo.add_argument("--token", default=os.environ.get("INFLUX_TOKEN", ""))
    demo.add_argument("--org", default=os.environ.get("INFLUX_ORG", "udfd"))
    demo.add_argument("--bucket", default=os.environ.get("INFLUX_BUCKET", "udfd"))
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between steps")
    demo.add_argument("--count", type=int, default=0, help="steps to write (0: forever)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--backfill", action="store_true", help="write --count past steps at once, then exit"
    )
    new = sub.add_parser(
        "new",
        help="write a minimal plugin distribution: pyproject, a handler, its tests, a README",
        description=(
            "Writes NAME/ (or --output DIR): a pyproject.toml with the udfd.handlers entry "
            "point, one handler, its tests on udfd's pytest plugin and a README. Then "
            "`pip install -e 'NAME[test]'`, `pytest NAME`, and `udfd serve` serves it."
        ),
    )
    new.add_argument("name", metavar="NAME")
    new.add_argument("--output", "-o", type=Path, metavar="DIR", help="default: ./NAME")
    from udfd.run.command import add_run_parser
    from udfd.train.command import add_train_parser

    add_run_parser(sub)

    words = list(sys.argv[1:] if argv is None else argv)
    add_train_parser(sub, load_trainers="train" in words[:1])
    return parser


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from udfd.serve.supervisor import Supervisor, run_until_signalled

    config = _load(args)
    logs.configure(config.log_level, config.log_format)
    daemon = Supervisor(config)
    daemon.prepare()  # binds every socket; StartupError here exits with EXIT_STARTUP
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    finished = False
    try:
        anyio.run(run_until_signalled, daemon, backend_options=options)
        finished = True
    finally:
        # also after a crash: a stuck handler thread would keep the process alive
        _leave_stuck_threads((130 if daemon.forced else EXIT_OK) if finished else 1)
    return 130 if daemon.forced else EXIT_OK


def _leave_stuck_threads(code: int) -> None:
    """Exit at once when handler threads are stuck: they would block interpreter exit."""
    stuck = _busy_threads()
    if stuck:
        # a handler blocked in a worker thread (or an import) would keep the
        # interpreter alive at exit; the sockets are gone, so leave now
        print(
            f"udfd: abandoning {len(stuck)} busy handler thread(s): "
            + ", ".join(t.name for t in stuck),
            file=sys.stderr,
        )
        sys.stderr.flush()
        os._exit(code)


def _busy_threads(wait: float = 0.5) -> list[threading.Thread]:
    deadline = time.monotonic() + wait
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]


def cmd_list(args: argparse.Namespace) -> int:
    from udfd.options import VALUE_TYPE_NAMES
    from udfd.plugins.loader import PluginError, discover, load_handler

    config = _load(args)
    rows = []
    for handler in discover(autoload=not config.disable_plugin_autoload):
        row: dict[str, object] = {
            "name": handler.name,
            "value": handler.value,
            "distribution": handler.distribution,
            "version": handler.version,
            "allowed": config.allows(handler.distribution),
        }
        try:
            spec, _ = load_handler(handler.value, function=handler.name)
        except PluginError as exc:
            row["error"] = str(exc)
        else:
            row["wants"] = spec.wants.name.lower()
            row["provides"] = spec.provides.name.lower()
            row["options"] = {
                name: [VALUE_TYPE_NAMES[t] for t in o.valueTypes]
                for name, o in sorted(spec.info.options.items())
            }
        rows.append(row)
    from udfd.plugins.validate import validate_functions

    functions = [r.as_dict() for r in validate_functions(config)]
    if args.json:
        print(json.dumps({"handlers": rows, "functions": functions}, indent=2, default=str))
        return EXIT_OK
    print("installed handlers (entry point group 'udfd.handlers'):")
    if not rows:
        print("  none")
    for row in rows:
        allowed = "" if row["allowed"] else "  [not in allow_distributions]"
        print(f"{row['name']}  ({row['distribution']} {row['version']}: {row['value']}){allowed}")
        if "error" in row:
            print(f"    cannot load: {row['error']}")
            continue
        print(f"    {row['wants']} in, {row['provides']} out")
        options = row["options"]
        assert isinstance(options, dict)
        for name, types in options.items():
            print(f"    .{name}({', '.join(types)})")
    where = str(config.source) if config.source is not None else "the embedded default config"
    print(f"\nconfigured functions ({where}):")
    if not functions:
        print("  none")
    for function in functions:
        _print_function(function)
    return EXIT_OK


def _print_function(row: dict[str, Any]) -> None:
    state = "ok  " if row["ok"] else "FAIL"
    print(f"{state} {row['name']}  handler {row['handler']!r}  pool {row['pool']}")
    print(f"     socket {row['socket']}")
    if not row["ok"]:
        for line in str(row["error"]).splitlines():
            print(f"     {line}")
        return
    print(f"     {row['origin']}: {row['wants']} in, {row['provides']} out")
    for name, signature in row["options"].items():
        notes = []
        if name in row["defaults"]:
            notes.append(f"default {row['defaults'][name]!r} from the config")
        if name in row["required"]:
            notes.append("required")
        print(f"     {signature}" + (f"  ({'; '.join(notes)})" if notes else ""))


def cmd_validate(args: argparse.Namespace) -> int:
    from udfd.plugins.validate import validate_functions

    rows = [r.as_dict() for r in validate_functions(_load(args))]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for row in rows:
            _print_function(row)
        failed = sum(not r["ok"] for r in rows)
        print(f"{len(rows) - failed} function(s) valid, {failed} invalid")
    return EXIT_OK if all(r["ok"] for r in rows) else EXIT_CONFIG


def cmd_new(args: argparse.Namespace) -> int:
    from udfd.scaffold import ScaffoldError, write_plugin

    directory = args.output or Path(args.name)
    try:
        written = write_plugin(args.name, directory)
    except ScaffoldError as exc:
        print(f"udfd new: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in written:
        print(path)
    print(f"\nnext: pip install -e '{directory}[test]' && pytest {directory}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from udfd.run.command import cmd_run

    return cmd_run(args)


def cmd_check(args: argparse.Namespace) -> int:
    """Info on every socket, as Kapacitor asks at start-up, plus the daemon's own view.

    A function whose handler failed to load still answers Info (so Kapacitor can
    start), so the socket probe alone would call it healthy: the daemon's status
    file says which functions failed or are still loading.
    """
    from udfd.plugins.loader import discover
    from udfd.protocol.client import probe_info
    from udfd.serve.status import STATUS_FILE, read_status
    from udfd.serve.supervisor import STATUS_INTERVAL

    config = _load(args)
    functions = resolve_functions(config, discover(autoload=not config.disable_plugin_autoload))
    known = _live_states(config, args.timeout)
    if known is None:  # no health endpoint, or none answering: the status file
        path = config.state_dir / STATUS_FILE
        try:
            status = read_status(path, max_age=3 * STATUS_INTERVAL)
        except PermissionError:
            print(f"FAIL status: cannot read {path}: run check as the daemon's user or root")
            return EXIT_CHECK_FAILED
        # no health endpoint and no fresh status: whether the handlers loaded is unknown,
        # and a socket that answers Info proves nothing about that
        known = None if status is None else {f["name"]: f for f in status["functions"]}

    async def probe_all() -> list[tuple[str, str, str]]:
        results: list[tuple[str, str, str]] = []
        for fn in functions:
            try:
                with anyio.fail_after(args.timeout):
                    info = await probe_info(fn.socket, reply_timeout=args.timeout)
            except Exception as exc:
                results.append((fn.name, "FAIL", f"{fn.socket}: {type(exc).__name__}: {exc}"))
                continue
            edges = f"{_edge(info.wants)}->{_edge(info.provides)}"
            if known is None:
                results.append(
                    (
                        fn.name,
                        "FAIL",
                        f"{fn.socket} answers Info, but whether its handler loaded cannot be "
                        f"told: no health endpoint answered and {config.state_dir / STATUS_FILE} "
                        f"is missing or older than {3 * STATUS_INTERVAL:.0f}s (is state_dir "
                        "writable by the daemon?)",
                    )
                )
                continue
            state = known.get(fn.name)
            if state is None or state.get("socket") != str(fn.socket):
                results.append(
                    (fn.name, "FAIL", f"{fn.socket} answers Info, but the daemon does not list it")
                )
                continue
            if state.get("state") == "failed":
                results.append((fn.name, "FAIL", f"handler failed to load: {state['error']}"))
                continue
            if state.get("state") == "loading":
                results.append((fn.name, "FAIL", f"{fn.socket}: handler still loading"))
                continue
            results.append((fn.name, "ok", f"{fn.socket} ({edges})"))
        return results

    results = anyio.run(probe_all)
    for name, outcome, detail in results:
        if outcome != "ok" or not args.quiet:
            print(f"{outcome:<4} {name}: {detail}")
    if not results:
        print("no functions configured: nothing to check")
        return EXIT_CHECK_FAILED
    return EXIT_CHECK_FAILED if any(r[1] != "ok" for r in results) else EXIT_OK


def _live_states(config: Config, timeout: float) -> dict[str, dict[str, Any]] | None:
    """The functions' states from the daemon's health endpoint, shaped as the status
    file's; None when no endpoint is configured or none answers."""
    from udfd.serve.health import fetch_health

    address = config.health_address()
    document = None if address is None else fetch_health(address, timeout)
    if document is None:
        return None
    states = {"serving": "ready", "draining": "ready"}
    return {
        name: {
            "state": states.get(entry.get("state", ""), entry.get("state", "")),
            "error": entry.get("reason", ""),
            "socket": entry.get("socket", ""),
        }
        for name, entry in document.get("functions", {}).items()
    }


def _edge(value: int) -> str:
    return "batch" if value == 1 else "stream"


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP the daemon and report how its reload went, from its status file."""
    import signal

    from udfd.serve.status import STATUS_FILE, read_status

    config = _load(args)
    path = config.state_dir / STATUS_FILE
    status = read_status(path, max_age=float("inf"))
    if status is None:
        print(f"udfd reload: no running daemon found ({path})", file=sys.stderr)
        return EXIT_CHECK_FAILED
    before = status.get("reload", {}).get("count", 0)
    os.kill(status["pid"], signal.SIGHUP)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        status = read_status(path, max_age=float("inf")) or {}
        result = status.get("reload", {})
        if result.get("count", 0) > before:
            if result.get("ok"):
                print(f"reloaded: {len(status.get('functions', []))} function(s)")
                return EXIT_OK
            print(f"udfd reload: configuration error, nothing changed:\n{result.get('error')}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
    print(f"udfd reload: no answer from pid {status.get('pid')} in {args.timeout:g}s",
          file=sys.stderr)  # fmt: skip
    return EXIT_CHECK_FAILED


def cmd_kapacitor_conf(args: argparse.Namespace) -> int:
    from udfd.plugins.loader import discover

    config = _load(args)
    print(
        render_kapacitor_conf(config, discover(autoload=not config.disable_plugin_autoload)), end=""
    )
    return EXIT_OK


def cmd_systemd_units(args: argparse.Namespace) -> int:
    from udfd.config.units import PACKAGED_CONFIG, render_units
    from udfd.plugins.loader import discover

    config = _load(args)
    if Path(sys.argv[0]).name == "udfd":
        udfd = Path(sys.argv[0]).resolve()
    else:  # `python -m udfd`: the script next to this interpreter
        udfd = Path(sys.executable).parent / "udfd"
    config_path = args.config.resolve() if args.config is not None else PACKAGED_CONFIG
    units = render_units(
        config,
        discover(autoload=not config.disable_plugin_autoload),
        udfd=udfd,
        config_path=config_path,
    )
    args.output.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (args.output / name).write_text(text)
        print(args.output / name)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from udfd import logs
    from udfd.demo import run

    logs.configure("info", "plain")
    if args.backfill and args.count <= 0:
        print("udfd demo: --backfill needs --count N", file=sys.stderr)
        return EXIT_USAGE
    try:
        written = run(
            args.url,
            args.token,
            args.org,
            args.bucket,
            interval=args.interval,
            count=args.count,
            seed=args.seed,
            backfill=args.backfill,
        )
    except Exception as exc:  # the server's or the network's error, said plainly
        print(f"udfd demo: writing to {args.url} failed: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"udfd demo: {written} records written to {args.url} (bucket {args.bucket})")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from udfd.train.command import cmd_train as train

    return train(args)


COMMANDS = {
    "serve": cmd_serve,
    "list": cmd_list,
    "check": cmd_check,
    "validate": cmd_validate,
    "run": _cmd_run,
    "new": cmd_new,
    "kapacitor-conf": cmd_kapacitor_conf,
    "reload": cmd_reload,
    "systemd-units": cmd_systemd_units,
    "demo": cmd_demo,
    "train": cmd_train,
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run" and not any(e.startswith("-") and e != "-" for e in extra):
        args.args.extend(extra)  # FILE after options: `udfd run H --opt a=1 in.lp`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"udfd: configuration error:\n{exc}", file=sys.stderr)
        code = EXIT_CONFIG
    except StartupError as exc:
        print(f"udfd: cannot start: {exc}", file=sys.stderr)
        code = EXIT_STARTUP
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
