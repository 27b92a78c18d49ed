"""Redo one change-log entry against the replicated tables.

The active's writer and a passive's replica run the same function, so a replica ends up with
exactly the rows the active has. Blob and job-log bytes are put on disk by the caller first; here
only their metadata is recorded. Every function runs inside the caller's transaction.
"""
from __future__ import annotations

import json
import sqlite3

from drp.models import KINDS
from drp.store.schema import unique_value

# secrets and prefs (drp.api.prefs) are stored as objects too, though no client lists them
OBJECT_KINDS = frozenset(KINDS) | {"secrets", "prefs"}


def dumps(obj) -> str:
    """JSON text for storage: standard JSON only. NaN or Infinity here is a bug upstream (the
    API refuses them, drp.api.jsonbody): fail the write loudly rather than store a body that
    SQLite's json functions call malformed (every query over its kind would fail)."""
    return json.dumps(obj, allow_nan=False)


def entry_row(change: dict) -> tuple:
    body = change.get("body")
    return (change["seq"], change["epoch"], change["time"], change["kind"], change["key"],
            change["action"], None if body is None else dumps(body), change.get("data"))


def row_entry(row) -> dict:
    seq, epoch, when, kind, key, action, body, data = row
    entry = {"seq": seq, "epoch": epoch, "time": when, "kind": kind, "key": key,
             "action": action, "body": None if body is None else json.loads(body)}
    if data is not None:
        entry["data"] = bytes(data)
    return entry


def apply_change(conn: sqlite3.Connection, change: dict) -> tuple:
    """Append `change` to the log and redo its effect, in the caller's transaction. Returns
    the change-log row."""
    row = entry_row(change)
    conn.execute("INSERT INTO changes VALUES (?,?,?,?,?,?,?,?)", row)
    kind, key, action, body = change["kind"], change["key"], change["action"], change["body"]
    if kind in OBJECT_KINDS:
        if action == "delete":
            conn.execute("DELETE FROM objects WHERE kind=? AND key=?", (kind, key))
        else:
            put_object(conn, kind, key, body, row[6])
    elif kind == "blob":
        if action == "delete":
            conn.execute("DELETE FROM blobs WHERE path=?", (key,))
        else:
            _put_blob(conn, key, body, change["time"])
    elif kind == "joblog":  # an append: the log's recorded size grows by the appended length
        end = body["offset"] + body["length"]
        _put_blob(conn, key, {"size": end, "sha256": body.get("sha256", ""), "mode": 0o644},
                  change["time"])
    elif kind == "contents":
        _apply_bundle(conn, key, action, body)
    elif kind == "ha" and action == "promote":
        conn.execute("INSERT OR REPLACE INTO epochs VALUES (?,?,?)",
                     (body["epoch"], change["seq"], body["drp_id"]))
    else:
        raise ValueError(f"unknown change kind {kind!r}/{action!r} at seq {change['seq']}")
    return row


def put_object(conn, kind: str, key: str, obj: dict, text: str | None = None) -> None:
    conn.execute("INSERT OR REPLACE INTO objects (kind, key, body, bundle, name) "
                 "VALUES (?,?,?,?,?)",
                 (kind, key, dumps(obj) if text is None else text,
                  obj.get("Bundle") or None, unique_value(kind, obj)))


def _put_blob(conn, path: str, meta: dict, when: float) -> None:
    conn.execute("INSERT OR REPLACE INTO blobs VALUES (?,?,?,?,?)",
                 (path, meta["size"], meta["sha256"], meta.get("mode", 0o644), when))


def _apply_bundle(conn, name: str, action: str, body: dict | None) -> None:
    """A content bundle is one entry: its record plus all its objects, replaced together."""
    conn.execute("DELETE FROM objects WHERE bundle=? AND kind != 'contents'", (name,))
    if action == "delete":
        conn.execute("DELETE FROM objects WHERE kind='contents' AND key=?", (name,))
        return
    put_object(conn, "contents", name, body["record"])
    for kind, key, obj in body["objects"]:
        put_object(conn, kind, key, obj)
