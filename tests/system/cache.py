"""The harness's build cache under CACHE_DIR: entries built once, atomically, under a lock.

An entry (a rootfs, a wheelhouse) is complete when it holds MARKER; it is built in a
CACHE_DIR/.build-*-PID directory and renamed into place only once complete, so a killed build
never leaves a usable-looking cache, and clean_stale_builds() removes what it left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterator

from .hostutil import CACHE_DIR, proc_start_time, safe_rmtree

MARKER = ".drp-complete"
CACHE_LOCK = ".lock"  # held to build a rootfs, and to remove stale half-builds


def content_hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def locked(lock_path: Path, timeout: float = 900) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout}s for {lock_path}")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(final: Path, lock_name: str, build: Callable[[], None]) -> Path:
    """`final` once complete (it holds MARKER); when it is not, build() makes it under the lock
    CACHE_DIR/lock_name.  Checked again once locked: another run may have built it meanwhile."""
    if (final / MARKER).is_file():
        return final
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with locked(CACHE_DIR / lock_name):
        if not (final / MARKER).is_file():
            build()
    return final


def clean_stale_builds() -> None:
    """Remove half-built .build-* dirs whose builder is gone (caller holds CACHE_LOCK)."""
    for d in CACHE_DIR.glob(".build-*"):
        m = re.search(r"-(\d+)(?:\.log)?$", d.name)
        if m and proc_start_time(int(m.group(1))) is not None and int(m.group(1)) != os.getpid():
            continue
        if d.is_dir() and not d.is_symlink():
            safe_rmtree(d)
        else:
            d.unlink(missing_ok=True)
