"""Snapshots of the store for a full catch-up, in worker threads: make one, install one."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from drp.store import schema
from drp.store.tx import rollback_open


def vacuum_into(db_path: Path, dest: Path) -> int:
    """A consistent copy of the whole database at dest, without this node's own `local` rows;
    returns the seq it holds. VACUUM INTO cannot run on a query_only reader: a fresh
    connection does it."""
    conn = schema.connect(db_path)
    try:
        dest.unlink(missing_ok=True)
        conn.execute("VACUUM INTO ?", (str(dest),))
    finally:
        conn.close()
    snap = sqlite3.connect(str(dest))
    try:
        snap.execute("DELETE FROM local")
        snap.commit()
        return snap.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
    finally:
        snap.close()


def manifest(snap: Path) -> tuple[list[tuple[str, int, str, int]], int]:
    """What a snapshot file holds: its blobs (path, size, sha256, mode) and how many objects."""
    conn = sqlite3.connect(f"file:{snap}?mode=ro", uri=True)
    try:
        blobs = conn.execute("SELECT path, size, sha256, mode FROM blobs").fetchall()
        return blobs, conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
    finally:
        conn.close()


def counts(db: Path) -> tuple[int, int]:
    """(change-log entries, objects) a database file holds."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return (conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0])
    finally:
        conn.close()


def install(conn: sqlite3.Connection, snap: Path) -> None:
    """Replace every replicated table with the snapshot's, in one transaction (the writer's
    connection, whose synchronous=FULL commit is durable when this returns)."""
    conn.execute("ATTACH DATABASE ? AS snap", (str(snap),))
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in schema.REPLICATED_TABLES:
                conn.execute(f"DELETE FROM main.{table}")
                columns = _columns(conn, "snap", table) & _columns(conn, "main", table)
                names = ", ".join(sorted(columns))
                conn.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} "
                             f"FROM snap.{table}")
            if "name" not in _columns(conn, "snap", "objects"):  # from before objects.name
                schema.fill_names(conn)
            conn.execute("COMMIT")
        except BaseException:
            rollback_open(conn)
            raise
    finally:
        conn.execute("DETACH DATABASE snap")


def _columns(conn: sqlite3.Connection, db: str, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA {db}.table_info({table})")}
