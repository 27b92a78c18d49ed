"""A list query (dr-provision's ?Field=Op(value)&sort=F&reverse=true&offset=N&limit=N) read
from the request's arguments, and the SQL that answers it.

A test on a kind's key (`key`) or its unique field (`name`, e.g. a machine's Name) is SQL on an
indexed column: an index lookup for Eq and In, a range of the index for Lt..Between. Any other
field is read out of each body of the kind and tested by drp_match (filterops.sql_match, a
function on every store connection, schema.connect): one JSON parse per row (two: json_valid,
then `->`), so it costs a scan of the kind. A body SQLite cannot parse matches no such test
instead of failing the whole list.

As in dr-provision: tests on one field given more than once are alternatives (any may hold),
tests on different fields must all hold; the list is in key order unless sorted; reverse turns
the whole ordered list around; offset then limit cut the page out of it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from drp.modeldefs import MODELS
from drp.models import KINDS, PARAM_KINDS, UNIQUE_FIELDS
from drp.store.filterops import FilterError, Test, parse, parse_bool

INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # SQLite takes 64-bit integers
_INTEGER = re.compile(r"[+-]?[0-9]+")
_FIELD = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_PARAM = re.compile(r"Params\.([^\"\\\x00-\x1f]+)")  # param names hold / and . (ipmi/enabled)
_PARAM_NAME = re.compile(r"[A-Za-z0-9_\-/:]+(\.[A-Za-z0-9_\-/:]+)*")
# Output options dr-provision has that change no object or order here: accepted, not applied.
IGNORED = {"slim", "decode", "params", "aggregate", "expand", "commented", "reduced",
           "exclude-self"}
# Options that would change which objects come back, which drp does not do: refused, not
# answered with a list that looks right and is not.
UNSUPPORTED = {"filter", "raw", "group-by", "range-only"}
_SQL_OPS = {"Eq": "= ?", "Lt": "< ?", "Lte": "<= ?", "Gt": "> ?", "Gte": ">= ?",
            "Between": "BETWEEN ? AND ?", "Re": "REGEXP ?"}
_SQL_NEGATED = {"Ne": "Eq", "Nin": "In", "Except": "Between"}


@dataclass(frozen=True)
class ListQuery:
    tests: tuple[tuple[str, tuple[Test, ...]], ...] = ()  # (field, its alternatives)
    sort: tuple[str, ...] = ()
    reverse: bool = False
    offset: int = 0
    limit: int = -1  # negative: no limit

    def page_size(self, matched: int) -> int:
        """How many of `matched` objects the page holds."""
        size = max(0, matched - max(self.offset, 0))
        return size if self.limit < 0 else min(size, self.limit)


def field_of(kind: str | None, name: str, sort: bool = False) -> str:
    """The field a filter (or sort) argument names, as a name json_path reads: a field of the
    kind's model, a path into one (Meta.color, Params.ipmi/enabled), or (a filter on a kind with
    Params) a bare param name, which dr-provision looks up in Params when no field has it."""
    what = "sort by" if sort else "filter on"
    spec = MODELS.get(kind) if kind else None
    if _PARAM.fullmatch(name):
        top = "Params"
    elif _FIELD.fullmatch(name):
        top = name.split(".")[0]
    elif not sort and kind in PARAM_KINDS and _PARAM_NAME.fullmatch(name):
        top = None  # holds a / or :, so no field's name: a param's
    else:
        raise FilterError(f"cannot {what} {name!r}: want a field name like Name, Meta.color "
                          "or Params.ipmi/enabled")
    if spec is None or top in spec:
        return name
    if not sort and kind in PARAM_KINDS:
        return "Params." + name
    raise FilterError(f"Not sortable: {name}" if sort else f"Filter not found: {name}")


def _check_type(kind: str | None, name: str, text: str, test: Test) -> None:
    """A value for a number or boolean field must be one (dr-provision converts it)."""
    code = MODELS.get(kind, {}).get(name) if kind else None
    if test.op == "Re" or code not in ("i", "b"):
        return
    for arg in test.args:
        if code == "b" and parse_bool(arg) is None:
            raise FilterError(f"filter {name}={text}: {name} is a boolean, {arg!r} is not")
        if code == "i" and not _INTEGER.fullmatch(arg):
            raise FilterError(f"filter {name}={text}: {name} is an integer, {arg!r} is not")


def _integer(name: str, text: str) -> int:
    if not _INTEGER.fullmatch(text):  # as Go's strconv.Atoi: no spaces, no 1_000
        raise FilterError(f"{name} {text!r} is not an integer")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise FilterError(f"{name} {value} is out of range: it must fit in a signed 64-bit "
                          "integer")
    return value


def query(args: Iterable[tuple[str, str]], kind: str | None = None) -> ListQuery:
    """The list query on kind of a request's arguments (each (name, value), repeats kept in
    order); FilterError says what dr-provision would refuse."""
    tests: dict[str, list[Test]] = {}
    sort: list[str] = []
    reverse, offset, limit = False, 0, -1
    for name, value in args:
        if name == "sort":
            sort.append(field_of(kind, value, sort=True))
        elif name == "reverse":
            flag = True if value == "" else parse_bool(value)  # ?reverse alone reverses
            if flag is None:
                raise FilterError(f"reverse {value!r} is not a boolean: want true or false")
            reverse = flag
        elif name == "offset":
            offset = _integer("offset", value)
        elif name == "limit":
            limit = _integer("limit", value)
        elif name in UNSUPPORTED:
            raise FilterError(f"{name} is not supported by this server: filter with "
                              "Field=Op(value) arguments instead")
        elif name in IGNORED:
            continue
        else:
            field_name = field_of(kind, name)
            test = parse(name, value)
            _check_type(kind, field_name, value, test)
            tests.setdefault(field_name, []).append(test)
    return ListQuery(tuple((f, tuple(ts)) for f, ts in tests.items()), tuple(sort), reverse,
                     offset, limit)


def json_path(name: str) -> str:
    """SQLite's JSON path of a field name: each label quoted (Params.x/y is Params, "x/y")."""
    param = _PARAM.fullmatch(name)
    labels = ["Params", param.group(1)] if param else name.split(".")
    return "$." + ".".join(f'"{label}"' for label in labels)


def _column(kind: str, name: str) -> str | None:
    """The indexed column that holds the field, if one does."""
    k = KINDS.get(kind)
    if k is not None and name == k.key:
        return "key"
    if UNIQUE_FIELDS.get(kind) == name:
        return "name"
    return None


def _column_test(column: str, test: Test) -> tuple[str, list]:
    if test.op in _SQL_NEGATED:
        sql, params = _column_test(column, Test(_SQL_NEGATED[test.op], test.args))
        return f"NOT ({sql})", params
    if test.op == "In":
        return f"{column} IN ({', '.join('?' * len(test.args))})", list(test.args)
    return f"{column} {_SQL_OPS[test.op]}", list(test.args)


def where(kind: str, q: ListQuery) -> tuple[str, list]:
    """(SQL terms, each starting with AND; their parameters) for the query's tests on kind."""
    sql: list[str] = []
    params: list = []
    for name, tests in q.tests:
        column = _column(kind, name)
        alternatives = []
        for test in tests:
            if column is not None:
                term, values = _column_test(column, test)
            else:  # the field's JSON text (NULL when absent) to the Python matcher
                term = "drp_match(CASE WHEN json_valid(body) THEN body -> ? END, ?)"
                values = [json_path(name), test.spec()]
            alternatives.append(term)
            params += values
        sql.append(f"AND ({' OR '.join(alternatives)})")
    return " ".join(sql), params


def order_by(kind: str, q: ListQuery) -> tuple[str, list]:
    """ORDER BY the sort fields in turn, then the key (key order when unsorted)."""
    direction = " DESC" if q.reverse else ""
    terms, params = [], []
    for name in q.sort:
        column = _column(kind, name)
        if column is None:  # json_extract: numbers sort as numbers, then strings
            column = "(CASE WHEN json_valid(body) THEN json_extract(body, ?) END)"
            params.append(json_path(name))
        terms.append(column + direction)
    terms.append("key" + direction)
    return "ORDER BY " + ", ".join(terms), params


def from_filters(kind: str, filters: dict[str, str] | ListQuery | None, offset: int = 0,
                 limit: int = -1) -> ListQuery:
    """A ListQuery from the store's older call form: {Field: value} plus offset and limit."""
    if isinstance(filters, ListQuery):
        return filters
    return query([*(filters or {}).items(), ("offset", str(offset)), ("limit", str(limit))],
                 kind)

