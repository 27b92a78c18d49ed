"""Bulk bytes for catch-up: the snapshot and blob files, fetched from the active over HTTPS.

Downloads go to `<base-root>/ha/partial/<sha256>` first, so an interrupted transfer resumes with
an HTTP Range request after a restart; the whole file is verified against its sha256 before it is
renamed into place. Only finished, verified files ever appear under their real names.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import httpx
import trio

from drp.blob.storage import fsync_dir
from drp.metrics import CATCHUP_BYTES

log = logging.getLogger("drp.ha.transfer")
CHUNK = 1 << 20


class TransferError(Exception):
    pass


class Gone(TransferError):
    """The active no longer has the file (deleted after the snapshot); a later entry says so."""


def _hash_prefix(path: Path) -> "hashlib._Hash":
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


class Progress:
    """Counts catch-up work and reports it: a log line every `every` seconds and the STATUS."""

    def __init__(self, report, every: float = 5.0):
        self.report = report  # fn(text): sd_notify STATUS and /api/v3/info
        self.every = every
        self.bytes_total = self.bytes_done = 0
        self.objects_total = self.objects_done = 0
        self.started = time.monotonic()
        self.phase = "catching up"

    def line(self) -> tuple[str, str]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes_done / elapsed
        pct = 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 100.0
        left = self.bytes_total - self.bytes_done
        eta = f"{left / rate:.0f}s" if rate > 0 and left > 0 else "0s"
        gib = 1 << 30
        text = (f"{self.phase}: objects {self.objects_done}/{self.objects_total}, bytes "
                f"{self.bytes_done / gib:.2f}/{self.bytes_total / gib:.2f} GiB ({pct:.0f}%), "
                f"{rate / 1e6:.1f} MB/s, ETA {eta}")
        status = (f"passive: syncing {pct:.0f}% ({self.bytes_done / gib:.1f}/"
                  f"{self.bytes_total / gib:.1f} GiB), ETA {eta}")
        return text, status

    async def log_loop(self) -> None:
        while True:
            await trio.sleep(self.every)
            text, status = self.line()
            log.info("%s", text)
            self.report(status)


class Fetcher:
    """Authenticated HTTPS downloads from the active, resumable and sha256-verified."""

    def __init__(self, base_url: str, token: str, partial_dir: Path):
        self.partial_dir = partial_dir
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), verify=False,
                                      headers={"Authorization": f"Bearer {token}"},
                                      timeout=httpx.Timeout(60, connect=10))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self.http.aclose()

    async def fetch(self, url: str, dest: Path, sha256: str, mode: int = 0o644,
                    progress: Progress | None = None) -> tuple[int, str]:
        """Download url into dest; returns (size, sha256) of what the active sent. The active
        may send a newer version than `sha256` (it changed after the entry that asked for it);
        that is accepted when its own X-DRP-SHA256SUM header vouches for the bytes."""
        for attempt in range(2):
            try:
                return await self._fetch_once(url, dest, sha256, mode, progress)
            except _Corrupt:
                if attempt:
                    raise TransferError(f"{url}: sha256 mismatch twice") from None
                log.warning("%s: sha256 mismatch after resume; fetching it whole again", url)
        raise AssertionError("unreachable")

    async def _fetch_once(self, url, dest: Path, sha256: str, mode: int,
                          progress: Progress | None) -> tuple[int, str]:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        partial = self.partial_dir / (sha256 or hashlib.sha256(url.encode()).hexdigest())
        offset = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self.http.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 404:
                raise Gone(url)
            if resp.status_code == 416:  # our partial is longer than the file: start over
                partial.unlink(missing_ok=True)
                raise _Corrupt()
            if resp.status_code not in (200, 206):
                await resp.aread()
                raise TransferError(f"GET {url}: {resp.status_code} {resp.text[:200]}")
            claimed = resp.headers.get("X-DRP-SHA256SUM", "")
            if resp.status_code == 200:
                offset = 0
            hasher = await trio.to_thread.run_sync(_hash_prefix, partial) if offset else hashlib.sha256()
            if progress and offset:
                progress.bytes_done += offset
            f = await trio.open_file(partial, "ab" if offset else "wb")
            try:
                async for chunk in resp.aiter_bytes(CHUNK):
                    hasher.update(chunk)
                    await f.write(chunk)
                    CATCHUP_BYTES.inc(len(chunk))
                    if progress:
                        progress.bytes_done += len(chunk)
                await f.flush()
                await trio.to_thread.run_sync(os.fsync, f.wrapped.fileno())
            finally:
                await f.aclose()
        got = hasher.hexdigest()
        want = claimed or sha256  # job logs carry no sha256: TLS alone vouches for them
        if want and got != want:
            partial.unlink(missing_ok=True)
            raise _Corrupt()
        size = partial.stat().st_size

        def install():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(partial, mode)
            os.replace(partial, dest)
            fsync_dir(dest.parent)
        await trio.to_thread.run_sync(install)
        return size, got


class _Corrupt(Exception):
    pass
