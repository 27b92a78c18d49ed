"""A joining node's own data, kept aside when a full catch-up replaces it.

A node whose change log holds entries the active's history lacks (it ran standalone before it
joined, or it was an active that crashed with writes nobody replicated) takes the active's
snapshot over its own database. Before anything is replaced, its database is copied (VACUUM
INTO) to <base-root>/ha/backups/<UTC time>-seq<head>/drp.db, and the blob files the catch-up
would replace or remove are moved (renamed, no copy) into files/ there, at their paths below
the base root, so that copying files/ over the base root puts them back. ha/ is in no blob
area: nothing here is served, listed or replicated. The newest KEEP backups are kept.

An interrupted catch-up (a restart) finds its backup again through a `local` row naming it: one
node's data never ends up split over two backups (which pruning could then cut in half), and a
file fetched from the active since is never moved over the node's own copy.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable

import trio

from drp.blob import storage
from drp.durable import fsync_dir, write_atomic
from drp.store import snapshot

log = logging.getLogger("drp.ha.passive")
KEEP = 3  # backups kept under ha/backups, newest first
# local row: "<dir name> <history digest>" once the database is copied, "... moved" once the
# files are; "" when no catch-up is pending.
PENDING = "join-backup"
NAME = re.compile(r"^(\d{8}T\d{6}Z)-seq(\d+)$")
RESTORE_NOTE = "RESTORE.txt"


def backups_root(base: Path | str) -> Path:
    return Path(base) / "ha" / "backups"


def restore_steps(base: Path | str, where: Path) -> list[str]:
    """What an operator does to go back to a backup, step by step."""
    return ["stop dr-provision", f"if the cluster's data is wanted, keep a copy of {base}",
            f"cp {where}/drp.db {base}/drp.db", f"rm -f {base}/drp.db-wal {base}/drp.db-shm",
            f"cp -a {where}/files/. {base}/",
            "start dr-provision standalone (without RS_HA_ENABLED: move the 20-ha.conf "
            "drop-in aside)"]


class JoinBackup:
    """One backup being filled: its database is in; keep() moves files into it."""

    def __init__(self, base: Path, where: Path, head: int, pending: str, moved: bool):
        self.base, self.dir, self.head, self.pending = base, where, head, pending
        self.moved = moved  # a resumed catch-up: the files went in before the restart

    def keep(self, paths: Iterable[str]) -> None:
        """Move these blob files (the ones the catch-up replaces or removes) into the backup;
        missing ones are skipped, one already in the backup is not overwritten. Synchronous
        (a worker thread); durable when it returns."""
        if self.moved:
            return  # what is at those paths now was fetched from the active
        touched: set[Path] = set()
        for path in paths:
            src = storage.disk_path(self.base, path)
            dest = self.dir / "files" / src.relative_to(self.base)
            if dest.exists() or not src.is_file():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _move(src, dest)
            touched.update((src.parent, dest.parent))
        for directory in touched:  # once per directory, not per file
            fsync_dir(directory)

    async def files_kept(self, store) -> None:
        """Note that every file is in: a restart moves none (they are the active's now)."""
        await store.local_set(PENDING, f"{self.pending} moved")
        self.moved = True

    def summary(self) -> str:
        """The INFO line: where, what it holds, how to restore it. Synchronous."""
        entries, objects = snapshot.counts(self.dir / "drp.db")
        files = size = 0
        for dirpath, _, names in os.walk(self.dir / "files"):
            for name in names:
                files += 1
                size += os.lstat(os.path.join(dirpath, name)).st_size
        return (f"catch-up: this node's own data is kept in {self.dir}: its database (change "
                f"log to seq {self.head}, {entries} entries, {objects} objects) and {files} "
                f"files ({size} bytes) that the catch-up replaces or removes; to go back to "
                f"it: {'; '.join(restore_steps(self.base, self.dir))}")


async def open_backup(store, base: Path) -> JoinBackup:
    """The backup for a divergent catch-up starting now: the one an interrupted catch-up of
    this same database made, or a new one holding a consistent copy of the database (the
    oldest beyond KEEP removed)."""
    root = backups_root(base)
    # A divergent node's history differs from the active's, so once a catch-up installed the
    # active's copy the digest differs too: a row left by a crash just after that never names
    # a backup of other data than this.
    digest = hashlib.sha256(repr(await store.history()).encode()).hexdigest()[:16]
    pending = ((await store.local_get(PENDING)) or "").split()
    if len(pending) >= 2 and pending[1] == digest:
        where, match = root / pending[0], NAME.match(pending[0])
        if match and int(match[2]) == store.head and (where / "drp.db").is_file():
            log.info("catch-up: resuming into the backup %s made before the restart", where)
            return JoinBackup(base, where, store.head, f"{pending[0]} {digest}",
                              moved=len(pending) > 2)
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-seq{store.head}"
    where = root / name
    await trio.to_thread.run_sync(lambda: (where / "files").mkdir(parents=True, exist_ok=True))
    partial = where / "drp.db.partial"
    await store.snapshot_into(partial)
    await trio.to_thread.run_sync(_seal, partial, where, restore_steps(base, where))
    await store.local_set(PENDING, f"{name} {digest}")
    for old in await trio.to_thread.run_sync(_prune, root, name):
        log.info("removed the backup %s: only the %d newest are kept", old, KEEP)
    return JoinBackup(base, where, store.head, f"{name} {digest}", moved=False)


async def catch_up_installed(store) -> None:
    """The active's snapshot is in: no backup is pending any more."""
    if await store.local_get(PENDING):
        await store.local_set(PENDING, "")


def _seal(partial: Path, where: Path, steps: list[str]) -> None:
    os.replace(partial, where / "drp.db")
    write_atomic(where / RESTORE_NOTE, (
        "This node's own data, kept when it joined an HA cluster and took the active's copy.\n"
        "drp.db is its database; files/ holds its blob files, at their paths below the base\n"
        "root, that the catch-up replaced or removed (the others stayed where they were).\n"
        "To go back to it:\n" +
        "".join(f"  {n}. {step}\n" for n, step in enumerate(steps, 1))).encode())
    fsync_dir(where.parent)


def _move(src: Path, dest: Path) -> None:
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # An area that is a symlink to another disk (tftpboot/isos may be): copy, then drop;
        # under its own name only once whole, so a restart never takes half a copy for done.
        tmp = dest.with_name(f".{dest.name}.partial")
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        os.unlink(src)


def _prune(root: Path, current: str) -> list[Path]:
    """Remove all but the KEEP newest backups (never `current`); returns the removed."""
    found = []
    for entry in root.iterdir():
        match = NAME.match(entry.name)
        if match and entry.is_dir():
            found.append(((match[1], int(match[2])), entry))
    found.sort()
    removed = [entry for _, entry in found[:-KEEP] if entry.name != current]
    for entry in removed:
        shutil.rmtree(entry)
    return removed
