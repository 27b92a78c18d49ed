"""Failures of the disk or of a path that are not bugs: answered with dr-provision's error body
and a reason instead of a 500 and a traceback.

- ENOSPC/EDQUOT (an upload's bytes, a job log, a rename) and SQLite's "database or disk is
  full" (SQLITE_FULL: the transaction was rolled back, nothing of it holds) -> 507 Insufficient
  Storage, Type StorageError. The node keeps serving: nothing was committed, unlike a failed
  flush after COMMIT (drp.store.tx.NotDurable), which stops it.
- ENAMETOOLONG (a path longer than the OS allows) -> 400, as the static port answers.
"""
from __future__ import annotations

import errno
import logging
import sqlite3
import time

from drp.api.errors import ApiError

log = logging.getLogger("drp.api")

_FULL = {errno.ENOSPC, errno.EDQUOT}
LOG_EVERY = 10.0  # seconds between "disk full" warnings: a full disk fails every write


class _Throttled:
    def __init__(self):
        self.last = float("-inf")
        self.suppressed = 0

    def warn(self, fmt: str, *args) -> None:
        now = time.monotonic()
        if now - self.last < LOG_EVERY:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last warning)" if self.suppressed else ""
        self.last, self.suppressed = now, 0
        log.warning(fmt + more, *args)


_full_warning = _Throttled()


def _leaves(err: BaseException):
    if isinstance(err, BaseExceptionGroup):
        for inner in err.exceptions:
            yield from _leaves(inner)
    else:
        yield err


def _is_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in _FULL
    if isinstance(err, sqlite3.OperationalError):
        return (getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "disk is full" in str(err))
    return False


def api_error_for(err: BaseException, method: str, path: str) -> ApiError | None:
    """The ApiError for `err` when it is a full disk or a path too long, else None."""
    parts = path.split("/")
    model = parts[3] if len(parts) > 3 and path.startswith("/api/v3/") else ""
    for leaf in _leaves(err):
        if _is_full(leaf):
            reason = leaf.strerror if isinstance(leaf, OSError) else str(leaf)
            _full_warning.warn("%s %s: disk full (%s); refused with 507", method, path[:200],
                               reason)
            return ApiError(507, f"insufficient storage: {reason}; nothing was stored. Free "
                            "space under the base root and retry", model=model,
                            type_="StorageError")
        if isinstance(leaf, OSError) and leaf.errno == errno.ENAMETOOLONG:
            return ApiError(400, "path is longer than the operating system allows",
                            model=model)
    return None
