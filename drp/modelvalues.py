"""Values against dr-provision's models (drp.modeldefs): type checks, completion with zero
values, and the fields the server keeps.

`complete` is a pure function of an object (the store's open-time migration relies on that: every
node makes the same bytes); `fill` is what a client's write becomes: checked, completed, with the
server's fields set and a client's attempt to change one refused.
"""
from __future__ import annotations

import copy
import math
import time
from datetime import datetime, timezone
from functools import lru_cache

from drp.modeldefs import DEFAULTS, MODELS, NESTED, SERVER_FIELDS, ZERO_TIME, type_name, zero

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # dr-provision's times: RFC 3339, UTC, microseconds


def now_text() -> str:
    """The current time as dr-provision writes it: RFC 3339, UTC."""
    return time_text(time.time())


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(text: str) -> bool | None:
    """A boolean as dr-provision reads one from text (Go's strconv.ParseBool), else None."""
    return True if text in _GO_TRUE else False if text in _GO_FALSE else None


_FAST_SECONDS = range(-30610224000, 253402300800)  # years 1000-9999: four digits, no surprises


@lru_cache(maxsize=16)  # a DHCP server writes a few times per second, for now and the expiries
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def time_text(when: float) -> str:
    """An epoch time as dr-provision writes times: RFC 3339, UTC, to the microsecond. What
    datetime's fromtimestamp(when, utc).strftime(TIME_FORMAT) makes, with its rounding (a
    DHCP lease carries two of these: half the cost of strftime, tests/test_modelvalues.py)."""
    frac, second = math.modf(when)
    micro = round(frac * 1e6)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:
        second, micro = second - 1, micro + 1_000_000
    if int(second) not in _FAST_SECONDS:
        return datetime.fromtimestamp(when, timezone.utc).strftime(TIME_FORMAT)
    return f"{_second_text(int(second))}.{micro:06d}Z"


def parse_time(value) -> datetime | None:
    """An RFC 3339 time with a zone, or None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _is(code: str, value) -> bool:
    """Whether value has the JSON type of `code` (its top level; see _check for inside)."""
    if code.startswith("["):
        return isinstance(value, list)
    if code in NESTED or code in ("o", "m"):
        return isinstance(value, dict)
    if code == "ms":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if code == "i":
        return isinstance(value, int) and not isinstance(value, bool)  # bool is an int in Python
    if code == "t":
        return parse_time(value) is not None
    return isinstance(value, {"s": str, "b": bool}[code])


def _check(code: str, value, path: str, problems: list[str]):
    """value checked against `code` (problems appended) and, when a nested model, completed."""
    if not _is(code, value):
        problems.append(f"{path} must be {type_name(code)}, not {_json_name(value)}")
        return value
    if code.startswith("["):
        item = code[1:-1]
        return [_check(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if code in NESTED:
        return _fill_fields(NESTED[code], value, path + ".", problems)
    return value


def _fill_fields(spec: dict[str, str], obj: dict, prefix: str, problems: list[str],
                 defaults: dict | None = None) -> dict:
    out, defaults = {}, defaults or {}
    for name, code in spec.items():
        value = obj.get(name)
        if value is None or (value == "" and name in defaults):
            # a copy: a default list must not be shared by every object filled from it
            out[name] = copy.deepcopy(defaults[name]) if name in defaults else zero(code)
        else:
            out[name] = _check(code, value, prefix + name, problems)
    # Fields the model lacks are dropped, as dr-provision's JSON decoding into its Go structs
    # drops them (gin's binding ignores unknown fields): they are neither stored nor served.
    return out


def _json_name(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {str: "string", int: "integer", float: "number", list: "array", dict: "object"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _same(code: str, a, b) -> bool:
    if code == "t":  # the same instant in another spelling (a client re-encoding a datetime)
        ta, tb = parse_time(a), parse_time(b)
        return ta is not None and ta == tb
    return a == b


def server_values(kind: str, *, current: dict | None, user: str, now: str, readonly: bool,
                  bundle: str) -> dict:
    """The server's fields of an object being created (current None) or changed."""
    spec = MODELS[kind]
    values = {"Available": True, "Bundle": bundle, "Endpoint": "", "Errors": [],
              "LastModifiedAt": now, "LastModifiedBy": user, "Partial": False,
              "ReadOnly": readonly, "Validated": True,
              "CreatedAt": now if current is None else current.get("CreatedAt", ZERO_TIME),
              "CreatedBy": user if current is None else current.get("CreatedBy", "")}
    return {name: v for name, v in values.items() if name in spec}


def refused_server_fields(kind: str, obj: dict, current: dict | None, server: dict) -> list[str]:
    """One message per server field the client sent with a value other than the one it has
    (an update: the stored one; a create: its zero or what the server sets)."""
    spec, problems = MODELS[kind], []
    for name in SERVER_FIELDS:
        if name not in spec or obj.get(name) is None:
            continue
        code, sent = spec[name], obj[name]
        if current is not None:
            allowed = [current.get(name, server[name] if name in server else zero(code))]
        else:
            allowed = [zero(code), server[name]]
        if not any(_same(code, sent, a) for a in allowed):
            problems.append(f"{name} is read-only: it is kept by the server (it is "
                            f"{allowed[0]!r}, the object sent has {sent!r})")
    return problems


def fill(kind: str, obj: dict, *, current: dict | None, user: str, readonly: bool = False,
         bundle: str = "", strict: bool = True) -> tuple[dict, list[str]]:
    """(the object as stored, problems): every field of the model, the client's values checked,
    the server's set. strict=False (a content bundle's objects) overwrites server fields a
    client sent instead of refusing them: the bundle owns its objects."""
    server = server_values(kind, current=current, user=user, now=now_text(),
                           readonly=readonly, bundle=bundle)
    problems = refused_server_fields(kind, obj, current, server) if strict else []
    client = _canonical(kind, {k: v for k, v in obj.items() if k not in server})
    out = _fill_fields(MODELS[kind], client, "", problems, DEFAULTS.get(kind))
    out.update(server)
    return out, problems


def _claims(claims):
    """A role's Claims in dr-provision's JSON ({scope, action, specific}: its Claim model), from
    either spelling (drp stored {Scope, Action, Specific} before issue 16)."""
    if not isinstance(claims, list):
        return claims
    return [{f: c.get(f, c.get(f.capitalize(), "")) for f in NESTED["Claim"]}
            if isinstance(c, dict) else c for c in claims]


def _canonical(kind: str, obj: dict) -> dict:
    if kind == "roles" and "Claims" in obj:
        obj["Claims"] = _claims(obj["Claims"])
    return obj


# What an object stored before full models lacks gets: zeros, and for the server's fields what
# the old server would have written (it validated every object it stored).
_LEGACY_SERVER = {"Available": True, "Validated": True}


def complete(kind: str, obj: dict) -> dict:
    """obj with every field of its model, in model order, nested models (in lists too)
    completed (a pure function of obj)."""
    obj, out = _canonical(kind, dict(obj)), {}
    for name, code in MODELS[kind].items():
        value = obj.get(name)
        if value is None:
            value = _LEGACY_SERVER.get(name, copy.deepcopy(DEFAULTS.get(kind, {}).get(name))
                                       if name in DEFAULTS.get(kind, {}) else zero(code))
        else:
            value = _check(code, value, name, [])  # completes; a wrong type is kept as it is
        out[name] = value
    return out  # fields outside the model are dropped (see _fill_fields)


def complete_nested(model: str, obj: dict) -> dict:
    return _fill_fields(NESTED[model], obj, "", [])


def check_nested(model: str, obj: dict, prefix: str) -> tuple[dict, list[str]]:
    """(obj completed to the nested model, one problem per field of the wrong type)."""
    problems: list[str] = []
    return _fill_fields(NESTED[model], obj, prefix, problems), problems


def complete_bundle_record(record: dict) -> dict:
    """A content bundle's record (as GET /contents serves it) with its full meta."""
    meta = record.get("meta")
    return {**record, "meta": complete_nested("ContentMetaData", meta)} \
        if isinstance(meta, dict) else record


def is_complete(kind: str, obj: dict) -> bool:
    return complete(kind, obj) == obj and list(complete(kind, obj)) == list(obj)
