"""``--opt name=value``: values typed exactly as Kapacitor types TICKscript literals.

In a TICKscript, ``10`` is an int, ``1.5`` a float, ``TRUE``/``FALSE`` a bool, ``5m``
a duration and ``'x'`` a string. On a command line quotes are usually eaten by the
shell, so a bare word that is none of the others is a string too (``field=value``).
A prefix forces a type: ``int:``, ``float:``, ``bool:``, ``str:``, ``dur:``. Several
values for one call are separated by commas outside quotes (``range=10,20``), and
repeating ``--opt`` with the same name calls the option again, as a TICKscript
calling ``.field('a').field('b')`` does.
"""

from __future__ import annotations

import re

from udfd.config.values import parse_duration
from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["OptionSyntaxError", "parse_opt", "typed_value"]

_INT = re.compile(r"[-+]?\d+\Z")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?\Z")
_DURATION = re.compile(r"(?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h|d|w))+\Z")
_UNITS = {"d": 86400.0, "w": 7 * 86400.0}


class OptionSyntaxError(ValueError):
    pass


def _duration(text: str) -> pb.OptionValue:
    seconds = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h|d|w)", text):
        if unit in _UNITS:
            seconds += float(number) * _UNITS[unit]
        else:
            seconds += parse_duration(number + unit).total_seconds()
    return pb.OptionValue(type=pb.DURATION, durationValue=round(seconds * 1e9))


def typed_value(text: str) -> pb.OptionValue:
    """One literal, typed as a TICKscript types it (or as its prefix forces)."""
    kind, sep, rest = text.partition(":")
    if sep and kind in ("int", "float", "bool", "str", "dur"):
        try:
            if kind == "int":
                return pb.OptionValue(type=pb.INT, intValue=int(rest))
            if kind == "float":
                return pb.OptionValue(type=pb.DOUBLE, doubleValue=float(rest))
            if kind == "bool":
                if rest.upper() not in ("TRUE", "FALSE"):
                    raise ValueError(rest)
                return pb.OptionValue(type=pb.BOOL, boolValue=rest.upper() == "TRUE")
            if kind == "dur":
                if not _DURATION.match(rest):
                    raise ValueError(rest)
                return _duration(rest)
        except ValueError:
            raise OptionSyntaxError(f"{text!r} is not a valid {kind}") from None
        return pb.OptionValue(type=pb.STRING, stringValue=rest)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return pb.OptionValue(type=pb.STRING, stringValue=text[1:-1])
    if _INT.match(text):
        return pb.OptionValue(type=pb.INT, intValue=int(text))
    if _FLOAT.match(text):
        return pb.OptionValue(type=pb.DOUBLE, doubleValue=float(text))
    if text in ("TRUE", "FALSE", "true", "false"):
        return pb.OptionValue(type=pb.BOOL, boolValue=text.upper() == "TRUE")
    if _DURATION.match(text):
        return _duration(text)
    return pb.OptionValue(type=pb.STRING, stringValue=text)


def _split_values(text: str) -> list[str]:
    """Split at commas that are not inside quotes."""
    parts, current, quote = [], "", ""
    for char in text:
        if quote:
            current += char
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
            current += char
        elif char == ",":
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if quote:
        raise OptionSyntaxError(f"unterminated quote in {text!r}")
    parts.append(current.strip())
    return parts


def parse_opt(text: str) -> pb.Option:
    """``name=value[,value...]`` (or just ``name``, a flag option) into one option call."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise OptionSyntaxError(f"--opt {text!r}: expected name=value (name an identifier)")
    if not sep:
        return pb.Option(name=name)
    if values == "":
        raise OptionSyntaxError(
            f"--opt {text!r}: no value after '=' (write '' for an empty string)"
        )
    return pb.Option(name=name, values=[typed_value(v) for v in _split_values(values)])
