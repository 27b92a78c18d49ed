"""A joining node's own data is kept as a backup (issue 19 item 8): a node that ran standalone
before it joined a cluster takes the active's copy, and what it had is in
<base-root>/ha/backups/<time>-seq<head>/ (its drp.db, and the files the catch-up replaced or
removed), named in the log with how to restore it. In-process (tests/hafakes.py): real stores,
roles and supervisors, the network in memory."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil

import pytest
import trio

from drp.blob import storage
from drp.ha import backup
from drp.ha.catchup import LocalBlobs
from drp.ha.follower import REALTIME
from drp.node import bootstrap
from drp.store import tx as txmod
from drp.store.store import Store
from tests.hafakes import FakeNode, LocalFetcher, wait_until

pytestmark = pytest.mark.timeout(30)

JOB_LOG = "job-logs/1f0e0c4e-0000-4000-8000-000000000001"
OTHER_LOG = "job-logs/1f0e0c4e-0000-4000-8000-000000000002"


def node(segment, tmp_path, drp_id: str, *, passive: bool) -> FakeNode:
    return FakeNode(segment, tmp_path / drp_id, drp_id, f"02:00:00:00:00:0{drp_id[-1]}",
                    passive=passive)


def put_file(base, path: str, data: bytes):
    """A blob's bytes under base; returns the write that records its row."""
    target = storage.prepare_target(base, path)
    target.write_bytes(data)
    body = {"size": len(data), "mode": 0o644,
            "sha256": "" if path.startswith("job-logs/") else hashlib.sha256(data).hexdigest()}
    return lambda tx: tx.record("blob", path, "put", body)


async def active_n2(segment, tmp_path) -> FakeNode:
    """n2: the cluster's active, with a machine and files n1 holds other versions of."""
    n2 = node(segment, tmp_path, "n2", passive=False)
    await n2.start()
    await wait_until(lambda: n2.status().role == "active", what="n2 active")
    await n2.write("cluster-machine")
    for path, data in (("isos/boot.iso", b"the cluster's iso"), ("files/same.txt", b"same"),
                       (JOB_LOG, b"the cluster's job log\n")):
        await n2.store.write(put_file(n2.base, path, data))
    return n2


async def standalone_n1(tmp_path) -> None:
    """n1 as dr-provision runs it without HA: bootstrapped, a machine and files of its own."""
    base = tmp_path / "n1"
    base.mkdir()
    store = Store(base / "drp.db")
    try:
        await store.write(lambda tx: bootstrap(tx, "n1"))
        await store.write(lambda tx: tx.record("machines", "own-machine", "create",
                                               {"Name": "own-machine"}))
        for path, data in (("isos/boot.iso", b"n1's own iso"), ("files/only-n1.txt", b"mine"),
                           ("files/same.txt", b"same"), (JOB_LOG, b"n1's job log\n")):
            await store.write(put_file(base, path, data))
    finally:
        store.close()


async def join(segment, tmp_path) -> FakeNode:
    n1 = node(segment, tmp_path, "n1", passive=True)
    await n1.start()
    await wait_until(lambda: n1.status().ha_status == "In-Sync", what="n1 In-Sync")
    return n1


def backups(n: FakeNode) -> list:
    root = backup.backups_root(n.base)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def machines(db) -> list[str]:
    store = Store(db)
    try:
        return sorted(o["Name"] for o in await store.list("machines"))
    finally:
        store.close()


async def test_standalone_node_keeps_its_data_when_it_joins(segment, tmp_path, logs):
    n2 = await active_n2(segment, tmp_path)
    await standalone_n1(tmp_path)
    store = Store(tmp_path / "n1" / "drp.db")
    head = store.head
    store.close()
    n1 = await join(segment, tmp_path)
    # n1 is n2's copy now
    assert sorted(await n1.keys()) == sorted(await n2.keys()) == ["cluster-machine"]
    assert n1.store.head == n2.store.head
    disk = lambda n, p: storage.disk_path(n.base, p)  # noqa: E731
    assert disk(n1, "isos/boot.iso").read_bytes() == b"the cluster's iso"
    assert disk(n1, JOB_LOG).read_bytes() == b"the cluster's job log\n"
    assert not disk(n1, "files/only-n1.txt").exists()
    # ... and what n1 had is in one backup, named in one line with how to restore it
    [name] = backups(n1)
    assert name.endswith(f"-seq{head}")
    where = backup.backups_root(n1.base) / name
    [line] = logs("this node's own data is kept in")
    assert str(where) in line and f"change log to seq {head}" in line
    assert "3 files" in line and "without RS_HA_ENABLED" in line
    assert f"cp -a {where}/files/. {n1.base}/" in line
    assert await machines(where / "drp.db") == ["own-machine"]
    kept = where / "files"
    assert (kept / "tftpboot/isos/boot.iso").read_bytes() == b"n1's own iso"
    assert (kept / "tftpboot/files/only-n1.txt").read_bytes() == b"mine"
    assert (kept / "job-logs" / JOB_LOG.split("/")[1]).read_bytes() == b"n1's job log\n"
    assert not (kept / "tftpboot/files/same.txt").exists()  # same bytes: left in place
    assert disk(n1, "files/same.txt").read_bytes() == b"same"
    assert (where / backup.RESTORE_NOTE).exists()
    assert not logs("removed 1 files the active does not have")
    # neither served nor replicated: no blob area holds it
    assert LocalBlobs(n1).on_disk() == {"isos/boot.iso", "files/same.txt", JOB_LOG}
    # the restore, step by step as the line says
    await n1.stop()
    shutil.copyfile(where / "drp.db", n1.base / "drp.db")
    for leftover in ("drp.db-wal", "drp.db-shm"):
        (n1.base / leftover).unlink(missing_ok=True)
    shutil.copytree(kept, n1.base, dirs_exist_ok=True)
    assert await machines(n1.base / "drp.db") == ["own-machine"]
    assert disk(n1, "isos/boot.iso").read_bytes() == b"n1's own iso"
    assert disk(n1, "files/same.txt").read_bytes() == b"same"


async def test_passive_only_behind_makes_no_backup(segment, tmp_path, logs, monkeypatch):
    monkeypatch.setattr(txmod, "TRIM_EVERY", 5)  # the log is trimmed soon: a full catch-up
    n2 = await active_n2(segment, tmp_path)
    n2.store.retention = 3
    n1 = await join(segment, tmp_path)
    await n1.stop()
    full = "connected to active n2: full catch-up"
    plain = len(logs(full))
    for i in range(12):
        await n2.write(f"later-{i}")
    await n2.store.write(put_file(n2.base, "isos/boot.iso", b"a newer iso"))
    await n1.start()
    await wait_until(lambda: n1.status().ha_status == "In-Sync", what="n1 caught up")
    assert len(logs(full)) == plain + 1  # behind the retained log: a full catch-up
    assert sorted(await n1.keys()) == sorted(await n2.keys())
    assert storage.disk_path(n1.base, "isos/boot.iso").read_bytes() == b"a newer iso"
    assert backups(n1) == [] and not logs("own data is kept")


async def test_fourth_backup_removes_the_oldest(segment, tmp_path, logs):
    await standalone_n1(tmp_path)
    root = backup.backups_root(tmp_path / "n1")
    for stamp in ("20240101T000000Z-seq2", "20250101T000000Z-seq9", "20250101T000000Z-seq10"):
        (root / stamp / "files").mkdir(parents=True)
    (root / "unrelated").mkdir()  # not a backup's name: never touched
    await active_n2(segment, tmp_path)
    n1 = await join(segment, tmp_path)
    names = backups(n1)
    assert len(names) == 4 and "20240101T000000Z-seq2" not in names
    assert names[:2] == ["20250101T000000Z-seq10", "20250101T000000Z-seq9"]
    assert "unrelated" in names
    assert logs(f"removed the backup {root / '20240101T000000Z-seq2'}: only the 3 newest")


async def test_interrupted_catch_up_resumes_into_the_same_backup(segment, tmp_path, logs,
                                                                 monkeypatch):
    """Killed mid-catch-up after the job log came from the active: the restart keeps the one
    backup, and n1's own job log in it is not overwritten with the active's."""
    blocked, plain = trio.Event(), LocalFetcher.fetch_blob

    async def fetch_blob(self, path, *args):
        if path == "isos/boot.iso" and not blocked.is_set():
            blocked.set()
            await trio.sleep_forever()
        return await plain(self, path, *args)
    monkeypatch.setattr(LocalFetcher, "fetch_blob", fetch_blob)
    n2 = await active_n2(segment, tmp_path)
    await n2.store.write(put_file(n2.base, OTHER_LOG, b"a job log n1 never had\n"))
    await standalone_n1(tmp_path)
    n1 = node(segment, tmp_path, "n1", passive=True)
    await n1.start()
    await blocked.wait()
    for path in (JOB_LOG, OTHER_LOG):
        await wait_until(lambda: storage.disk_path(n1.base, path).exists(), what=path)
    await n1.crash()
    [name] = backups(n1)
    n1 = await join(segment, tmp_path)
    assert backups(n1) == [name]
    assert logs("resuming into the backup")
    kept = backup.backups_root(n1.base) / name / "files"
    assert (kept / "job-logs" / JOB_LOG.split("/")[1]).read_bytes() == b"n1's job log\n"
    assert (kept / "tftpboot/isos/boot.iso").read_bytes() == b"n1's own iso"
    assert not (kept / OTHER_LOG).exists()  # fetched from n2 before the kill: not n1's
    assert sorted(await n1.keys()) == sorted(await n2.keys())
    assert await n1.store.local_get(backup.PENDING) == ""  # installed: nothing pending
    assert logs(REALTIME)


def test_a_file_on_another_disk_is_copied_then_dropped(tmp_path, monkeypatch):
    """An area may be a symlink to a bigger disk: a rename cannot cross it (EXDEV)."""
    src, dest = tmp_path / "iso", tmp_path / "backup" / "iso"
    src.write_bytes(b"an iso on another disk")
    dest.parent.mkdir()
    rename = os.replace

    def replace(a, b):
        if a == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(a, b)
    monkeypatch.setattr(os, "replace", replace)
    backup._move(src, dest)
    assert not src.exists() and dest.read_bytes() == b"an iso on another disk"
    assert [p.name for p in dest.parent.iterdir()] == ["iso"]  # no partial copy left
