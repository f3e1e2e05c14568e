"""The ``udfd train`` command: sources, the dataset, the files written, what is printed."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from udfd.history.rows import HistoryError, Row
from udfd.train.api import Dataset, InstalledTrainer, Trained, Trainer, installed_trainers
from udfd.train.progress import Progress

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class TrainError(Exception):
    """Something the user can fix; printed as ``udfd train: <message>``."""


def add_train_parser(sub: Any, load_trainers: bool) -> None:
    """``udfd train``, with one sub-command per installed trainer.

    Trainers are imported only when the command line is ``udfd train ...``, so
    ``udfd serve`` never pays for a plugin's imports.
    """
    trainers = installed_trainers() if load_trainers else []
    train = sub.add_parser(
        "train",
        help="fit a model from history (a file or InfluxDB); print its config and TICKscript",
        description=(
            "Fits a model from a line-protocol or CSV file, or from InfluxDB (InfluxQL over "
            "the 1.x API, or Flux), writes it with its sha256, and prints the udfd config and "
            "the TICKscript that serve it. Trainers are plugins (entry point group "
            "udfd.trainers); udfd-ml provides isolation_forest and classifier."
        ),
    )
    kinds = train.add_subparsers(dest="trainer", metavar="KIND")
    for found in trainers:
        try:
            trainer = found.load()
        except Exception as exc:  # a broken plugin must not break the whole CLI
            kinds.add_parser(found.name, help=f"(cannot load: {type(exc).__name__}: {exc})")
            continue
        parser = kinds.add_parser(found.name, help=trainer.summary, description=trainer.summary)
        _add_common(parser, trainer)
        trainer.add_arguments(parser.add_argument_group(f"{found.name} options"))
        parser.set_defaults(trainer_object=trainer, trainer_entry=found)


def _add_common(parser: argparse.ArgumentParser, trainer: Trainer) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--fields", required=True, help="the feature fields, comma-separated, in order"
    )
    data.add_argument(
        "--label",
        required=trainer.needs_label,
        default=None,
        help="the field (or tag) holding the class to learn" if trainer.needs_label else "unused",
    )
    data.add_argument("--measurement", default="", help="only points of this measurement")
    source = parser.add_argument_group("from a file")
    source.add_argument(
        "--input", type=Path, metavar="FILE", help="line protocol (.lp, .txt) or CSV"
    )
    source.add_argument(
        "--input-format", choices=("auto", "lp", "csv"), default="auto", help="default: by suffix"
    )
    source.add_argument("--precision", default="ns", help="line protocol timestamps: ns us ms s")
    influx = parser.add_argument_group("from InfluxDB")
    influx.add_argument("--influx-url", metavar="URL", help="e.g. http://localhost:8086")
    influx.add_argument(
        "--language",
        choices=("influxql", "flux"),
        default=None,
        help="default: flux when --token, --org or --bucket is given, else influxql",
    )
    influx.add_argument(
        "--query", help="the query (default: built from --measurement and --fields)"
    )
    influx.add_argument("--database", default="", help="InfluxQL: the database")
    influx.add_argument("--bucket", default="", help="Flux: the bucket")
    influx.add_argument("--org", default=os.environ.get("INFLUX_ORG", ""), help="Flux: the org")
    influx.add_argument(
        "--token", default=os.environ.get("INFLUX_TOKEN"), help="Flux (2.x); default $INFLUX_TOKEN"
    )
    influx.add_argument("--username", default=os.environ.get("INFLUX_USERNAME"))
    influx.add_argument(
        "--password", default=os.environ.get("INFLUX_PASSWORD"), help="default $INFLUX_PASSWORD"
    )
    influx.add_argument("--start", default="30d", help="how far back the built query reads (30d)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", "-o", type=Path, required=True, metavar="MODEL")
    out.add_argument(
        "--function", default="", help="function name in the printed config (default: from MODEL)"
    )
    out.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


# ------------------------------------------------------------------ reading


def _fields(args: argparse.Namespace) -> list[str]:
    names = [f.strip() for f in args.fields.split(",") if f.strip()]
    if not names:
        raise TrainError("--fields names no field")
    if len(set(names)) != len(names):
        raise TrainError("--fields names a field twice")
    return names


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql_query(measurement: str, columns: list[str], start: str) -> str:
    selected = ", ".join(_quote_ident(c) for c in columns)
    where = f" WHERE time > now() - {start}" if start else ""
    return f"SELECT {selected} FROM {_quote_ident(measurement)}{where}"


def read_rows(args: argparse.Namespace, columns: list[str], progress: Progress) -> Iterator[Row]:
    if (args.input is None) == (args.influx_url is None):
        raise TrainError("give either --input FILE or --influx-url URL")
    if args.input is not None:
        return _file_rows(args, progress)
    language = args.language or ("flux" if (args.token or args.org or args.bucket) else "influxql")
    query = args.query
    if language == "influxql":
        from udfd.history.influxql import influxql_rows

        if not query:
            if not args.measurement:
                raise TrainError("InfluxQL: give --query, or --measurement to build one")
            query = influxql_query(args.measurement, columns, args.start)
        if not args.database:
            raise TrainError("InfluxQL: --database is required")
        progress.start(f"reading {args.influx_url} (InfluxQL)", unit="points")
        return influxql_rows(
            args.influx_url,
            args.database,
            query,
            username=args.username,
            password=args.password,
            on_chunk=progress.advance,
        )
    from udfd.history.flux import flux_query, flux_rows

    if not query:
        if not (args.bucket and args.measurement):
            raise TrainError("Flux: give --query, or --bucket and --measurement to build one")
        query = flux_query(args.bucket, args.measurement, columns, f"-{args.start}")
    progress.start(f"reading {args.influx_url} (Flux)", unit="points")
    return flux_rows(
        args.influx_url,
        query,
        org=args.org,
        token=args.token,
        username=args.username,
        password=args.password,
        on_rows=progress.update,
    )


def _file_rows(args: argparse.Namespace, progress: Progress) -> Iterator[Row]:
    path: Path = args.input
    if not path.is_file():
        raise TrainError(f"--input {path}: no such file")
    fmt = args.input_format
    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() == ".csv" else "lp"
    progress.start(f"reading {path}", total=path.stat().st_size, unit="bytes")
    if fmt == "csv":
        from udfd.history.csvfile import read_csv

        rows: Iterable[Row] = read_csv(path, args.measurement)
    else:
        from udfd.history.lineprotocol import read_line_protocol

        rows = read_line_protocol(path, args.precision)
    return _with_file_progress(rows, path, progress)


def _with_file_progress(rows: Iterable[Row], path: Path, progress: Progress) -> Iterator[Row]:
    size = max(path.stat().st_size, 1)
    for count, row in enumerate(rows, 1):
        if not count % 5000:
            # rows are small and alike: their share of the count tracks the bytes read
            progress.update(min(size, count * 64))
        yield row
    progress.update(size)


def build_dataset(
    rows: Iterable[Row], features: list[str], label: str | None, measurement: str
) -> Dataset:
    data = Dataset(features=features, rows=[], measurement=measurement, label=label)
    skipped = data.skipped
    for row in rows:
        data.read += 1
        if measurement and row.measurement != measurement:
            skipped["other measurement"] = skipped.get("other measurement", 0) + 1
            continue
        values: list[float] = []
        for name in features:
            value = row.fields.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                reason = "missing a feature" if value is None else f"{name} not numeric"
                skipped[reason] = skipped.get(reason, 0) + 1
                break
            if not math.isfinite(value):  # a CSV's "nan", a 1.x export's +Inf
                skipped[f"{name} not finite"] = skipped.get(f"{name} not finite", 0) + 1
                break
            values.append(float(value))
        else:
            if label is not None:
                target = row.fields.get(label, row.tags.get(label))
                if target is None:
                    skipped["missing the label"] = skipped.get("missing the label", 0) + 1
                    continue
                data.labels.append(target)
            data.rows.append(values)
            if not data.measurement:
                data.measurement = row.measurement
    return data


# ------------------------------------------------------------------ writing


def write_atomically(path: Path, data: bytes) -> None:
    """Write then rename: a daemon reading the file sees the old or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def function_name(args: argparse.Namespace, output: Path) -> str:
    name = args.function or re.sub(r"\W+", "_", output.stem).strip("_") or "model"
    return name if not name[0].isdigit() else f"m_{name}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_snippet(name: str, handler: str, options: dict[str, Any]) -> str:
    lines = [f"[functions.{name}]", f'handler = "{handler}"', "", f"[functions.{name}.options]"]
    lines += [f"{key} = {_toml(value)}" for key, value in options.items()]
    return "\n".join(lines)


def tick_snippet(name: str, measurement: str, after: Iterable[str]) -> str:
    lines = ["stream", "    |from()", f"        .measurement('{measurement or 'MEASUREMENT'}')"]
    lines.append(f"    @{name}()")
    lines += [f"    {line}" for line in after]
    return "\n".join(lines)


def report(
    out: Any,
    trained: Trained,
    data: Dataset,
    model_path: Path,
    digest: str,
    name: str,
    handler: str,
    read_s: float,
) -> None:
    options: dict[str, Any] = {"model": str(model_path), "sha256": digest, "field": data.features}
    options.update(trained.options)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(data.skipped.items())) or "none"
    summary = [
        ("rows", f"{len(data.rows):,} used of {data.read:,} read (skipped: {skipped})"),
        ("features", ", ".join(data.features)),
        ("read", f"{read_s:.2f}s"),
        *trained.summary,
    ]
    width = max(len(what) for what, _ in summary)
    print(f"model:  {model_path}", file=out)
    print(f"sha256: {digest}", file=out)
    print("", file=out)
    for what, value in summary:
        print(f"{what:<{width}}  {value}", file=out)
    print("\n# udfd config (udfd.toml): then `udfd reload`", file=out)
    print(config_snippet(name, handler, options), file=out)
    print("\n# TICKscript (kapacitor.conf: `udfd kapacitor-conf` prints the section)", file=out)
    print(tick_snippet(name, data.measurement, trained.tick_after), file=out)


def cmd_train(args: argparse.Namespace) -> int:
    trainer: Trainer | None = getattr(args, "trainer_object", None)
    if trainer is None:
        found = installed_trainers()
        if args.trainer:
            print(f"udfd train: trainer {args.trainer!r} cannot be loaded", file=sys.stderr)
            return EXIT_FAILED
        names = ", ".join(t.name for t in found) or "none installed"
        print(
            f"udfd train KIND: trainers: {names} (udfd-ml provides isolation_forest and "
            "classifier: pip install 'udfd-ml[models]')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    entry: InstalledTrainer = args.trainer_entry
    progress = Progress(enabled=not args.quiet)
    try:
        features = _fields(args)
        label = args.label if trainer.needs_label else None
        if label is not None and label in features:
            raise TrainError(f"--label {label} is also a feature")
        columns = features + ([label] if label else [])
        data = build_dataset(read_rows(args, columns, progress), features, label, args.measurement)
        read_s = progress.finish()
        if not data.rows:
            raise TrainError(
                f"no usable rows: read {data.read}, skipped {data.skipped or 'none'}; check "
                "--measurement and --fields"
            )
        trained = trainer.train(data, args, progress)
        output: Path = args.output
        if output.suffix.lower() != trained.suffix:
            raise TrainError(f"--output {output}: this model is a {trained.suffix} file")
        write_atomically(output, trained.data)
        digest = hashlib.sha256(trained.data).hexdigest()
        write_atomically(
            output.with_name(output.name + ".sha256"), f"{digest}  {output.name}\n".encode()
        )
    except (TrainError, HistoryError, ValueError, ImportError) as exc:
        print(f"udfd train {entry.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # writing the model (a read error is a HistoryError)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"udfd train {entry.name}: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED
    report(
        sys.stdout,
        trained,
        data,
        output.resolve(),
        digest,
        function_name(args, output),
        trainer.handler,
        read_s,
    )
    return EXIT_OK
