"""The replication wire form of a change-log entry, both ways, in one place.

An entry travels as one JSON object: {"seq", "epoch", "time", "kind", "key", "action", "body"}
plus "data" (base64) for a job-log append. The active encodes rows straight from the log
(`entry_text`, no decode and re-encode of the body) and frames a batch (`entries_frame`); the
passive checks what arrived (`check_entry`) and turns it back into an entry the store applies
(`entry_from_wire`).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

FIELDS = ("seq", "epoch", "time", "kind", "key", "action", "body")


class WireError(ValueError):
    """An entry that is not in wire form (the text is one line)."""


def entry_text(row: tuple) -> str:
    """A change-log row as the JSON text of its wire entry: the object json.dumps would make
    of it with `data` in base64, without decoding the stored body first."""
    seq, epoch, when, kind, key, action, body, data = row
    text = (f'{{"seq":{seq},"epoch":{epoch},"time":{json.dumps(when)},"kind":{json.dumps(kind)},'
            f'"key":{json.dumps(key)},"action":{json.dumps(action)},"body":{body or "null"}')
    if data is not None:
        text += f',"data":"{base64.b64encode(data).decode()}"'
    return text + "}"


def entries_frame(texts: list[str], head: int) -> str:
    """An `entries` message from entries already in wire form: what json.dumps of
    {"type": "entries", "items": [...], "head": head} makes, without re-encoding each one."""
    return f'{{"type":"entries","items":[{",".join(texts)}],"head":{int(head)}}}'


def puts_blob(text: str) -> bool:
    """Whether an entry in wire form (as entry_text makes it: kind, key, action, then the
    body) puts a blob, whose receiver fetches the bytes before it can apply it."""
    kind = text.find('"kind":')
    action = text.find('"action":', kind)
    return text.startswith('"kind":"blob"', kind) and text.startswith('"action":"put"', action)


def _show(value: Any) -> str:
    return repr(value)[:40]


def _count(name: str, v: Any) -> int:  # JSON true is not a seq: bool is excluded
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise WireError(f"{name}: expected a non-negative integer, got {_show(v)}")


def check_entry(e: Any) -> dict:
    """Validate one entry as received; returns it unchanged."""
    if not isinstance(e, dict):
        raise WireError(f"entry: expected an object, got {_show(e)}")
    for k in FIELDS:
        if k not in e:
            raise WireError(f"entry {_show(e.get('seq'))}: missing {k!r}")
    if _count("entry seq", e["seq"]) < 1:
        raise WireError("entry seq: must be >= 1")
    _count("entry epoch", e["epoch"])
    t = e["time"]
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)):
        raise WireError(f"entry time: expected a number, got {_show(t)}")
    for k in ("kind", "key", "action"):
        if not isinstance(e[k], str):
            raise WireError(f"entry {k}: expected a string, got {_show(e[k])}")
    if e.get("data") is not None and not isinstance(e["data"], str):
        raise WireError(f"entry data: expected a string, got {_show(e['data'])}")
    return e


def entry_from_wire(e: dict) -> dict:
    """A checked wire entry → the entry the store applies (`data` as bytes)."""
    if e.get("data") is None:
        return e
    try:
        return {**e, "data": base64.b64decode(e["data"], validate=True)}
    except (binascii.Error, ValueError):
        raise WireError(f"entry {e['seq']} data: not base64") from None
