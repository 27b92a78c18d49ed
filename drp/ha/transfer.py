"""Bulk bytes for catch-up: the snapshot and blob files, fetched from the active over HTTPS,
or, for files and ISOs, from its static port over plain HTTP (checked against their sha256).

Downloads go to `<base-root>/ha/partial/<sha256>` first, so an interrupted transfer resumes with
an HTTP Range request after a restart; the whole file is verified against its sha256 before it is
renamed into place. Only finished, verified files ever appear under their real names.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import trio

from drp.blob import storage
from drp.blob.storage import hash_existing
from drp.durable import fsync_dir
from drp.ha.bulkget import Pool, PoolClosed
from drp.ha.progress import Progress
from drp.metrics import CATCHUP_BYTES

log = logging.getLogger("drp.ha.transfer")
CHUNK = 1 << 20  # hashed and written at a time
STEP = 64 << 10  # read at a time
# A download silent this long is given up (and resumed by the next attempt). It also bounds how
# long the thread of a cancelled fetch can keep its partial file when the active went silent.
READ_TIMEOUT = 15.0
# A static port that does not answer a connect this soon is taken as unreachable from here.
STATIC_CONNECT_TIMEOUT = 3.0
# Errors of this node's own disk: they end the fetch whichever port it comes from.
LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class TransferError(Exception):
    pass


class Gone(TransferError):
    """The active no longer has the file (deleted after the snapshot); a later entry says so."""


class _PartialLocks:
    """One lock per partial file, for the whole process (a thread given up on by an earlier
    follower may still be writing): one writer per partial file. An entry lives while any
    thread has claimed it; claims and releases are made by the fetch threads themselves, so
    a thread that was given up on still counts until it really ends."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[Path, list] = {}  # partial -> [lock, threads that claimed it]

    @contextmanager
    def held(self, partial: Path):
        with self._guard:
            entry = self._locks.setdefault(partial, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[partial]


_PARTIALS = _PartialLocks()
# Held around the rename of a finished download into place, and by a cancelled fetch while it
# tells its thread to stop: a fetch given up on never installs its file afterwards (over what
# this node wrote since, e.g. as the active).
_INSTALL = threading.Lock()


class Cancelled(Exception):
    """The caller gave up on this fetch (its trio task was cancelled)."""


class Fetcher:
    """Downloads from the active (HTTPS, mutual TLS; files and ISOs from its static port
    when it has one), resumable and sha256-verified.

    Each download runs in a worker thread (drp.ha.bulkget): OpenSSL decrypts the TLS records
    straight into a 1 MiB buffer, hashed and written a buffer at a time, while on the event
    loop (trio's SSLStream, h11) every 16 KiB record cost a round of Python and made the
    passive CPU-bound. Several fetches run at once, on both cores."""

    def __init__(self, base_url: str, token: str | None, partial_dir: Path, tls=None):
        """token: a Bearer token to send (None: the connection's client certificate is the
        credential); tls: as bulkget.Pool's."""
        self.partial_dir = partial_dir
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = Pool(base_url, headers, READ_TIMEOUT, tls=tls)
        self.static: Pool | None = None  # the active's static file server, when it has one
        self._resumed: set[Path] = set()  # partial files a fetch resumed (said once each)
        self._static_usable = False  # cleared when it fails to answer, until the next session
        self._threads = 0  # fetch threads of this fetcher still running
        self._closing = False
        self._count_lock = threading.Lock()

    def use_static(self, port: int) -> None:
        """Fetch files and ISOs from the active's static file server on `port` (0: none), on
        the host the API is reached at: plain HTTP, no token, as machines being provisioned
        get them. Neither side pays for TLS, and that server sends files with sendfile
        (`bench catchup` here: ~1.8x the bytes per second); each file must match the sha256
        the authenticated stream gave for it, and anything it does not serve right is
        fetched over the API port instead."""
        if self.static is None or self.static.port != port:
            old, self.static = self.static, None
            if old is not None:
                old.close()
            if port:
                host = self.client.host
                self.static = Pool(f"http://{f'[{host}]' if ':' in host else host}:{port}",
                                   {}, READ_TIMEOUT, STATIC_CONNECT_TIMEOUT)
        self._static_usable = self.static is not None

    def set_peer(self, tag: str, check) -> None:
        """Downloads go only to a server whose certificate passes `check` (the active the
        replication stream follows: bulkget.Pool.set_peer)."""
        self.client.set_peer(tag, check)

    async def aclose(self) -> None:
        """Close the connections now, or, if a fetch thread given up on still runs, when the
        last one ends (it notices `stop` at its next read)."""
        with self._count_lock:
            self._closing = True
            if self._threads:
                return
        self._close_pools()

    def _close_pools(self) -> None:
        self.client.close()
        if self.static is not None:
            self.static.close()

    def _thread_ends(self) -> None:
        with self._count_lock:
            self._threads -= 1
            close = self._closing and not self._threads
        if close:
            self._close_pools()

    async def sweep_staged(self) -> None:
        """Remove staged files a crash left between stage() and install()."""
        def run():
            for path in self.partial_dir.glob("*.staged"):
                path.unlink(missing_ok=True)
        await trio.to_thread.run_sync(run)

    async def fetch(self, url: str, dest: Path, sha256: str, mode: int = 0o644,
                    progress: Progress | None = None) -> tuple[int, str]:
        """Download url into dest; returns (size, sha256) of what the active sent. The active
        may send a newer version than `sha256` (it changed after the entry that asked for it);
        that is accepted when its own X-DRP-SHA256SUM header vouches for the bytes."""
        size, got, _ = await self._fetch(url, dest, sha256, mode, progress)
        return size, got

    async def fetch_blob(self, path: str, dest: Path, sha256: str, size: int,
                         mode: int = 0o644, progress: Progress | None = None
                         ) -> tuple[int, str, bool]:
        """Blob `path` (`size` bytes with this sha256) into dest, from the static port when
        it serves exactly that, else over the API port as fetch() does:
        (size, sha256, from_static)."""
        got = await self._from_static(path, dest, (sha256, size), mode, progress)
        if got is not None:
            return got[0], got[1], True
        size, sha = await self.fetch(f"/api/v3/ha/blobs/{path}", dest, sha256, mode, progress)
        return size, sha, False

    async def stage_blob(self, path: str, sha256: str, size: int,
                         progress: Progress | None = None) -> tuple[int, str, Path]:
        """Like fetch_blob, but leave the verified file under a name of its own in the partial
        directory: (size, sha256, path); put it in place later with install()."""
        got = await self._from_static(path, None, (sha256, size), 0o644, progress)
        if got is not None:
            return got
        return await self._fetch(f"/api/v3/ha/blobs/{path}", None, sha256, 0o644, progress)

    async def _from_static(self, path: str, dest: Path | None, want: tuple[str, int],
                           mode: int, progress: Progress | None) -> tuple[int, str, Path] | None:
        """The blob from the static port, or None when it must come over the API instead:
        no static port, not a file it serves, or not the version `want` (sha256, size) there
        (changed or deleted since: the API says what is current)."""
        pool = self.static
        url = storage.static_url(path) if pool is not None and self._static_usable else None
        if not (url and want[0]):  # job logs have no sha256 to check plain-HTTP bytes against
            return None
        counted = _Counted(progress) if progress else None
        try:
            return await self._fetch_once(url, dest, want[0], mode, counted, pool, want[1])
        except (_Corrupt, Gone, PoolClosed, TransferError):
            pass  # another version or none there, or an error status: the API has it
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and e.errno in LOCAL_ERRNOS:
                raise  # our disk, not the port: the API would fail the same way
            if self._static_usable and pool is self.static:
                self._static_usable = False
                log.warning("the active's static port %s:%d failed (%s: %s); fetching files "
                            "over the API port this session", pool.host, pool.port,
                            type(e).__name__, e)
        if counted:
            progress.add(-counted.added)  # fetched again over the API
        return None

    async def install(self, staged: Path, dest: Path, mode: int) -> None:
        """Put a staged file in place at a disk path (a blob's: BlobFiles.install does it by
        blob path)."""
        def run():
            dest.parent.mkdir(parents=True, exist_ok=True)
            storage.place(staged, dest, mode)
        await trio.to_thread.run_sync(run)

    async def _fetch(self, url: str, dest: Path | None, sha256: str, mode: int,
                     progress: Progress | None) -> tuple[int, str, Path]:
        for attempt in range(2):
            try:
                return await self._fetch_once(url, dest, sha256, mode, progress)
            except _Corrupt:
                if attempt:
                    raise TransferError(f"{url}: sha256 mismatch twice") from None
                log.warning("%s: sha256 mismatch after resume; fetching it whole again", url)
        raise AssertionError("unreachable")

    async def _fetch_once(self, url, dest: Path | None, sha256: str, mode: int, progress,
                          static: Pool | None = None, size: int = 0) -> tuple[int, str, Path]:
        """One download over the API (`static` None) or from the static port, where only a
        response announcing `size` bytes with this sha256 is read, and only those bytes
        are taken."""
        partial = self.partial_dir / (sha256 or hashlib.sha256(url.encode()).hexdigest())
        stop = threading.Event()
        try:
            # Abandoned on cancel: the thread sees `stop` at its next read (READ_TIMEOUT at
            # most) and leaves its partial file to be resumed; its claim on the partial file
            # keeps a successor off it until then.
            return await trio.to_thread.run_sync(
                self._fetch_thread, static or self.client, url, dest, partial, sha256, size,
                mode, progress, stop, abandon_on_cancel=True)
        except trio.Cancelled:
            with _INSTALL:  # µs at most: a thread inside holds it for chmod + rename
                stop.set()
            raise

    def _fetch_thread(self, *args) -> tuple[int, str, Path]:
        # Counted by the thread itself: one that never started (cancelled while waiting for a
        # worker) must not keep aclose() from closing the client.
        with self._count_lock:
            self._threads += 1
        try:
            return self._fetch_blocking(*args)
        finally:
            self._thread_ends()

    def _fetch_blocking(self, pool: Pool, url: str, dest: Path | None, partial: Path,
                        sha256: str, size: int, mode: int, progress, stop: threading.Event
                        ) -> tuple[int, str, Path]:
        with _PARTIALS.held(partial):
            partial.parent.mkdir(parents=True, exist_ok=True)
            hasher, claimed = self._download(pool, url, partial, sha256, size, progress, stop)
            got = hasher.hexdigest()
            want = claimed or sha256  # job logs carry no sha256: TLS alone vouches for them
            if want and got != want:
                partial.unlink(missing_ok=True)
                raise _Corrupt()
            size = partial.stat().st_size
            if stop.is_set():  # given up on: leave the partial file to be resumed
                raise Cancelled()
            if dest is None:  # staged: out of the way of a fetch of the same bytes
                staged = partial.with_name(f"{partial.name}.{uuid.uuid4().hex}.staged")
                os.replace(partial, staged)
                return size, got, staged
            dest.parent.mkdir(parents=True, exist_ok=True)
            with _INSTALL:
                if stop.is_set():
                    raise Cancelled()
                storage.place(partial, dest, mode, sync=False)  # fsync outside the lock
            fsync_dir(dest.parent)
            return size, got, dest

    def _download(self, pool: Pool, url: str, partial: Path, sha256: str, size: int,
                  progress, stop: threading.Event):
        """The rest of the partial file from `url`: (a sha256 hasher fed the whole file, the
        sha256 the active claims for it over TLS, if any). When the size is known (the
        static route), a partial file that long, left by a fetch killed before its rename,
        is checked as it is, without a request."""
        offset = partial.stat().st_size if partial.exists() else 0
        hasher = hashlib.sha256()
        if size and offset > size:
            partial.unlink()
            offset = 0
        if offset and partial not in self._resumed:  # once per file, whichever port serves it
            self._resumed.add(partial)
            log.info("resuming %s: %.1f MiB of it already here%s", url,
                     offset / 2**20, f" (of {size / 2**20:.1f} MiB)" if size else "")
        if size and offset == size:
            _count_held(partial, offset, hasher, progress)
            return hasher, ""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with pool.get(url, headers) as resp:
            if resp.status not in (200, 206):
                text = resp.read(4096).decode("utf-8", "replace")
                if pool is self.client:  # not from the static port: no endless body
                    resp.read()  # the rest: the connection can be used again
                if resp.status == 404:
                    raise Gone(url)
                if resp.status == 416:  # our partial is longer than the file: restart
                    partial.unlink(missing_ok=True)
                    raise _Corrupt()
                raise TransferError(f"GET {url}: {resp.status} {text[:200]}")
            # A newer version's sha256, vouched for by the active over TLS only.
            claimed = resp.getheader("X-DRP-SHA256SUM", "") if pool is self.client else ""
            if pool is not self.client:
                _check_announced(resp, sha256, size, offset)
            if resp.status == 200:
                offset = 0
            elif not resp.getheader("Content-Range", "").startswith(f"bytes {offset}-"):
                partial.unlink(missing_ok=True)  # not the rest of our partial: restart
                raise _Corrupt()
            _count_held(partial, offset, hasher, progress)  # resumed: what we hold counts
            _receive(resp, partial, offset, hasher, progress, stop)
        return hasher, claimed


def _count_held(partial: Path, offset: int, hasher, progress) -> None:
    """The first `offset` bytes of the partial file, already held: hashed and counted."""
    if offset:
        with open(partial, "rb") as f:
            hash_existing(f.fileno(), hasher)
        if progress:
            progress.add(offset)


def _receive(resp, partial: Path, offset: int, hasher, progress: Progress | None,
             stop: threading.Event) -> None:
    """The response body appended to (or, from offset 0, written as) the partial file: read
    STEP bytes at a time (a fetch given up on notices soon, even on a slow link), hashed and
    written a CHUNK at a time. A body cut short raises and keeps the partial file."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(partial, "ab" if offset else "wb") as f:
        while True:
            filled = 0
            while filled < CHUNK:
                if stop.is_set():
                    raise Cancelled()
                n = resp.readinto(view[filled:filled + STEP])
                if not n:
                    break
                filled += n
            if filled:
                hasher.update(view[:filled])
                f.write(view[:filled])
                CATCHUP_BYTES.inc(filled)
                if progress:
                    progress.add(filled)
            if filled < CHUNK:
                break
        f.flush()
        os.fsync(f.fileno())
    if resp.length:  # http.client's readinto returns 0 when the peer closed early
        raise TransferError(f"the active closed the connection with {resp.length} bytes of "
                            "the file still to come; the download resumes from here")


class _Corrupt(Exception):
    pass


class _NotThatVersion(TransferError):
    """The static port announces other bytes than the version asked for."""


def _check_announced(resp, sha256: str, size: int, offset: int) -> None:
    """Before reading a body from the static port: it must announce the version asked for
    (its X-DRP-SHA256SUM, which plain HTTP does not make true: the bytes are hashed all the
    same) and exactly its length, so neither a changed file nor a forged endless body is
    read at all."""
    announced = resp.getheader("X-DRP-SHA256SUM", "")
    length = resp.length  # Content-Length (None without one)
    if resp.status == 206:
        whole = f"bytes {offset}-{size - 1}/{size}"
        ok = resp.getheader("Content-Range", "") == whole and length == size - offset
    else:
        ok = length == size
    if announced != sha256 or not ok:
        raise _NotThatVersion(f"the static port announces sha256 {announced[:16] or 'none'}, "
                              f"{length} bytes; want {sha256[:16]}, {size} bytes")


class _Counted:
    """Progress of one try, so that a try given up on can take back what it added."""

    def __init__(self, progress: Progress):
        self.progress, self.added = progress, 0

    def add(self, n: int) -> None:  # only the thread of that one fetch calls it
        self.added += n
        self.progress.add(n)
