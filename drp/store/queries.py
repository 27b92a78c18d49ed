"""Named queries on the store's tables, over one SQLite connection (a reader's, in a worker
thread, or the writer's, inside a transaction). Only drp/store writes SQL; everyone else asks
these, through Store (reads) or Tx (inside a write)."""
from __future__ import annotations

import json
import sqlite3

BLOB_FIELDS = ("path", "size", "sha256", "mode", "time")


def blob(conn: sqlite3.Connection, path: str) -> dict | None:
    """The blobs row of path: {path, size, sha256, mode, time}, or None."""
    row = conn.execute("SELECT path, size, sha256, mode, time FROM blobs WHERE path=?",
                       (path,)).fetchone()
    return dict(zip(BLOB_FIELDS, row)) if row else None


def blobs(conn: sqlite3.Connection, prefix: str | None = None) -> list[dict]:
    """Every blobs row (those whose path starts with prefix, when given), by path."""
    if prefix is None:
        rows = conn.execute("SELECT path, size, sha256, mode, time FROM blobs ORDER BY path")
    else:  # a range on the primary key, not LIKE: prefix may hold % or _
        rows = conn.execute("SELECT path, size, sha256, mode, time FROM blobs "
                            "WHERE path >= ? AND path < ? ORDER BY path",
                            (prefix, prefix + "\U0010ffff"))
    return [dict(zip(BLOB_FIELDS, r)) for r in rows.fetchall()]


def kind_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many objects of each kind there are (kinds with none are absent)."""
    return dict(conn.execute("SELECT kind, COUNT(*) FROM objects GROUP BY kind").fetchall())


def object_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]


def has_any(conn: sqlite3.Connection, *kinds: str) -> bool:
    """Whether any object of these kinds exists."""
    marks = ",".join("?" * len(kinds))
    return conn.execute(f"SELECT 1 FROM objects WHERE kind IN ({marks}) LIMIT 1",
                        kinds).fetchone() is not None


def name_taken(conn: sqlite3.Connection, kind: str, name: str, except_key: str) -> str | None:
    """The key of another object of kind whose unique name (objects.name) is name, or None.
    objects.name is indexed (store/schema.py): a lookup, not a scan of bodies."""
    row = conn.execute("SELECT key FROM objects WHERE kind=? AND name=? AND key != ? LIMIT 1",
                       (kind, name, except_key)).fetchone()
    return row[0] if row else None


def max_epoch(conn: sqlite3.Connection) -> int:
    """The highest epoch in the epoch history; 0 when there is none."""
    return conn.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()[0]


def content_bundle(conn: sqlite3.Connection,
                   name: str) -> tuple[dict, list[tuple[str, str, str]]] | None:
    """A content bundle's record and the (kind, key, body as stored) of the objects it holds,
    by kind and key, read together; None when there is no such bundle."""
    row = conn.execute("SELECT body FROM objects WHERE kind='contents' AND key=?",
                       (name,)).fetchone()
    if row is None:
        return None
    rows = conn.execute("SELECT kind, key, body FROM objects WHERE bundle=? AND "
                        "kind != 'contents' ORDER BY kind, key", (name,)).fetchall()
    return json.loads(row[0]), [tuple(r) for r in rows]
