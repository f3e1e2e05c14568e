"""Write docs/api.md, the reference of udfd's public handler API, from the docstrings.

    python scripts/apidoc.py            # rewrite docs/api.md
    python scripts/apidoc.py --check    # exit 1 if docs/api.md is out of date (CI, a test)

The page lists what a handler author uses: everything ``udfd`` exports, the test
helpers in ``udfd.testing``, the client's methods (``udfd.protocol.client``), the
pytest plugin's ``udf`` fixture and the conformance check. Signatures come from
``inspect``, text from the docstrings, so the page cannot drift from the code
without the check failing.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"

HEADER = """\
# udfd's handler API

Generated from the docstrings by `python scripts/apidoc.py`; a test fails when this page
and the code differ. The guide to writing handlers is in the README ("Writing a
handler"); "your first UDF" is in [first-udf.md](first-udf.md).
"""

#: (module, title, names or None for the module's __all__, intro)
SECTIONS: list[tuple[str, str, list[str] | None, str]] = [
    ("udfd", "`udfd`: handlers, options, points", None,
     "Everything a handler module imports: `import udfd`."),
    ("udfd.testing", "`udfd.testing`: serving and driving a handler in a test",
     ["serve_handler", "run_task", "TaskRun", "make_batch", "check_batch_framing",
      "DaemonProcess", "short_socket_dir"], ""),
    ("udfd.protocol.client", "`udfd.protocol.client`: Kapacitor's side of the protocol",
     ["connect", "probe_info", "UdfClient", "UdfError", "init_options", "option_value"], ""),
    ("udfd.pytest_plugin", "`udfd.pytest_plugin`: the `udf` fixture", ["udf", "UdfHarness"],
     "Registered through the `pytest11` entry point: installed with udfd, active in every "
     "pytest run."),
    ("udfd.conformance", "`udfd.conformance`: the conformance check",
     ["check_conformance", "assert_conformant", "ConformanceReport", "CHECKS"], ""),
]  # fmt: skip

#: objects whose repr says nothing useful (annotations, marker instances)
MARKERS = {
    "Flag": "A `bool` option written without a value in a TICKscript (`.keepOriginal()`): "
    "annotate the field as `udfd.Flag`.",
    "ConfigOnly": "Marks an option that only the operator's config may set, never a "
    "TICKscript: `Annotated[list[str], udfd.ConfigOnly]`.",
}

#: messages re-exported from the protocol: documented by their fields elsewhere
PROTOBUF = {"Point", "BeginBatch", "EndBatch"}


def _doc(obj: Any) -> str:
    return inspect.getdoc(obj) or "(no docstring)"


def _signature(name: str, obj: Any) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined in the class itself (not a dataclass field's
    default that happens to be a function, not an ``__init__`` without its own doc)."""
    out = []
    for name, member in cls.__dict__.items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            out.append((name, member))
        elif inspect.isfunction(member) and member.__qualname__.startswith(cls.__qualname__ + "."):
            if name == "__init__" and not member.__doc__:
                continue
            out.append((name, member))
    return out


def _entry(module: str, name: str, obj: Any) -> list[str]:
    lines = []
    if name in PROTOBUF and module == "udfd":
        return [f"### `udfd.{name}`", "",
                f"The protocol's `{name}` message (`udfd.protocol.proto.udf_pb2.{name}`); "
                "its fields are in `../shared/docs/kapacitor-udf-protocol.md` and "
                "`udfd/protocol/proto/udf.proto`.", ""]  # fmt: skip
    if inspect.isclass(obj) and not issubclass(obj, enum.Enum):
        bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
        lines += [f"### class `{module}.{name}`" + (f"({bases})" if bases else ""), ""]
        lines += [_doc(obj), ""]
        for member_name, member in _members(obj):
            if isinstance(member, property):
                lines += [f"- property `{member_name}`: " + (inspect.getdoc(member) or "")]
            else:
                first = (inspect.getdoc(member) or "").split("\n\n")[0].replace("\n", " ")
                lines += [
                    f"- `{_signature(member_name, member)}`" + (f": {first}" if first else "")
                ]
        lines.append("")
        return lines
    if inspect.isclass(obj):  # an enum
        values = ", ".join(f"`{m.name}`" for m in obj)
        return [f"### enum `{module}.{name}`", "", _doc(obj), "", f"Values: {values}.", ""]
    if type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(obj, "_fixture_function"):
        return [f"### fixture `{name}`", "", _doc(obj), ""]
    if inspect.isfunction(obj):
        return [f"### `{module}.{_signature(name, obj)}`", "", _doc(obj), ""]
    if isinstance(obj, (str, tuple, int)):
        return [f"### `{module}.{name}` = `{obj!r}`", ""]
    if name in MARKERS:
        return [f"### `{module}.{name}`", "", MARKERS[name], ""]
    return [f"### `{module}.{name}`", "", f"`{obj!r}`".replace("typing.", ""), ""]


def render() -> str:
    import importlib

    out = [HEADER]
    for module_name, title, names, intro in SECTIONS:
        module = importlib.import_module(module_name)
        out += [f"## {title}", ""]
        if intro:
            out += [intro, ""]
        for name in names if names is not None else list(module.__all__):
            if name.startswith("__"):
                continue
            out += _entry(module_name, name, getattr(module, name))
    text = "\n".join(out).rstrip() + "\n"
    return re.sub(r" at 0x[0-9a-f]+", "", text)  # addresses differ from run to run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print("docs/api.md is out of date: run python scripts/apidoc.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
