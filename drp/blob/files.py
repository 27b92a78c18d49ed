"""The one owner of blob bytes under a base root, as apply_change is of rows: every rename into
place, unlink, append or cut of a blob file (API uploads, deletes and job-log appends, the
passive's replay and full catch-up) goes through BlobFiles. Synchronous: call it inside the
store's writer (so file changes happen in change-log order) or from a worker thread."""
from __future__ import annotations

import os
from pathlib import Path

from drp.blob import storage


class BlobFiles:
    def __init__(self, base_root: Path | str):
        self.base_root = Path(base_root)

    def target(self, path: str) -> Path:
        """Where blob `path` lives on disk (syntax checked, PathError 400)."""
        return storage.disk_path(self.base_root, path)

    def install(self, staged: storage.Staged | Path, path: str, mode: int = 0o644) -> None:
        """Rename staged (or fetched) bytes into place as blob `path` with `mode`; fsyncs the
        directory. PathError 409 when the target is a directory."""
        src = staged.path if isinstance(staged, storage.Staged) else Path(staged)
        target = self.target(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        storage.place(src, target, mode)

    def remove(self, path: str) -> bool:
        """Delete blob `path`'s file (fsyncs the directory); False when it was not there."""
        return storage.remove(self.target(path))

    def append(self, path: str, offset: int, data: bytes) -> None:
        """Job-log append: cut the file to `offset` (its recorded size), write data there,
        fsync."""
        storage.append_at(self.target(path), offset, data)  # makes the directory if need be

    def cut(self, path: str, size: int) -> None:
        """Drop a job log's bytes past `size` (left by a crash, never committed)."""
        os.truncate(self.target(path), size)
