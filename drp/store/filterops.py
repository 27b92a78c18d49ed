"""dr-provision's list filter values, parsed and matched: `x` (= Eq(x)), Eq(x), Ne(x), Lt(x),
Lte(x), Gt(x), Gte(x), In(a,b,c), Nin(a,b,c), Re(regex), Between(lo,hi), Except(lo,hi).

A value is compared in the type of the field it is tested against, as dr-provision converts
its string to the field's type: numbers as numbers, booleans as Go's strconv.ParseBool reads
them (true/false, True, t, 1, ...), strings as strings (byte order, as Go compares them). A list
field holds when any of its elements does (Ne, Nin and Except: when none does what Eq, In and
Between would). A field that is missing or null never equals anything.

Re is Go's regexp in dr-provision, which is RE2: here it is RE2 itself (google-re2), so the
same patterns compile (POSIX classes, \\pL, \\z) and the same are refused (backreferences,
lookarounds); both search (unanchored).
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

import re2

from drp.modelvalues import parse_bool  # Go's strconv.ParseBool, as dr-provision converts

OPERATORS = ("Eq", "Ne", "Lt", "Lte", "Gt", "Gte", "In", "Nin", "Re", "Between", "Except")
_NEGATED = {"Ne": "Eq", "Nin": "In", "Except": "Between"}  # holds when its positive does not
_CALL = re.compile(r"([A-Z][A-Za-z]*)\((.*)\)", re.DOTALL)
_RE2 = re2.Options()
_RE2.log_errors = False  # a bad pattern is the client's 406, not a line on our stderr


class FilterError(ValueError):
    """A list query dr-provision refuses (406); the message says which part and why."""


@dataclass(frozen=True)
class Test:
    op: str
    args: tuple[str, ...]

    def spec(self) -> str:
        """The test as the text the SQL function drp_match takes."""
        return json.dumps([self.op, list(self.args)])


def parse(field: str, text: str) -> Test:
    """The test a filter value asks for; FilterError for an unknown operator, a wrong number
    of arguments or a regex that does not compile."""
    call = _CALL.fullmatch(text)
    if call is None:
        return Test("Eq", (text,))
    op, inner = call.groups()
    if op not in OPERATORS:
        raise FilterError(f"filter {field}={text}: unknown operator {op}; want one of "
                          f"{', '.join(OPERATORS)} (a literal value like this one: Eq({text}))")
    if op in ("In", "Nin"):
        return Test(op, tuple(inner.split(",")))
    if op in ("Between", "Except"):
        parts = inner.split(",")
        if len(parts) != 2:
            raise FilterError(f"filter {field}={text}: {op} takes two values, lower and upper, "
                              f"not {len(parts)}")
        return Test(op, tuple(parts))
    if op == "Re":
        compile_re(field, inner)
    return Test(op, (inner,))


def compile_re(field: str, pattern: str):
    try:
        return _compiled(pattern)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(
            e.args[0], bytes) else str(e)
        raise FilterError(f"filter {field}=Re({pattern}): not a regular expression: "
                          f"{reason}") from None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str):
    return re2.compile(pattern, options=_RE2)


def regexp(pattern: str, text) -> bool:
    """SQLite's REGEXP (`text REGEXP pattern`): True when text contains a match."""
    return text is not None and _compiled(pattern).search(str(text)) is not None


def matches(test: Test, value) -> bool:
    """Whether a field's value (as decoded from JSON) passes the test."""
    if test.op in _NEGATED:
        return not matches(Test(_NEGATED[test.op], test.args), value)
    if isinstance(value, list):
        return any(_holds(test, v) for v in value)
    return _holds(test, value)


def _holds(test: Test, value) -> bool:
    if test.op == "Re":
        return value is not None and _compiled(test.args[0]).search(_text(value)) is not None
    args = [_as_type_of(value, a) for a in test.args]
    if value is None or isinstance(value, (dict, list)) or None in args:
        return False
    op = test.op
    if op == "Eq":
        return value == args[0]
    if op == "In":
        return value in args
    if op == "Between":
        return args[0] <= value <= args[1]
    return {"Lt": value < args[0], "Lte": value <= args[0], "Gt": value > args[0],
            "Gte": value >= args[0]}[op]


def _as_type_of(value, text: str):
    """text converted to the type of value; None when it cannot be (it then matches nothing,
    where dr-provision would refuse the filter)."""
    if isinstance(value, bool):
        return parse_bool(text)
    if isinstance(value, (int, float)):
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return None
    return text


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@functools.lru_cache(maxsize=256)
def _test_of(spec: str) -> Test:
    op, args = json.loads(spec)
    return Test(op, tuple(args))


def sql_match(field_json: str | None, spec: str) -> int:
    """SQLite function drp_match(JSON text of a field or NULL, Test.spec()): 1 when it passes."""
    value = None if field_json is None else json.loads(field_json)
    return int(matches(_test_of(spec), value))
