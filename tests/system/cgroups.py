"""cgroup2 for the harness: every node gets its own subtree under CGROUP_GROUP on the host."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from .hostutil import HarnessUnavailable, host_mounts

CGROUP_GROUP = "drp-systest"


def cgroup2_mount() -> Path | None:
    for mnt, fstype in host_mounts():
        if fstype == "cgroup2":
            return Path(mnt)
    return None


def cgroup_base() -> Path:
    mnt = cgroup2_mount()
    if mnt is None:
        raise HarnessUnavailable("no cgroup2 hierarchy mounted on this host")
    return mnt / CGROUP_GROUP


def _cgroup_procs(cg: Path) -> list[int]:
    pids = []
    for procs in cg.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(x) for x in procs.read_text().split()]
    return pids


def cgroup_destroy(cg: Path, timeout: float = 10) -> None:
    """Kill every process in the cgroup subtree and remove it (deepest first)."""
    if not cg.is_dir():
        return
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            (cg / "cgroup.kill").write_text("1")  # Linux >= 5.14
        for pid in _cgroup_procs(cg):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        dirs = sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, cg]:
            with contextlib.suppress(OSError):
                d.rmdir()
        if not cg.exists():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroup {cg} still busy: pids {_cgroup_procs(cg)}")
        time.sleep(0.05)
