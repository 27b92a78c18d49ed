"""A param definition's Schema (dr-provision's Param.Schema, "a valid JSONSchema as of draft
v4"): is it a schema, and does a value match it. Checked with the jsonschema library.

dr-provision reads a Schema with gojsonschema, which takes a `$schema` when the Schema names
one and otherwise accepts the keywords of drafts 4, 6 and 7 alike. Here: the draft `$schema`
names; else draft 4 when the Schema is a draft-4 schema, else draft 7 (draft 4 refuses the
numeric exclusiveMinimum/Maximum that later drafts and gojsonschema take). Formats are
checked, as gojsonschema checks them.
"""
from __future__ import annotations

import json
from functools import lru_cache

import jsonschema
from jsonschema import Draft4Validator, Draft7Validator
from jsonschema.exceptions import SchemaError

MAX_VALUE_TEXT = 80  # how much of a refused value an error message quotes


class BadSchema(Exception):
    """A Schema that is not a JSON schema; the message says why, in one line."""


def is_empty(schema) -> bool:
    """No Schema: dr-provision accepts any value (null and {} alike)."""
    return schema is None or schema == {}


def _validator_class(schema: dict):
    if "$schema" in schema:
        return jsonschema.validators.validator_for(schema, default=Draft4Validator)
    try:
        Draft4Validator.check_schema(schema)
        return Draft4Validator
    except SchemaError:
        return Draft7Validator


@lru_cache(maxsize=512)  # keyed by the Schema's canonical text: definitions rarely change
def _validator(text: str):
    schema = json.loads(text)
    if isinstance(schema, bool):  # true / false are schemas in drafts 6 and later
        return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)
    if not isinstance(schema, dict):
        raise BadSchema(f"Schema must be a JSON object, not {type(schema).__name__}")
    cls = _validator_class(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise BadSchema(f"Schema is not a valid JSON schema: {_one_line(e.message)}"
                        + (f" (at {where})" if where else "")) from None
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _key(schema) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def check_schema(schema) -> None:
    """Raise BadSchema when a non-empty Schema is not a JSON schema."""
    if not is_empty(schema):
        _validator(_key(schema))


def problem(schema, value, secret: bool = False) -> str | None:
    """Why value does not match schema, in one line, as gojsonschema's result reads
    ("(root).a: ..."); None when it matches or there is no Schema. A Schema that is not one
    (stored before this check) is reported as the problem. secret: the reason names the
    schema keyword failed, never the value (a secure param's)."""
    if is_empty(schema):
        return None
    try:
        validator = _validator(_key(schema))
    except BadSchema as e:
        return str(e)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    if secret:
        return f"(root){where}: the value fails the schema's {error.validator!r} keyword"
    message = error.message
    shown = repr(error.instance)  # jsonschema quotes the value: a long one cut short
    if len(shown) > MAX_VALUE_TEXT:
        message = message.replace(shown, shown[:MAX_VALUE_TEXT - 3] + "...")
    return f"(root){where}: {_one_line(message)}"


def quoted(value) -> str:
    """A value as an error message quotes it: its JSON, cut short."""
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= MAX_VALUE_TEXT else text[:MAX_VALUE_TEXT - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
