"""Sweeping up after crashed runs: what a killed harness left behind (nodes, cgroups, netns, builds)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time

from .cache import CACHE_LOCK, clean_stale_builds, locked
from .cgroups import cgroup_base, cgroup_destroy
from .hostutil import (CACHE_DIR, LOGS_DIR, NODES_DIR, HarnessUnavailable, load_netns, owner_alive,
                       proc_start_time, safe_rmtree)

_cleaned_once = False


def cleanup_stale() -> list[str]:
    """Remove what crashed earlier runs left: node processes, cgroups, dirs, netns, half builds.

    Only things whose owning process is gone are touched, so concurrent runs are safe."""
    removed: list[str] = []
    NODES_DIR.mkdir(parents=True, exist_ok=True)
    for d in sorted(NODES_DIR.iterdir()):
        try:
            owner = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            owner = {}
            if time.time() - d.stat().st_mtime < 60:  # being created right now
                continue
        if owner and owner_alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            pids = json.loads((d / "pids.json").read_text())
            for pid in (pids.get("pid1"), pids.get("unshare")):
                if pid and proc_start_time(pid) == pids.get(f"{pid}"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(HarnessUnavailable):
            cgroup_destroy(cgroup_base() / d.name)
        safe_rmtree(d)
        removed.append(str(d))
    with contextlib.suppress(HarnessUnavailable, OSError):
        base = cgroup_base()
        for cg in base.iterdir() if base.is_dir() else ():
            m = re.search(r"-(\d+)-[0-9a-f]{6}$", cg.name)
            if cg.is_dir() and m and proc_start_time(int(m.group(1))) is None:
                cgroup_destroy(cg)
                removed.append(str(cg))
    with contextlib.suppress(Exception):
        removed += load_netns().cleanup_stale()
    if CACHE_DIR.is_dir():
        with contextlib.suppress(TimeoutError):
            with locked(CACHE_DIR / CACHE_LOCK, timeout=0):
                clean_stale_builds()
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    for old in sorted(LOGS_DIR.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)[40:]:
        old.unlink(missing_ok=True)
    return removed


def cleanup_stale_once() -> None:
    """cleanup_stale() before the first node of this process."""
    global _cleaned_once
    if not _cleaned_once:
        cleanup_stale()
        _cleaned_once = True
