"""Blob bytes on disk: path mapping and safety, atomic streamed writes, job-log appends, reads.

No HTTP here: the API, the static file server and the HA replica all use these helpers.

Blob paths are relative to the base root and name their area first:
    files/<path>     -> <base-root>/tftpboot/files/<path>
    isos/<name>      -> <base-root>/tftpboot/isos/<name>
    plugins/<name>   -> <base-root>/plugins/<name>        (mode 0755)
    job-logs/<uuid>  -> <base-root>/job-logs/<uuid>
Writes go to a temp file in the target directory (hashing as they go), are fsynced, and are
renamed into place by `place` (through drp.blob.files.BlobFiles) — which the caller runs inside the store's writer, so the order
of renames is the order of the change log. A crash or a cut-off transfer leaves at most a temp
file, which `sweep_temps` removes at start-up.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator

import trio

from drp.durable import fsync_dir

log = logging.getLogger("drp.blob")

CHUNK = 1 << 20  # bytes per disk read/write round trip to a worker thread
TEMP_MARK = ".drp-tmp-"
AREAS: dict[str, tuple[str, ...]] = {
    "files": ("tftpboot", "files"),
    "isos": ("tftpboot", "isos"),
    "plugins": ("plugins",),
    "job-logs": ("job-logs",),
}
FLAT_AREAS = {"isos", "plugins", "job-logs"}  # one path segment below the area root
MODES = {"plugins": 0o755}


class PathError(ValueError):
    """A path a client may not use: code 400 (malformed) or 403 (leaves the root)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ---- paths ------------------------------------------------------------------------------------
def clean_relpath(raw: str, *, flat: bool = False, allow_empty: bool = False) -> str:
    """A client's relative path as 'a/b/c', or PathError(400): no NUL, no absolute path, no '.',
    '..' or empty segments, nothing that looks like one of our temp files."""
    if "\x00" in raw:
        raise PathError(400, "path may not contain NUL bytes")
    if raw.startswith("/"):
        raise PathError(400, f"absolute paths are not allowed: {raw!r}")
    if raw in ("", "."):
        if allow_empty:
            return ""
        raise PathError(400, "empty path")
    parts = raw.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise PathError(400, f"path {raw!r} has an empty, '.' or '..' segment")
        if TEMP_MARK in part:
            raise PathError(400, f"path {raw!r} uses the reserved marker {TEMP_MARK!r}")
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            raise PathError(400, "path segment longer than 255 bytes")
    if flat and len(parts) != 1:
        raise PathError(400, f"name {raw!r} may not contain '/'")
    return "/".join(parts)


def blob_path(area: str, rel: str) -> str:
    """The blob path (the key in the blobs table and the change log) for a client path."""
    if area not in AREAS:
        raise PathError(400, f"unknown blob area {area!r}")
    return f"{area}/{clean_relpath(rel, flat=area in FLAT_AREAS)}"


def split_blob_path(path: str) -> tuple[str, str]:
    area, _, rel = path.partition("/")
    if area not in AREAS:
        raise PathError(400, f"blob path {path!r} names no known area")
    return area, clean_relpath(rel, flat=area in FLAT_AREAS)


def area_root(base_root: Path | str, area: str) -> Path:
    return Path(base_root, *AREAS[area])


# The areas the static file server serves (it serves tftpboot/), by their directory there: one
# path segment each (files, isos), which is what static_blob matches.
STATIC_AREAS = {where[1]: area for area, where in AREAS.items() if where[0] == "tftpboot"}
assert all(len(AREAS[area]) == 2 for area in STATIC_AREAS.values())


def static_url(path: str) -> str | None:
    """The URL path the static file server serves blob `path` at (files/x -> /files/x), or
    None for a blob it does not serve (plugins, job logs)."""
    area, rel = split_blob_path(path)
    where = AREAS[area]
    if where[0] != "tftpboot":
        return None
    return "/" + "/".join((*where[1:], rel))


def static_blob(rel: str) -> str | None:
    """The inverse of static_url: the blob path of a tftpboot-relative path (files/x,
    isos/x), or None when it names no blob (another directory, an invalid path)."""
    top, _, below = rel.partition("/")
    area = STATIC_AREAS.get(top)
    if area is None or not below:
        return None
    try:
        return blob_path(area, below)
    except PathError:
        return None


def disk_path(base_root: Path | str, path: str) -> Path:
    """Where blob `path` (e.g. 'files/boot/x', 'isos/a.iso') lives under `base_root`.
    Validates the path syntactically (PathError 400); see `safe_path` for symlinks."""
    area, rel = split_blob_path(path)
    return area_root(base_root, area).joinpath(*rel.split("/"))


def _inside(root_real: str, candidate: str) -> bool:
    return candidate == root_real or candidate.startswith(root_real.rstrip("/") + "/")


def check_inside(root: Path, target: Path) -> Path:
    """PathError(403) unless `target`, with every symlink resolved, stays inside `root`.
    A target that does not exist yet is judged by its nearest existing ancestor."""
    root_real = os.path.realpath(root)
    probe = target
    while not os.path.lexists(probe) and probe != root and probe != probe.parent:
        probe = probe.parent
    if not _inside(root_real, os.path.realpath(probe)):
        raise PathError(403, f"{target.relative_to(root)} leads outside {root.name}/ "
                             "through a symlink")
    return target


def safe_path(base_root: Path | str, path: str) -> Path:
    """disk_path + the symlink check against the blob's area root."""
    area, _ = split_blob_path(path)
    return check_inside(area_root(base_root, area), disk_path(base_root, path))


def prepare_target(base_root: Path | str, path: str) -> Path:
    """Make the directories a blob will live in (inside its area root only) and return its
    disk path. PathError 400/403 for bad paths, 409 when a parent is a file or the target
    is a directory."""
    area, _ = split_blob_path(path)
    root = area_root(base_root, area)
    target = safe_path(base_root, path)
    root.mkdir(parents=True, exist_ok=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PathError(409, f"a parent of {path} is a file, not a directory") from None
    check_inside(root, target)  # again, now that the directories exist
    if target.is_dir():
        raise PathError(409, f"{path} is a directory")
    return target


def is_temp(name: str) -> bool:
    return TEMP_MARK in name


# ---- writing ----------------------------------------------------------------------------------
@dataclass
class Staged:
    """Bytes made durable in a temp file next to their target, not yet renamed into place."""
    path: Path
    size: int
    sha256: str


def temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name[:180]}{TEMP_MARK}{secrets.token_hex(6)}")


def _write_all(fd: int, hasher, pieces: list[bytes]) -> int:
    for piece in pieces:
        hasher.update(piece)
    views = [memoryview(p) for p in pieces if p]
    written = sum(len(v) for v in views)
    while views:
        n = os.writev(fd, views[:512])
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]
    return written


def hash_existing(fd: int, hasher) -> int:
    """Feed the rest of an open file to `hasher`; returns the bytes read."""
    size = 0
    while chunk := os.read(fd, CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return size


async def stage(target: Path, chunks: AsyncIterable[bytes], *,
                resume: Path | None = None) -> Staged:
    """Stream `chunks` into a temp file beside `target` while hashing, then fsync. Memory use
    is one CHUNK whatever the size. On any error or cancellation the temp file is removed.
    `resume`: an earlier partial temp file to continue (its bytes are hashed first)."""
    tmp = resume if resume is not None and resume.exists() else temp_path(target)
    flags = os.O_RDWR | os.O_CREAT | (os.O_APPEND if tmp == resume else os.O_EXCL)
    fd = await trio.to_thread.run_sync(os.open, tmp, flags, 0o600)
    hasher = hashlib.sha256()
    try:
        size = await trio.to_thread.run_sync(hash_existing, fd, hasher) if tmp == resume else 0
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in chunks:
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= CHUNK:
                size += await trio.to_thread.run_sync(_write_all, fd, hasher, pending)
                pending, pending_size = [], 0
        if pending:
            size += await trio.to_thread.run_sync(_write_all, fd, hasher, pending)
        await trio.to_thread.run_sync(os.fsync, fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return Staged(tmp, size, hasher.hexdigest())


# place, remove and append_at change files in place: drp.blob.files.BlobFiles (the one owner
# of blob bytes under a base root) and the HA fetcher call them; nothing else should.
def place(src: Path, target: Path, mode: int = 0o644, *, sync: bool = True) -> None:
    """Rename src (made durable beside target) into place and fsync the directory (sync=False:
    the caller does, e.g. outside a lock). Synchronous: call it inside the store's writer,
    just before recording the change."""
    os.chmod(src, mode)
    try:
        os.replace(src, target)
    except IsADirectoryError:
        raise PathError(409, f"{target.name} is a directory") from None
    if sync:
        fsync_dir(target.parent)


def discard(staged: Staged | Path | None) -> None:
    """Remove a staged temp file if it is still there (after install it is not)."""
    if staged is not None:
        Path(getattr(staged, "path", staged)).unlink(missing_ok=True)


def remove(target: Path) -> bool:
    """Delete a blob's file and fsync its directory; False when it was not there."""
    try:
        os.unlink(target)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise PathError(409, f"{target.name} is a directory") from None
    fsync_dir(target.parent)
    return True


def append_at(target: Path, offset: int, data: bytes) -> None:
    """Job-log append: cut the file to `offset` (the recorded size, dropping a torn tail left by
    a crash), write `data` there and fsync. Synchronous: call it inside the writer."""
    target.parent.mkdir(parents=True, exist_ok=True)
    created = not target.exists()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        have = os.fstat(fd).st_size
        if have < offset:
            log.warning("%s holds %d bytes but %d are recorded; zero-filling", target, have,
                        offset)
        os.ftruncate(fd, offset)
        view = memoryview(data)
        pos = offset
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(target.parent)


def sweep_temps(base_root: Path | str, older_than: float | None = None) -> int:
    """Remove temp files a crash or a kill left behind; with `older_than` (a time.time()), only
    those last written before it, so transfers already running are spared. Returns a count."""
    removed = 0
    for area in AREAS:
        root = area_root(base_root, area)
        if not root.is_dir():
            continue
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                if not is_temp(name):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    if older_than is None or os.lstat(full).st_mtime < older_than:
                        os.unlink(full)
                        removed += 1
                except FileNotFoundError:
                    pass
    return removed


# ---- reading ----------------------------------------------------------------------------------
def file_sha256(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file on disk."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        size = hash_existing(f.fileno(), hasher)
    return size, hasher.hexdigest()


def open_regular(path: Path) -> tuple[int, int]:
    """(fd, size) of a regular file; FileNotFoundError for anything else (directories too)."""
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileNotFoundError(str(path))
    return fd, st.st_size


async def read_range(fd: int, start: int, length: int,
                     chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """Yield `length` bytes from `start` of an open fd (pread in worker threads). Stops early
    (without error) if the file is shorter."""
    pos, end = start, start + length
    while pos < end:
        data = await trio.to_thread.run_sync(os.pread, fd, min(chunk, end - pos), pos)
        if not data:
            return
        pos += len(data)
        yield data
