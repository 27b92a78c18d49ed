"""The SQLite schema and how a connection is opened.

Replicated tables (a passive holds the same rows): objects, blobs, changes, epochs.
`local` is this node's own (drp-id, pinned peer certificates) and is never replicated.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database

REPLICATED_TABLES = ("objects", "blobs", "changes", "epochs")


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
    return conn


def create(conn: sqlite3.Connection) -> None:
    db = Database(conn)
    if "objects" not in db.table_names():
        db["objects"].create({"kind": str, "key": str, "body": str, "bundle": str},
                             pk=("kind", "key"), not_null={"kind", "key", "body"})
        db["objects"].create_index(["bundle"])
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
