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

import logging
import os
import sqlite3
import threading
from collections import deque
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, ContextManager

import trio

from drp.store import complete, repair, schema, snapshot
from drp.store.cache import ObjectCache
from drp.store.errors import StorageLost, WritesRefused
from drp.store.reads import StoreReads
from drp.store.recent import RecentLog
from drp.store.tx import MAX_GROUP, Job, NotDurable, Tx, apply_entries, run_group

log = logging.getLogger("drp.store")

Replicated = Callable[[int], Awaitable[None]]  # async fn(last_seq): wait for the passives


class Store(StoreReads):
    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer_conn = schema.connect(self.path)
        schema.create(self._writer_conn)
        repair.repair(self._writer_conn)  # bodies SQLite's json functions cannot read
        complete.complete_stored(self._writer_conn)  # objects from before full models
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
        # The write gate, set by the node's role (refuse_writes / accept_writes).
        self._refused: str | None = None
        self._replicated: Replicated | None = None
        # Set when a commit could not be made durable: nothing is written after it (the disk
        # may have dropped what it acknowledged; a restart reads what is really there), and
        # on_disk_failure(reason) is called: the server stops (as PostgreSQL does).
        self.disk_failure: str | None = None
        self.on_disk_failure: Callable[[str], None] | None = None
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

    def _local_delete_sync(self, name: str) -> None:
        with self._local_lock:
            self._local_conn.execute("DELETE FROM local WHERE name=?", (name,))

    async def local_delete(self, name: str) -> None:
        await trio.to_thread.run_sync(self._local_delete_sync, name)

    # ---- the write gate ---------------------------------------------------------------------
    def refuse_writes(self, reason: str) -> None:
        """From now on writes (but internal ones) raise WritesRefused(reason), those already
        queued and not yet taken by the writer too. Writes already taken still wait for the
        replication hook they were taken under."""
        self._refused, self._replicated = reason, None

    def accept_writes(self, replicated: Replicated | None = None) -> None:
        """Writes are accepted; with `replicated`, each write that changed something awaits
        replicated(its last seq) before it returns (one hook at most)."""
        self._refused, self._replicated = None, replicated

    @property
    def writes_refused(self) -> str | None:
        """Why writes are refused now, or None when they are accepted."""
        return self._refused

    @asynccontextmanager
    async def quiesced(self) -> AsyncIterator[None]:
        """While inside, no write is inside the writer: writes already inside it finish first,
        writes arriving meanwhile wait. Do not write from inside (the writer is held)."""
        async with self._writer:
            yield

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
        if self._refused and not internal:
            raise WritesRefused(self._refused)
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
        if job.changes and job.replicated is not None:
            await job.replicated(job.changes[-1]["seq"])
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
            if self._refused and not job.internal:  # the role changed while it queued
                job.error = WritesRefused(self._refused)
                job.done = True
                continue
            # the hook in force when it commits: a role change meanwhile does not drop it
            job.replicated = self._replicated
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

    def _disk_error(self) -> StorageLost:
        return StorageLost(self.disk_failure)

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
        """A passive's replay: one transaction, position included. Durable when this returns:
        the batch costs one flush of the WAL, not one per entry. A flush that fails stops
        this node as it would an active (_lost_the_disk)."""
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
                await trio.to_thread.run_sync(complete.complete_stored, self._writer_conn)
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
