"""The SQLite schema and how a connection is opened.

Replicated tables (a passive holds the same rows): objects, blobs, changes, epochs.
`local` is this node's own (drp-id, pinned peer certificates) and is never replicated.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from drp.models import UNIQUE_FIELDS
from drp.store import filterops

REPLICATED_TABLES = ("objects", "blobs", "changes", "epochs")
log = logging.getLogger("drp.store")


def unique_value(kind: str, obj) -> str | None:
    """What objects.name holds for an object: the value of its kind's unique field (a
    machine's Name), else NULL. Derived from the body whenever a row is written."""
    field = UNIQUE_FIELDS.get(kind)
    value = obj.get(field) if field and isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def connect(path: Path | str) -> sqlite3.Connection:
    # check_same_thread=False: trio's worker threads take turns with one connection; the
    # store's limiters make sure only one thread uses it at a time.
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                           timeout=30)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":  # the store flushes the WAL itself (store.tx.run_group): it needs one
        conn.close()
        raise sqlite3.OperationalError(f"{path}: SQLite cannot use write-ahead logging there "
                                       f"(journal mode stays {mode!r}); put the base root on "
                                       "a local filesystem")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    # List filters (store/filters.py): `x REGEXP re` and drp_match(field JSON, test).
    conn.create_function("regexp", 2, filterops.regexp, deterministic=True)
    conn.create_function("drp_match", 2, filterops.sql_match, deterministic=True)
    return conn


def create(conn: sqlite3.Connection) -> None:
    db = Database(conn)
    if "objects" not in db.table_names():
        db["objects"].create({"kind": str, "key": str, "body": str, "bundle": str,
                              "name": str},
                             pk=("kind", "key"), not_null={"kind", "key", "body"})
        db["objects"].create_index(["bundle"])
    elif "name" not in db["objects"].columns_dict:  # a database from before objects.name
        add_name_column(conn)
    # Uniqueness checks and filters on a kind's unique field are lookups here. Not UNIQUE:
    # the API refuses a clash with its own 409, and a database (or a bundle) that already
    # holds one must still open and replicate. `key` last: a filtered list comes out in key
    # order straight from the index (without it SQLite prefers the primary key's order).
    conn.execute("CREATE INDEX IF NOT EXISTS objects_name ON objects(kind, name, key) "
                 "WHERE name IS NOT NULL")
    if "blobs" not in db.table_names():
        # path is relative to the base root: files/..., isos/..., plugins/..., job-logs/<uuid>
        db["blobs"].create({"path": str, "size": int, "sha256": str, "mode": int, "time": float},
                           pk="path")
    if "changes" not in db.table_names():
        db["changes"].create({"seq": int, "epoch": int, "time": float, "kind": str, "key": str,
                              "action": str, "body": str, "data": bytes}, pk="seq")
    if "epochs" not in db.table_names():
        db["epochs"].create({"epoch": int, "start_seq": int, "drp_id": str}, pk="epoch")
    if "local" not in db.table_names():
        db["local"].create({"name": str, "value": str}, pk="name")
    if "quarantine" not in db.table_names():  # stored bodies that are not JSON (store/repair.py)
        db["quarantine"].create({"kind": str, "key": str, "body": str, "reason": str,
                                 "time": float}, pk=("kind", "key"))


def add_name_column(conn: sqlite3.Connection) -> None:
    """Migrate: add objects.name and fill it from the bodies, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE objects ADD COLUMN name TEXT")
        filled = fill_names(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("added objects.name for %d objects with a unique field", filled)


def fill_names(conn: sqlite3.Connection) -> int:
    """Set objects.name from the body of every object whose kind has a unique field (parsed
    here, in Python: SQLite's json_extract raises on a body it cannot read). In the caller's
    transaction; returns how many rows got a name."""
    filled = 0
    for kind in UNIQUE_FIELDS:
        names = []  # collected first: the bodies are read one at a time, not held
        for key, body in conn.execute("SELECT key, body FROM objects WHERE kind=?", (kind,)):
            try:
                obj = json.loads(body)
            except ValueError:
                log.warning("%s %s: the stored body is not JSON; it gets no %s index entry",
                            kind, key, UNIQUE_FIELDS[kind])
                continue
            value = unique_value(kind, obj)
            if value is not None:
                names.append((value, kind, key))
        conn.executemany("UPDATE objects SET name=? WHERE kind=? AND key=?",
                         names)
        filled += len(names)
    return filled
