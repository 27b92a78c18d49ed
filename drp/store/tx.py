"""The writer's side of the store, in the worker thread: transactions over the writer connection.

- run_group: group commit on the node that takes writes. Queued writes run in ONE transaction
  (one fsync), each inside its own SAVEPOINT, so a write that fails is rolled back alone and
  its seqs are reused by the next write: the change log stays gap-free. The commit is
  published (handed to the replication senders) before its fsync, so the passives' round trip
  overlaps this node's disk flush; the writes are reported done only after both.
- apply_entries: a passive's replay in one transaction (a failing entry: the ones before it
  committed, replayed again); one flush of the WAL at the end of the batch.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Callable

from drp.store import queries
from drp.store.apply import apply_change
from drp.store.wire import entry_text

MAX_GROUP = 128  # writes committed together at most
TRIM_EVERY = 1000  # the change log is trimmed each time the head passes a multiple of this


class Tx:
    """What a mutation function sees inside the writer's transaction."""

    def __init__(self, conn: sqlite3.Connection, head: int, epoch: int):
        self.conn = conn
        self.head = head
        self.epoch = epoch
        self.changes: list[dict] = []
        self.wire: list[tuple[int, str]] = []  # (seq, replication wire text) per change

    def get(self, kind: str, key: str) -> dict | None:
        row = self.conn.execute("SELECT body FROM objects WHERE kind=? AND key=?",
                                (kind, key)).fetchone()
        return json.loads(row[0]) if row else None

    def exists(self, kind: str, key: str) -> bool:
        """An object is stored at kind/key (get without decoding its body)."""
        return self.conn.execute("SELECT 1 FROM objects WHERE kind=? AND key=?",
                                 (kind, key)).fetchone() is not None

    def blob(self, path: str) -> dict | None:
        """The blobs row of path: {path, size, sha256, mode, time}, or None."""
        return queries.blob(self.conn, path)

    def has_any(self, *kinds: str) -> bool:
        return queries.has_any(self.conn, *kinds)

    def name_taken(self, kind: str, name: str, except_key: str) -> str | None:
        """The key of another object of kind already named name (objects.name), or None."""
        return queries.name_taken(self.conn, kind, name, except_key)

    def max_epoch(self) -> int:
        """The highest epoch in the epoch history; 0 when there is none."""
        return queries.max_epoch(self.conn)

    def record(self, kind: str, key: str, action: str, body=None, data: bytes | None = None,
               epoch: int | None = None) -> dict:
        self.head += 1
        change = {"seq": self.head, "epoch": self.epoch if epoch is None else epoch,
                  "time": time.time(), "kind": kind, "key": key, "action": action,
                  "body": body}
        if data is not None:
            change["data"] = data
        row = apply_change(self.conn, change)
        self.changes.append(change)
        self.wire.append((self.head, entry_text(row)))
        return change


class Job:
    """One queued write: its mutation and, once a writer ran it, its outcome."""
    __slots__ = ("fn", "internal", "during", "result", "error", "changes", "taken", "done",
                 "replicated")

    def __init__(self, fn, internal: bool, during):
        self.fn, self.internal, self.during = fn, internal, during
        self.result, self.error, self.changes = None, None, []
        self.replicated = None  # the replication hook in force when the writer took it
        self.taken = self.done = False


def rollback_open(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any: on an I/O error or a full disk SQLite may have
    rolled it back already, and a second ROLLBACK would raise over the real error."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def trim_if_due(conn: sqlite3.Connection, before: int, head: int, retention: int) -> None:
    """Keep the last `retention` entries of the change log, once the head moved from `before`
    past a multiple of TRIM_EVERY."""
    if head // TRIM_EVERY != before // TRIM_EVERY:
        conn.execute("DELETE FROM changes WHERE seq <= ?", (head - retention,))


class NotDurable(Exception):
    """The group committed but may not be on disk (its fsync, or a step between COMMIT and
    it, failed). `changes` may already be visible to readers and passives."""

    def __init__(self, message: str, changes: list[dict]):
        super().__init__(message)
        self.changes = changes


def run_group(conn: sqlite3.Connection, group: list[Job], head: int, epoch: int,
              retention: int, wal_fd: int,
              publish: Callable[[list[dict], list[tuple[int, str]]], None]
              ) -> tuple[list[dict], list[tuple[int, str]]]:
    """Run every job of the group in one transaction, each in a savepoint; fills in each job's
    result/error/changes. Returns the committed changes in order and their wire texts.

    The COMMIT itself does not wait for the disk (synchronous=NORMAL); `publish(changes, wire)`
    is called right after it, then the WAL (`wal_fd`, held open since the store opened, so it
    hears of every write error since) is flushed, and only then does this return: durable
    here, as a synchronous=FULL commit would be. Nothing is published unless COMMIT
    succeeded, so a seq is never handed out twice. A promotion is flushed before it is
    published: the epoch history must never reach a passive and then be lost here."""
    conn.execute("PRAGMA synchronous=NORMAL")  # may not change inside a transaction
    try:
        changes, wire = _commit_group(conn, group, head, epoch, retention)
    except BaseException:
        conn.execute("PRAGMA synchronous=FULL")
        raise
    if all(job.error is not None for job in group):  # nothing committed: nothing to flush
        conn.execute("PRAGMA synchronous=FULL")
        return changes, wire
    try:  # from here on the group is committed: any failure means it may not be durable
        flush_first = any(c["kind"] == "ha" for c in changes)
        if flush_first:
            os.fdatasync(wal_fd)
        if changes:
            publish(changes, wire)
        if not flush_first:
            os.fdatasync(wal_fd)
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException as e:
        raise NotDurable(f"a commit could not be made durable ({type(e).__name__}: {e})",
                         changes) from e
    return changes, wire


def _commit_group(conn: sqlite3.Connection, group: list[Job], head: int, epoch: int,
                  retention: int) -> tuple[list[dict], list[tuple[int, str]]]:
    conn.execute("BEGIN IMMEDIATE")
    tx = Tx(conn, head, epoch)
    try:
        for job in group:
            job_head, job_epoch, mark = tx.head, tx.epoch, len(tx.changes)
            conn.execute("SAVEPOINT job")
            try:
                job.result = job.fn(tx)
            except Exception as e:  # this job alone fails: undo it, seqs included
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                tx.head, tx.epoch = job_head, job_epoch
                del tx.changes[mark:]
                del tx.wire[mark:]
                job.error = e
                continue
            conn.execute("RELEASE job")
            job.changes = tx.changes[mark:]
        trim_if_due(conn, head, tx.head, retention)
        conn.execute("COMMIT")
    except BaseException as e:  # the commit itself failed: nothing of the group holds
        rollback_open(conn)
        for job in group:
            if job.error is None:
                job.error, job.result, job.changes = e, None, []
        if not isinstance(e, Exception):
            raise
        return [], []
    return tx.changes, tx.wire


def apply_entries(conn: sqlite3.Connection, entries: list[dict], applied: list[dict],
                  wire: list[tuple[int, str]], wal_fd: int, retention: int) -> None:
    """Replay entries in one transaction without waiting for the disk; then one flush of the
    WAL (`wal_fd`, as in run_group) makes the batch durable. When an entry fails, the ones
    before it are committed all the same (replayed again in a transaction of their own) and
    the error is raised: `applied` and `wire` get what committed. Raises NotDurable when the
    flush fails: nothing may then be acknowledged. One transaction, not one per entry: a
    batch's pages go to the WAL once; no savepoints, which cost a statement journal each, for
    a failure that is a bug or a broken disk."""
    conn.execute("PRAGMA synchronous=NORMAL")  # may not change inside a transaction
    try:
        failed_at, failure = _replay(conn, entries, applied, wire, retention)
        if failure is not None and failed_at:
            try:
                _, again = _replay(conn, entries[:failed_at], applied, wire, retention)
            except Exception as e:  # noqa: BLE001 - the first failure is the one to report
                again = e
            if again is not None:
                failure.add_note(f"the {failed_at} entries before it were not committed "
                                 f"either: {type(again).__name__}: {again}")
    finally:
        try:
            if applied:
                os.fdatasync(wal_fd)
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException as e:  # replaces whatever else went wrong: this matters more
            raise NotDurable(f"replicated entries could not be made durable "
                             f"({type(e).__name__}: {e})", list(applied)) from e
    if failure is not None:
        raise failure


def _replay(conn: sqlite3.Connection, entries: list[dict], applied: list[dict],
            wire: list[tuple[int, str]], retention: int) -> tuple[int, Exception | None]:
    """Apply entries in one transaction (the log trimmed in it when due), committed only when
    all of them applied (then added to `applied` and `wire`). Returns (index of the entry
    that failed, its error) or (0, None); a failing COMMIT raises."""
    done_wire: list[tuple[int, str]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for i, entry in enumerate(entries):
            try:
                row = apply_change(conn, entry)
            except Exception as e:  # noqa: BLE001 - handed back: the caller replays those before
                rollback_open(conn)
                return i, e
            done_wire.append((entry["seq"], entry_text(row)))
        if entries:
            trim_if_due(conn, entries[0]["seq"] - 1, entries[-1]["seq"], retention)
        conn.execute("COMMIT")
    except BaseException:
        rollback_open(conn)
        raise
    applied.extend(entries)
    wire.extend(done_wire)
    return 0, None
