"""The WHERE clause of a filtered list (?Field=value): indexed columns where a kind has them.

A filter on a kind's key (`key`) or its unique field (`name`, e.g. a machine's Name) is an
index lookup. Any other field is read out of each body of the kind: one JSON parse per row (or
a few: json_valid, json_type and json_extract each parse it), so it costs a scan of the kind.
A body SQLite cannot parse matches no such filter instead of failing the whole list.
"""
from __future__ import annotations

from drp.models import KINDS, UNIQUE_FIELDS

# Compare as text so ?Runnable=true and ?CurrentTask=3 work like dr-provision's.
_BODY_FIELD = ("CASE WHEN json_valid(body) THEN CASE json_type(body, '$.' || ?) "
               "WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
               "ELSE CAST(json_extract(body, '$.' || ?) AS TEXT) END END = ?")


def where(kind: str, filters: dict[str, str]) -> tuple[list[str], list]:
    """(SQL terms, each starting with AND; their parameters) for the filters on `kind`."""
    sql: list[str] = []
    params: list = []
    k = KINDS.get(kind)
    for field, value in filters.items():
        if k is not None and field == k.key:
            sql.append("AND key = ?")
            params.append(value)
        elif UNIQUE_FIELDS.get(kind) == field:
            sql.append("AND name = ?")
            params.append(value)
        else:
            sql.append(f"AND {_BODY_FIELD}")
            params += [field, field, value]
    return sql, params
