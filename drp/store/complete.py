"""Complete, when a store opens, objects stored before every kind carried its full model.

Versions before full models (issue 16) stored only the fields a client sent. Such an object is
rewritten with every field of its model (drp.modelvalues.complete: zero values, Validated and
Available true as the old server set them, CreatedAt/LastModifiedAt Go's zero time: unknown).
Change-log bodies are completed the same way, so a passive replaying the log (or a full catch-up
from an older active's snapshot) ends with the same bytes as this node.

Like drp.store.repair, a local fix at open and not a replicated change: the result is a pure
function of the stored text, so every node holding the same row makes the same row.
"""
from __future__ import annotations

import json
import logging
import sqlite3

from drp.modeldefs import MODELS
from drp.modelvalues import complete, complete_bundle_record
from drp.store.apply import dumps, put_object
from drp.store.tx import rollback_open

log = logging.getLogger("drp.store")


def _incomplete(kind: str) -> str:
    """SQL true for a body of `kind` that lacks a field of its model (or, a role, has claims
    in drp's old spelling)."""
    terms = [f"json_type(body, '$.\"{name}\"') IS NULL" for name in MODELS[kind]]
    if kind == "roles":
        terms.append("EXISTS (SELECT 1 FROM json_each(body, '$.Claims') WHERE "
                     "json_type(value) = 'object' AND (json_type(value, '$.scope') IS NULL "
                     "OR json_type(value, '$.Scope') IS NOT NULL))")
    return " OR ".join(terms)


def _completed_bundle(body: dict) -> dict:
    objects = [[kind, key, complete(kind, obj) if kind in MODELS and isinstance(obj, dict)
                else obj] for kind, key, obj in body.get("objects") or []]
    record = body.get("record")
    if isinstance(record, dict):
        body = {**body, "record": complete_bundle_record(record)}
    return {**body, "objects": objects}


def _complete_objects(conn: sqlite3.Connection) -> int:
    count = 0
    for kind in MODELS:
        rows = conn.execute(f"SELECT key, body FROM objects WHERE kind=? AND json_valid(body) "
                            f"AND ({_incomplete(kind)})", (kind,)).fetchall()
        for key, body in rows:
            obj = json.loads(body)
            if isinstance(obj, dict):
                put_object(conn, kind, key, complete(kind, obj))
                count += 1
    for key, body in conn.execute("SELECT key, body FROM objects WHERE kind='contents' AND "
                                  "json_valid(body)").fetchall():  # bundle records: a few
        record = json.loads(body)
        if isinstance(record, dict) and complete_bundle_record(record) != record:
            put_object(conn, "contents", key, complete_bundle_record(record))
            count += 1
    return count


def _complete_changes(conn: sqlite3.Connection) -> int:
    count = 0
    for kind in MODELS:
        rows = conn.execute(f"SELECT seq, body FROM changes WHERE kind=? AND body IS NOT NULL "
                            f"AND json_valid(body) AND ({_incomplete(kind)})",
                            (kind,)).fetchall()
        for seq, body in rows:
            obj = json.loads(body)
            if isinstance(obj, dict):
                conn.execute("UPDATE changes SET body=? WHERE seq=?",
                             (dumps(complete(kind, obj)), seq))
                count += 1
    rows = conn.execute("SELECT seq, body FROM changes WHERE kind='contents' AND "
                        "body IS NOT NULL AND json_valid(body)").fetchall()
    for seq, body in rows:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("objects"), list):
            text = dumps(_completed_bundle(doc))
            if text != body:
                conn.execute("UPDATE changes SET body=? WHERE seq=?", (text, seq))
                count += 1
    return count


def complete_stored(conn: sqlite3.Connection) -> None:
    """Complete the objects and changes tables (see the module doc), in one transaction. Run at
    every open (after drp.store.repair): a store written by this version has nothing to do."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"objects", "changes"} <= tables:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        objects, changes = _complete_objects(conn), _complete_changes(conn)
        conn.execute("COMMIT")
    except BaseException:
        rollback_open(conn)
        raise
    if objects or changes:
        log.warning("completed %d stored objects and %d change-log entries written before "
                    "full models (every field of the model, zero values included)",
                    objects, changes)
