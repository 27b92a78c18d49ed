"""The store: one SQLite database under the base root, one writer, a change log under everything.

Every mutation runs in the writer (a CapacityLimiter(1) around a worker thread; writes queue in
call order and the writer takes them in that order, so the order of commits is decided by the
writer, never by the scheduler) inside a transaction that also appends its change-log entries.
Writes that queued up meanwhile are committed together (group commit: one fsync), each in its
own savepoint. A group is visible and handed to the replication senders as soon as it commits,
while its fsync runs; each write returns once it is durable here and (HA) acknowledged by the
passives. Reads use per-thread connections in worker threads, so the event loop never blocks on
SQLite.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, ContextManager

import trio

from drp.errors import ApiError
from drp.store import repair, schema, snapshot
from drp.store.apply import row_entry, wire_text
from drp.store.cache import ObjectCache
from drp.store.filters import where as filters_where
from drp.store.recent import RecentLog
from drp.store.tx import MAX_GROUP, Job, NotDurable, Tx, apply_entries, run_group

log = logging.getLogger("drp.store")

CommitHook = Callable[[int], Any]  # async fn(last_seq): e.g. wait for synchronous replicas


def blob_row(conn: sqlite3.Connection, path: str) -> dict | None:
    """The blobs row of path (in a worker thread, on a reader connection)."""
    row = conn.execute("SELECT path, size, sha256, mode, time FROM blobs WHERE path=?",
                       (path,)).fetchone()
    return dict(zip(("path", "size", "sha256", "mode", "time"), row)) if row else None


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer_conn = schema.connect(self.path)
        schema.create(self._writer_conn)
        repair.repair(self._writer_conn)  # bodies SQLite's json functions cannot read
        # Commits flush the WAL themselves (run_group) through this descriptor, opened once:
        # a descriptor opened after a write error never hears of it (SQLite's own checkpoint
        # may have seen it first). SQLite names the file it uses (symlinks resolved).
        db_file = self._writer_conn.execute("PRAGMA database_list").fetchone()[2]
        self._wal_fd = os.open(f"{db_file}-wal", os.O_RDONLY | os.O_CLOEXEC)
        self._writer = trio.CapacityLimiter(1)
        self._queue: deque[Job] = deque()  # writes waiting for the writer, in call order
        self.recent = RecentLog()  # the latest committed entries, for replication senders
        self.cache = ObjectCache()  # recently read objects
        self._local_conn = schema.connect(self.path)
        self._local_lock = threading.Lock()
        self._per_thread = threading.local()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.head, self.epoch = self._read_position(self._writer_conn)
        self._head_changed = trio.Event()
        # Set by the node's role: a reason string while writes are refused (passive), else None.
        self.refuse_writes: str | None = None
        # Set when a commit could not be made durable: nothing is written after it (the disk
        # may have dropped what it acknowledged; a restart reads what is really there), and
        # on_disk_failure(reason) is called: the server stops (as PostgreSQL does).
        self.disk_failure: str | None = None
        self.on_disk_failure: Callable[[str], None] | None = None
        self.commit_hooks: list[CommitHook] = []
        self.listeners: list[Callable[[list[dict]], None]] = []
        self.retention = 100_000
        # Bumped (on the event loop) once committed changes of a kind are visible; readers
        # that cache objects (the authenticator: users, the token secret) compare versions.
        self._kind_versions: dict[str, int] = {}
        self._all_version = 0

    # ---- position -------------------------------------------------------------------------
    @staticmethod
    def _read_position(conn) -> tuple[int, int]:
        head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
        epoch = conn.execute("SELECT COALESCE(MAX(epoch), 0) FROM epochs").fetchone()[0]
        return head, epoch

    def _set_position(self, head: int, epoch: int) -> None:
        moved = head != self.head
        self.head, self.epoch = head, epoch
        if moved:
            self.wake_head_waiters()

    def version(self, kind: str) -> tuple[int, int]:
        """Changes whenever committed data of `kind` may have changed."""
        return self._all_version, self._kind_versions.get(kind, 0)

    def _bump_versions(self, changes: list[dict]) -> None:
        self.cache.committed(changes)
        for change in changes:
            kind = change["kind"]
            if kind == "contents":  # a bundle replaces objects of any kind
                self._all_version += 1
            self._kind_versions[kind] = self._kind_versions.get(kind, 0) + 1

    async def wait_head_beyond(self, seq: int) -> None:
        while self.head <= seq:
            await self._head_changed.wait()

    async def wait_head_moved(self) -> None:
        """Until the head moves, or wake_head_waiters() is called."""
        await self._head_changed.wait()

    def wake_head_waiters(self) -> None:
        self._head_changed.set()
        self._head_changed = trio.Event()

    # ---- reads ----------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._per_thread, "conn", None)
        if conn is None:
            conn = schema.connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._per_thread.conn = conn
            with self._readers_lock:
                self._all_readers.append(conn)
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(self._reader()))

    async def get(self, kind: str, key: str) -> dict | None:
        text = await self.get_json(kind, key)
        return None if text is None else json.loads(text)

    async def get_json(self, kind: str, key: str) -> str | None:
        """The object as stored (JSON text), from the cache of recently read objects when
        it is there."""
        text = self.cache.get(kind, key)
        if text is not None:
            return text
        generation = self.cache.generation
        row = await self.read(lambda conn: conn.execute(
            "SELECT body FROM objects WHERE kind=? AND key=?", (kind, key)).fetchone())
        if row is None:
            return None
        self.cache.put(kind, key, row[0], generation)
        return row[0]

    async def list(self, kind: str, filters: dict[str, str] | None = None,
                   offset: int = 0, limit: int = -1) -> list[dict]:
        terms, values = filters_where(kind, filters or {})
        sql, params = ["SELECT body FROM objects WHERE kind=?", *terms], [kind, *values]
        sql.append("ORDER BY key LIMIT ? OFFSET ?")
        params += [limit, offset]
        rows = await self.read(lambda c: c.execute(" ".join(sql), params).fetchall())
        return [json.loads(r[0]) for r in rows]

    async def blob(self, path: str) -> dict | None:
        return await self.read(lambda conn: blob_row(conn, path))

    async def wire_after(self, seq: int, limit: int = 1000) -> list[tuple[int, str]]:
        """(seq, replication wire text) of the entries after seq: from memory when they were
        just committed, else from the database."""
        held = self.recent.after(seq, limit, oldest_kept=self.head - self.retention + 1)
        if held is not None:
            return held

        def q(conn):
            rows = conn.execute("SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit)).fetchall()
            return [(r[0], wire_text(r)) for r in rows]
        return await self.read(q)

    async def entries_after(self, seq: int, limit: int = 1000) -> list[dict]:
        rows = await self.read(lambda c: c.execute(
            "SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall())
        return [row_entry(r) for r in rows]

    async def oldest_seq(self) -> int:
        return await self.read(
            lambda c: c.execute("SELECT COALESCE(MIN(seq), 0) FROM changes").fetchone()[0])

    async def history(self) -> list[tuple[int, int, str]]:
        rows = await self.read(lambda c: c.execute(
            "SELECT epoch, start_seq, drp_id FROM epochs ORDER BY epoch").fetchall())
        return [tuple(r) for r in rows]

    async def last_entry_epoch(self) -> int:
        return await self.read(lambda c: (c.execute(
            "SELECT epoch FROM changes ORDER BY seq DESC LIMIT 1").fetchone() or (0,))[0])

    # `local` rows (this node's own, never replicated) use their own connection, so they never
    # join a transaction the writer has open.
    def local_get_sync(self, name: str) -> str | None:
        with self._local_lock:
            row = self._local_conn.execute("SELECT value FROM local WHERE name=?",
                                           (name,)).fetchone()
        return row[0] if row else None

    def local_set_sync(self, name: str, value: str, durable: bool = True) -> None:
        """durable=False: no fsync; the value survives a crash of this process but maybe not of
        the machine. For hints that are cheap to work out again."""
        with self._local_lock:
            conn = self._local_conn
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                conn.execute("INSERT OR REPLACE INTO local VALUES (?,?)", (name, value))
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")

    async def local_get(self, name: str) -> str | None:
        return await trio.to_thread.run_sync(self.local_get_sync, name)

    async def local_set(self, name: str, value: str) -> None:
        await trio.to_thread.run_sync(self.local_set_sync, name, value)

    # ---- writes ---------------------------------------------------------------------------
    async def write(self, fn: Callable[[Tx], Any], *, internal: bool = False,
                    during: ContextManager | None = None) -> Any:
        """Run fn(tx) in the writer; returns fn's result after the change is durable here and,
        when HA is active, acknowledged by every In-Sync passive.
        `during` is entered around the transaction only, not the wait for the passives (a
        passive fetching a blob must not wait for the upload that waits for that passive).

        Group commit: writes queue up in call order; whoever gets the writer next commits
        every queued write in ONE transaction (one fsync, one worker-thread hop), each inside
        its own SAVEPOINT, so a write that fails is rolled back alone and takes no seq."""
        self._check_disk()
        if self.refuse_writes and not internal:
            raise ApiError(503, self.refuse_writes, type_="HA_PASSIVE")
        job = Job(fn, internal, during)
        self._queue.append(job)
        try:
            async with self._writer:
                while not job.done:  # FIFO: our job is in the next group, or the one after
                    await self._commit_queued()
        except BaseException:
            if not job.taken:  # cancelled before any writer took it: it never happens
                self._queue.remove(job)
            raise
        if job.error is not None:
            raise job.error
        if job.changes:
            for hook in list(self.commit_hooks):
                await hook(job.changes[-1]["seq"])
        return job.result

    async def _commit_queued(self) -> None:
        """Commit the queued writes (up to MAX_GROUP) as one group; holds the writer.

        A write with a `during` context (a blob put or delete: it renames or removes a file
        inside its transaction) is committed in a group of its own, so the moment between its
        file change and its commit is no longer than without grouping."""
        group: list[Job] = []
        while self._queue and len(group) < MAX_GROUP:
            job = self._queue[0]
            if group and (job.during is not None or group[0].during is not None):
                break
            self._queue.popleft()
            job.taken = True
            if self.disk_failure:  # an earlier group lost the disk while this one queued
                job.error = self._disk_error()
                job.done = True
                continue
            if self.refuse_writes and not job.internal:  # the role changed while it queued
                job.error = ApiError(503, self.refuse_writes, type_="HA_PASSIVE")
                job.done = True
                continue
            group.append(job)
        if not group:
            return
        changes: list[dict] = []
        token = trio.lowlevel.current_trio_token()

        def publish(committed: list[dict], wire: list[tuple[int, str]]) -> None:
            # From the worker thread, between COMMIT and fsync. Runs on the event loop before
            # the thread's result is delivered (one FIFO queue), so before this group returns.
            token.run_sync_soon(self._publish_committed, committed, wire)
        try:
            with ExitStack() as stack:
                for job in group:
                    if job.during is not None:
                        stack.enter_context(job.during)
                try:
                    changes, _ = await trio.to_thread.run_sync(self._run_group, group, publish)
                except NotDurable as e:
                    self._lost_the_disk(group, e)
                    return
        except BaseException as e:
            for job in group:
                if job.error is None and not job.changes:
                    job.error = e
            raise
        finally:
            for job in group:
                job.done = True
        if changes:
            self._notify(changes)

    def epoch_after(self, changes: list[dict]) -> int:
        promotes = [c["body"]["epoch"] for c in changes if c["kind"] == "ha"]
        return max([self.epoch, *promotes])

    def _run_group(self, group: list[Job], publish) -> tuple[list[dict], list[tuple[int, str]]]:
        return run_group(self._writer_conn, group, self.head, self.epoch, self.retention,
                         self._wal_fd, publish)

    def _publish_committed(self, changes: list[dict], wire: list[tuple[int, str]]) -> None:
        """Entries just committed: readers and replication senders see them from now on.
        Also a trio callback (run_group's publish), where an exception would end the server."""
        try:
            self.recent.remember(wire)
            self._bump_versions(changes)
        except Exception:
            log.exception("committed seq %d but could not note it; senders and readers take "
                          "it from the database", changes[-1]["seq"])
            self.recent.clear()
            self.cache.clear()
        finally:  # the next group must never reuse these seqs
            self._set_position(changes[-1]["seq"], self.epoch_after(changes))

    def _disk_error(self) -> ApiError:
        return ApiError(500, self.disk_failure, type_="StorageError")

    def _check_disk(self) -> None:
        if self.disk_failure:
            raise self._disk_error()

    def _lost_the_disk(self, group: list[Job], error: NotDurable) -> None:
        """The group committed (readers and passives may have it) but is not known to be on
        disk: report its writes failed and write nothing more (as PostgreSQL stops on a failed
        fsync: the kernel may have dropped the data and would not say so twice)."""
        self.disk_failure = (f"{error}: writes that were in flight may be lost; this node "
                             "writes nothing more; check the disk and restart dr-provision")
        log.critical("%s", self.disk_failure)
        for job in group:
            job.result, job.changes = None, []
            job.error = self._disk_error()
        if error.changes:  # readers see them: so do listeners
            self._notify(error.changes)
        if self.on_disk_failure is not None:
            self.on_disk_failure(self.disk_failure)

    def _notify(self, changes: list[dict]) -> None:
        for listener in list(self.listeners):
            try:
                listener(changes)
            except Exception:  # a broken listener must not fail a committed write
                log.exception("change listener failed")

    async def apply_replicated(self, entries: list[dict]) -> None:
        """A passive's replay: each entry in its own transaction, position included. Durable
        when this returns: the batch costs one flush of the WAL, not one per entry. A flush
        that fails stops this node as it would an active (_lost_the_disk)."""
        if not entries:
            return
        self._check_disk()  # never acknowledge entries as durable on a disk that lost some
        applied: list[dict] = []
        wire: list[tuple[int, str]] = []
        lost: NotDurable | None = None
        async with self._writer:
            try:
                await trio.to_thread.run_sync(apply_entries, self._writer_conn, entries, applied,
                                             wire, self._wal_fd, self.retention)
            except NotDurable as e:
                lost = e
            finally:
                # Entries before a failing one are committed: the position must say so, or
                # the next write would reuse their seqs.
                if applied:
                    self._publish_committed(applied, wire)
        if lost is not None:
            self._lost_the_disk([], lost)  # tells the listeners
            self._check_disk()  # raises: the batch must not be acknowledged
        self._notify(applied)

    # ---- snapshots (full catch-up) ----------------------------------------------------------
    async def snapshot_into(self, dest: Path) -> int:
        """A consistent copy of the whole database at the returned seq (VACUUM INTO)."""
        return await trio.to_thread.run_sync(snapshot.vacuum_into, self.path, dest)

    async def install_snapshot(self, snap: Path) -> None:
        """Replace every replicated table with the snapshot's, in one transaction."""
        self._check_disk()
        async with self._writer:
            try:
                await trio.to_thread.run_sync(snapshot.install, self._writer_conn, snap)
                # A snapshot from an older active may hold what open would repair.
                await trio.to_thread.run_sync(repair.repair, self._writer_conn)
                head, epoch = self._read_position(self._writer_conn)
            finally:
                self._all_version += 1
                self.recent.clear()
                self.cache.clear()
            self._set_position(head, epoch)

    def close(self) -> None:
        os.close(self._wal_fd)
        self._writer_conn.close()
        self._local_conn.close()
        with self._readers_lock:
            for conn in self._all_readers:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # owned by a thread that already ended
