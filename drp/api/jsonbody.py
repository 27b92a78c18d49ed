"""Strict JSON at the door: what a client sends is standard JSON (RFC 8259) that every consumer
of the store — SQLite's json_extract, Go's encoding/json, a replica — reads back as written.

Refused, each with a one-line reason (JsonError, a ValueError):
- NaN, Infinity, -Infinity (Python's json accepts them; SQLite calls such a body malformed);
- numbers out of range: a float that overflows to infinity (1e400), an integer outside 64 bits
  (-2^63 .. 2^64-1, what dr-provision's Go server can hold in an int64 or uint64);
- lone UTF-16 surrogates ("\\ud800") in keys or strings: not Unicode, no UTF-8 for them;
- nesting deeper than MAX_DEPTH arrays/objects (checked without recursion: Python's decoder
  raises RecursionError near 1000 levels; that is caught and reported the same way).
"""
from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 100  # arrays/objects inside each other; dr-provision objects need a handful
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonError(ValueError):
    """Not strict JSON; str() is the one-line reason."""


def _refuse_constant(name: str):
    raise JsonError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _check_scalar(value, check_strings: bool) -> None:
    if isinstance(value, float):
        if not math.isfinite(value):  # json made 1e400 an infinity
            raise JsonError("a number is out of range (it overflows a 64-bit float)")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            shown = str(value) if value.bit_length() < 128 else f"of {value.bit_length()} bits"
            raise JsonError(f"integer {shown} is out of range: integers must fit in 64 bits "
                            f"({INT_MIN} to {INT_MAX})")
    elif check_strings and isinstance(value, str) and _SURROGATE.search(value):
        raise JsonError(f"string {value[:40]!r} holds a lone UTF-16 surrogate "
                        "(not valid Unicode)")


def check_tree(doc, check_strings: bool = True) -> None:
    """JsonError unless `doc` (parsed or built, e.g. a patched object) is at most MAX_DEPTH deep,
    with finite floats, 64-bit integers and (check_strings) no lone surrogates. An explicit
    stack, no recursion."""
    _check_scalar(doc, check_strings)
    stack = [(doc, 1)] if isinstance(doc, (dict, list)) else []
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise JsonError(f"nested deeper than {MAX_DEPTH} levels of arrays and objects")
        if isinstance(value, dict):
            if check_strings:
                for k in value:
                    if _SURROGATE.search(k):
                        raise JsonError(f"key {k[:40]!r} holds a lone UTF-16 surrogate "
                                        "(not valid Unicode)")
            value = value.values()
        for v in value:
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1))
            else:
                _check_scalar(v, check_strings)


def loads(raw: bytes | str):
    """Parse strict JSON, or raise JsonError with the reason."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as e:
        raise JsonError(f"not UTF-8: {e}") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError(f"nested deeper than {MAX_DEPTH} levels of arrays and objects") from None
    except ValueError as e:  # json.JSONDecodeError included
        if "integer string conversion" in str(e):  # Python's cap on digits, not a syntax error
            raise JsonError(f"an integer of thousands of digits is out of range: integers must "
                            f"fit in 64 bits ({INT_MIN} to {INT_MAX})") from None
        raise JsonError(str(e)) from None
    # Valid UTF-8 holds no surrogates: only a \u escape can make one.
    check_tree(doc, check_strings="\\u" in text)
    return doc
