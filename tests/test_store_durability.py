"""The store's durability: a commit is handed to the replication senders while its flush runs,
and a disk that will not flush stops every write (and every acknowledgement) on the node."""
from __future__ import annotations

import errno
import sqlite3
import threading

import pytest
import trio

from drp.api.errors import api_error
from drp.store.errors import StorageLost
from drp.store.store import Store
from tests.storeutil import promote, put


def entry(seq: int, key: str, epoch: int = 1) -> dict:
    """A replicated entry that creates profile `key`."""
    return {"seq": seq, "epoch": epoch, "time": 0.0, "kind": "profiles", "key": key,
            "action": "create", "body": {"Name": key}}


class _WalFlush:
    """os.fdatasync, except on the store's WAL descriptor, where a test can hold it or make it
    fail the way a dying disk does (EIO). A real disk error cannot be produced on demand."""

    def __init__(self, store: Store, monkeypatch):
        import os
        self.store, self.real = store, os.fdatasync
        self.fail = False
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.calls: list[str] = []
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        if fd != self.store._wal_fd:
            return self.real(fd)
        self.calls.append("flush")
        self.entered.set()
        if not self.release.wait(10):
            raise AssertionError("the flush was never released")
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        return self.real(fd)


def lose_the_disk(store: Store, monkeypatch):
    """From now on the store's WAL flush fails. Returns the _WalFlush, the reasons the store
    asked the server to stop for, and the batches its listeners were told of."""
    flush = _WalFlush(store, monkeypatch)
    flush.fail = True
    stopped, seen = [], []
    store.on_disk_failure = stopped.append
    store.listeners.append(seen.append)
    return flush, stopped, seen


async def test_commit_is_published_while_its_flush_runs(store, monkeypatch):
    """Senders see a group as soon as it commits (so the passives' round trip overlaps this
    node's flush), but its writes return only once the WAL is on disk."""
    flush = _WalFlush(store, monkeypatch)
    flush.release.clear()
    head = store.head
    returned = trio.Event()

    async def writer():
        await store.write(put("profiles", "early", {"Name": "early"}))
        returned.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        with trio.fail_after(10):
            await store.wait_head_beyond(head)  # published while the flush is held
        assert await trio.to_thread.run_sync(flush.entered.wait, 10)
        assert store.head == head + 1 and store.recent.after(head, 10)
        assert await store.get("profiles", "early") == {"Name": "early"}  # committed
        await trio.sleep(0.05)
        assert not returned.is_set()  # not durable yet: the write has not returned
        flush.release.set()
    assert returned.is_set() and flush.calls == ["flush"]


async def test_a_promotion_is_flushed_before_it_is_published(store, monkeypatch):
    """The epoch history must never reach a passive and then be lost here."""
    flush = _WalFlush(store, monkeypatch)
    run_group = store._run_group

    def spy(group, publish):
        def recorded(changes, wire):  # in the worker thread, as the flush is
            flush.calls.append("published")
            publish(changes, wire)
        return run_group(group, recorded)
    monkeypatch.setattr(store, "_run_group", spy)
    await store.write(put("profiles", "plain", {"Name": "plain"}))
    assert flush.calls == ["published", "flush"]  # a plain write: published, then flushed
    flush.calls.clear()
    await store.write(promote(2))
    assert flush.calls == ["flush", "published"]


async def test_failed_flush_fails_the_group_and_stops_writes(store, monkeypatch, caplog,
                                                             tmp_path):
    """A commit the disk would not flush is reported failed; nothing is written after it (nor
    replicated entries acknowledged), and the server is told to stop."""
    flush, stopped, seen = lose_the_disk(store, monkeypatch)
    with pytest.raises(StorageLost) as info:
        await store.write(put("profiles", "unflushed", {"Name": "unflushed"}))
    answer = api_error(info.value)  # what a client gets
    assert answer.code == 500 and answer.type == "StorageError"
    assert "OSError" in str(info.value) and "restart dr-provision" in str(info.value)
    assert stopped == [str(info.value)] == answer.messages
    assert any(r.levelname == "CRITICAL" for r in caplog.records)
    # committed and visible (readers, passives, listeners), but reported failed
    assert await store.get("profiles", "unflushed") is not None
    assert [[c["key"] for c in batch] for batch in seen] == [["unflushed"]]
    flush.fail = False  # even with the disk back
    head = store.head
    for internal in (False, True):
        with pytest.raises(StorageLost) as info:
            await store.write(put("profiles", "after", {"Name": "after"}), internal=internal)
        assert api_error(info.value).code == 500
    with pytest.raises(StorageLost):
        await store.apply_replicated([entry(head + 1, "r")])
    snap = tmp_path / "snap.db"
    await store.snapshot_into(snap)  # reading still works
    with pytest.raises(StorageLost):
        await store.install_snapshot(snap)
    assert store.head == head and await store.get("profiles", "after") is None


async def test_a_write_queued_behind_a_lost_flush_is_refused(store, monkeypatch):
    flush = _WalFlush(store, monkeypatch)
    flush.release.clear()
    flush.fail = True
    outcomes = {}

    async def writer(key):
        try:
            await store.write(put("profiles", key, {"Name": key}))
            outcomes[key] = "ok"
        except StorageLost as e:
            outcomes[key] = api_error(e).code
    head = store.head
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, "first")
        assert await trio.to_thread.run_sync(flush.entered.wait, 10)
        with trio.fail_after(10):
            await store.wait_head_beyond(head)  # "first" is published, its flush held
        nursery.start_soon(writer, "queued")
        while len(store._queue) < 1:
            await trio.sleep(0.01)
        flush.release.set()
    assert outcomes == {"first": 500, "queued": 500}
    assert store.head == head + 1 and await store.get("profiles", "queued") is None


def test_a_store_needs_write_ahead_logging():
    """The store flushes its WAL itself; where SQLite cannot keep one it refuses to open."""
    from drp.store import schema
    with pytest.raises(sqlite3.OperationalError, match="cannot use write-ahead logging"):
        schema.connect(":memory:")


async def test_a_passive_whose_flush_fails_acknowledges_nothing_more(tmp_path, monkeypatch):
    """A passive's batch is durable only once its WAL is flushed: when that fails, the batch
    is not acknowledged (apply_replicated raises), nothing more is applied, and the node is
    told to stop, as an active would be."""
    passive = Store(tmp_path / "p.db")
    try:
        await passive.apply_replicated([entry(1, "a")])
        flush, stopped, seen = lose_the_disk(passive, monkeypatch)
        with pytest.raises(StorageLost) as info:
            await passive.apply_replicated([entry(2, "b"), entry(3, "c")])
        assert api_error(info.value).type == "StorageError"
        assert stopped and "could not be made durable" in stopped[0]
        assert passive.head == 3  # committed (the next seqs must not be reused)...
        assert [[c["key"] for c in batch] for batch in seen] == [["b", "c"]]  # ...and visible
        flush.fail = False  # the next flush would succeed: it must not be trusted
        with pytest.raises(StorageLost):
            await passive.apply_replicated([entry(4, "d")])
        assert passive.head == 3 and await passive.get("profiles", "d") is None
    finally:
        passive.close()
