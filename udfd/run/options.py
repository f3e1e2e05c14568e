"""``--opt name=value``: values typed exactly as Kapacitor types TICKscript literals.

In a TICKscript, ``10`` is an int, ``1.5`` a float, ``TRUE``/``FALSE`` a bool, ``5m``
a duration and ``'x'`` a string. On a command line quotes are usually eaten by the
shell, so a bare word that is none of the others is a string too (``field=value``).
Floats need digits on both sides of the point (``1.5``; ``.5`` and ``1e3`` are
words, as a TICKscript cannot write them), and the bools are ``TRUE`` and ``FALSE``.
A prefix forces a type: ``int:``, ``float:``, ``bool:``, ``str:``, ``dur:``. Several
values for one call are separated by commas outside quotes (``range=10,20``), and
repeating ``--opt`` with the same name calls the option again, as a TICKscript
calling ``.field('a').field('b')`` does.
"""

from __future__ import annotations

import re

from udfd.protocol.proto import udf_pb2 as pb

__all__ = ["OptionSyntaxError", "parse_opt", "typed_value"]

_INT = re.compile(r"-?\d+\Z")
#: TICKscript floats have digits on both sides of the point (no exponent, no ".5")
_FLOAT = re.compile(r"-?\d+\.\d+\Z")
_PART = r"(\d+(?:\.\d+)?)(ns|us|µs|u|µ|ms|s|m|h|d|w)"
_DURATION = re.compile(rf"-?(?:{_PART})+\Z")
#: nanoseconds per unit, as TICKscript's durations write them
_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "u": 1_000, "µ": 1_000, "ms": 1_000_000,
       "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9,
       "w": 7 * 86400 * 10**9}  # fmt: skip
INT64 = (-(2**63), 2**63 - 1)


class OptionSyntaxError(ValueError):
    pass


def duration_ns(text: str) -> int:
    """A TICKscript duration ("5m", "1.5s", "500ns", "-10s", "1h30m") in whole nanoseconds,
    exactly (no float rounding for sub-microsecond values)."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration (units ns, u, ms, s, m, h, d, w)")
    sign = -1 if text.startswith("-") else 1
    total = 0
    for number, unit in re.findall(_PART, text):
        whole, _, fraction = number.partition(".")
        scale = _NS[unit]
        total += int(whole) * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
    return sign * total


def _duration(text: str) -> pb.OptionValue:
    return pb.OptionValue(type=pb.DURATION, durationValue=_int64(duration_ns(text), text))


def _int64(value: int, text: str) -> int:
    if not INT64[0] <= value <= INT64[1]:
        raise OptionSyntaxError(f"{text!r} is out of range for a 64-bit integer")
    return value


def typed_value(text: str) -> pb.OptionValue:
    """One literal, typed as a TICKscript types it (or as its prefix forces)."""
    kind, sep, rest = text.partition(":")
    if sep and kind in ("int", "float", "bool", "str", "dur"):
        try:
            if kind == "int":
                return pb.OptionValue(type=pb.INT, intValue=_int64(int(rest), text))
            if kind == "float":
                return pb.OptionValue(type=pb.DOUBLE, doubleValue=float(rest))
            if kind == "bool":
                if rest.upper() not in ("TRUE", "FALSE"):
                    raise ValueError(rest)
                return pb.OptionValue(type=pb.BOOL, boolValue=rest.upper() == "TRUE")
            if kind == "dur":
                return _duration(rest)
        except ValueError:
            raise OptionSyntaxError(f"{text!r} is not a valid {kind}") from None
        return pb.OptionValue(type=pb.STRING, stringValue=rest)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return pb.OptionValue(type=pb.STRING, stringValue=text[1:-1])
    if _INT.match(text):
        return pb.OptionValue(type=pb.INT, intValue=_int64(int(text), text))
    if _FLOAT.match(text):
        return pb.OptionValue(type=pb.DOUBLE, doubleValue=float(text))
    if text in ("TRUE", "FALSE"):  # TICKscript's only bool literals; "true" is a word
        return pb.OptionValue(type=pb.BOOL, boolValue=text == "TRUE")
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
