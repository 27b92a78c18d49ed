"""Full catch-up: fetch the active's snapshot, the blobs it lists that we lack, then install it.

The snapshot's own `blobs` table is the manifest (path, size, sha256). A blob we already hold
with the same sha256 is kept; one fetched earlier by an interrupted catch-up is recognised from
the sha256 we noted for it (by size and mtime), so a restart never re-copies finished blobs.
Files the manifest does not list are removed. The snapshot is installed last, atomically.
A divergent node (its own entries would be dropped) first keeps its own data in a backup
(drp/ha/backup.py): its database, and the files that would be replaced or removed, moved there.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import trio

from drp.blob import storage
from drp.blob.files import BlobFiles
from drp.ha import backup as join_backup
from drp.ha.transfer import Gone
from drp.store import snapshot

log = logging.getLogger("drp.ha.passive")
PARALLEL_FETCHES = 4


def _stamp(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


class LocalBlobs:
    """What we already hold on disk, by sha256, without re-hashing files we know."""

    def __init__(self, node):
        self.node = node
        self.base = node.cfg.base_root

    def known_sha(self, path: str, size: int, rows: dict) -> str | None:
        """The sha256 of the file we hold at path, when it has the manifest's size: noted at
        fetch time, known from our own blobs row, or (a fetch killed between its rename and
        its note) hashed now, which is still cheaper than fetching it again."""
        target = storage.disk_path(self.base, path)
        stamp = _stamp(target)
        if stamp is None or int(stamp.split(":")[0]) != size:
            return None
        noted = self.node.store.local_get_sync(f"sha:{path}")
        if noted and noted.rsplit(":", 1)[0] == stamp:
            return noted.rsplit(":", 1)[1]
        row = rows.get(path)
        if row and row[1]:
            return row[1]  # applied by us from the change log, so its bytes are that version
        return storage.file_sha256(target)[1]

    def note(self, path: str, sha: str) -> None:
        stamp = _stamp(storage.disk_path(self.base, path))
        if stamp:
            # A hint, written without waiting for the disk: should the machine crash before it
            # gets there, known_sha hashes the file instead. That saves a third of the fsyncs
            # per fetched file (measured here: ~5% on a catch-up of 1 MiB files; more on disks
            # where an fsync is dear).
            self.node.store.local_set_sync(f"sha:{path}", f"{stamp}:{sha}", durable=False)

    def on_disk(self) -> set[str]:
        found = set()
        for area in storage.AREAS:
            root = storage.area_root(self.base, area)
            for dirpath, _, names in os.walk(root):
                for name in names:
                    if storage.is_temp(name):
                        continue
                    rel = Path(dirpath, name).relative_to(root).as_posix()
                    found.add(f"{area}/{rel}")
        return found


async def full_catchup(node, fetcher, snap, progress, divergent: bool) -> None:
    store, base = node.store, node.cfg.base_root
    # Before anything of ours is replaced; a resumed catch-up finds the one it made.
    kept = await join_backup.open_backup(store, base) if divergent else None
    snap_path = base / "ha" / f"snapshot-{snap.seq}.db"
    progress.phase = "catch-up (snapshot)"
    progress.bytes_total = snap.size
    began = time.monotonic()
    await fetcher.fetch(f"/api/v3/ha/snapshot/{snap.snapshot_id}", snap_path, snap.sha256,
                        progress=progress)
    snap_s = time.monotonic() - began
    manifest, objects = await trio.to_thread.run_sync(snapshot.manifest, snap_path)
    progress.objects_total = objects
    local = LocalBlobs(node)
    rows = {r["path"]: (r["size"], r["sha256"]) for r in await store.blobs()}

    def plan():
        need = []
        for path, size, sha, mode in manifest:
            if not sha:  # job logs: kept when we applied the same appends (no divergence)
                have = rows.get(path)
                target = storage.disk_path(base, path)
                if not divergent and have and have[0] == size and _stamp(target):
                    continue
            elif local.known_sha(path, size, rows) == sha:
                continue
            need.append((path, size, sha, mode))
        return need
    # Largest first, so the last fetches to finish are small ones and every slot stays busy.
    need = sorted(await trio.to_thread.run_sync(plan), key=lambda n: -n[1])
    listed = {m[0] for m in manifest}
    if kept is not None:  # what the fetches would replace and the active lacks: moved aside
        extra = (await trio.to_thread.run_sync(local.on_disk)) - listed
        await trio.to_thread.run_sync(kept.keep, sorted({n[0] for n in need} | extra))
        await kept.files_kept(store)
        log.info("%s", await trio.to_thread.run_sync(kept.summary))
    progress.phase = "catch-up (files)"
    progress.bytes_total += sum(n[1] for n in need)
    log.info("catch-up: snapshot at seq %d with %d objects and %d blobs; fetching %d blobs "
             "(%.1f MiB), keeping %d", snap.seq, objects, len(manifest), len(need),
             sum(n[1] for n in need) / 2**20, len(manifest) - len(need))
    limiter = trio.CapacityLimiter(PARALLEL_FETCHES)
    files_began = time.monotonic()
    from_static = [0]  # bytes the static port served

    async def fetch_one(path, size, sha, mode):
        async with limiter:
            target = storage.disk_path(base, path)
            try:
                got_size, got, static = await fetcher.fetch_blob(path, target, sha, size,
                                                                 mode or 0o644, progress)
            except Gone:
                return  # deleted after the snapshot; the stream carries the delete
            from_static[0] += got_size if static else 0
            await trio.to_thread.run_sync(local.note, path, got)
    async with trio.open_nursery() as nursery:
        for item in need:
            nursery.start_soon(fetch_one, *item)
    extra = sorted((await trio.to_thread.run_sync(local.on_disk)) - listed)
    files = BlobFiles(base)
    for path in extra:
        await trio.to_thread.run_sync(files.remove, path)
    if extra:
        log.info("catch-up: removed %d files the active does not have", len(extra))
    files_s = time.monotonic() - files_began
    progress.phase = "catch-up (installing)"
    install_began = time.monotonic()
    await store.install_snapshot(snap_path)
    await join_backup.catch_up_installed(store)
    progress.objects_done = objects
    snap_path.unlink(missing_ok=True)
    done = time.monotonic()
    log.info("catch-up timings: snapshot %d bytes in %.3fs, %d blobs %d bytes in %.3fs, "
             "installed %d objects in %.3fs, total %.3fs (%d blob bytes from the static port)",
             snap.size, snap_s, len(need), sum(n[1] for n in need), files_s, objects,
             done - install_began, done - began, from_static[0])


async def remove_orphans(node) -> None:
    """Before streaming resumes: drop blob files no row accounts for, and job-log bytes past
    their recorded size, as a full catch-up would. Only a crash leaves them (killed between a
    file's rename and its transaction's commit, e.g. an upload while this node was active);
    the active's log never mentions them, so streaming alone would keep them forever."""
    store, base = node.store, node.cfg.base_root
    rows = {r["path"]: r["size"] for r in await store.blobs()}
    files = BlobFiles(base)

    def run() -> tuple[int, int]:
        removed = truncated = 0
        for path in LocalBlobs(node).on_disk():
            if path not in rows:
                files.remove(path)
                removed += 1
            elif path.startswith("job-logs/") and \
                    files.target(path).stat().st_size > rows[path]:
                files.cut(path, rows[path])
                truncated += 1
        return removed, truncated
    removed, truncated = await trio.to_thread.run_sync(run)
    if removed or truncated:
        log.warning("removed %d blob files and cut %d job logs to their recorded size: left "
                    "by a crash, never committed", removed, truncated)
