"""Fault injection for a real dr-provision process (put this directory on its PYTHONPATH).

While the file named by DRP_TEST_FAIL_WAL_FLUSH exists, fdatasync of a SQLite WAL file fails
with EIO, as on a dying disk. This kernel has no device-mapper (dm-flakey/dm-error), so a disk
that really fails cannot be made here; everything else in the process is the real thing.
"""
import errno
import os

_FLAG = os.environ.get("DRP_TEST_FAIL_WAL_FLUSH")
_real_fdatasync = os.fdatasync


def _fdatasync(fd: int) -> None:
    if _FLAG and os.path.exists(_FLAG) and os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
        raise OSError(errno.EIO, "Input/output error")
    _real_fdatasync(fd)


if _FLAG:
    os.fdatasync = _fdatasync
