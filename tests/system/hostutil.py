"""Host-side plumbing every part of the system-test harness shares (root only).

Where the harness keeps things (CACHE_DIR: rootfs and wheels, kept; RUN_DIR: one directory per
node, removed at teardown), running host tools, processes that die with the harness, the host's
mount table, deleting without ever following into a mount, and polling.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "systemd"
CACHE_DIR = Path(os.environ.get("DRP_SYSTEST_CACHE", "/var/cache/drp-system-test"))
RUN_DIR = Path(os.environ.get("DRP_SYSTEST_RUN", "/var/tmp/drp-system-test"))
NODES_DIR = RUN_DIR / "nodes"
LOGS_DIR = RUN_DIR / "logs"
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class HarnessUnavailable(RuntimeError):
    """This machine cannot run system tests (not root, a tool is missing, ...)."""


def tail(text, lines: int = 60) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":" + SBIN)


def run(argv: Sequence[str], *, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(list(map(str, argv)), timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))} exited {r.returncode}\n"
                           f"{tail(r.stdout, 30)}\n{tail(r.stderr, 30)}")
    return r


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child if the (thread that started the) harness dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_record() -> dict:
    return {"pid": os.getpid(), "start": proc_start_time(os.getpid())}


def owner_alive(rec: dict) -> bool:
    start = proc_start_time(int(rec.get("pid", 0)))
    return start is not None and (rec.get("start") is None or start == rec["start"])


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def host_mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount in the harness's (the host's) mount namespace."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        out.append((_unescape_mount(left.split()[4]), right.split()[0]))
    return out


def mounts_under(path: Path) -> list[str]:
    p = str(path).rstrip("/")
    return [m for m, _ in host_mounts() if m == p or m.startswith(p + "/")]


def safe_rmtree(path: Path) -> None:
    """rm -rf that never follows into a mount: unmount anything below first, stay on one fs."""
    path = Path(path)
    resolved = path.resolve()
    if not any(resolved.is_relative_to(base.resolve()) and resolved != base.resolve()
               for base in (RUN_DIR, CACHE_DIR)):
        raise ValueError(f"refusing to delete {path}: not below {RUN_DIR} or {CACHE_DIR}")
    for m in sorted(mounts_under(resolved), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, timeout=30)
    if left := mounts_under(resolved):
        raise RuntimeError(f"cannot delete {path}: still mounted: {left}")
    if os.path.lexists(resolved):
        subprocess.run(["rm", "-rf", "--one-file-system", str(resolved)], check=True,
                       capture_output=True, timeout=300)


def load_netns():
    """tests/netns.py (the team's Lab), imported whether or not tests/ is a package."""
    with contextlib.suppress(ImportError):
        import tests.netns as mod  # type: ignore[import-not-found]
        return mod
    if "drp_tests_netns" in sys.modules:
        return sys.modules["drp_tests_netns"]
    spec = importlib.util.spec_from_file_location("drp_tests_netns", REPO / "tests" / "netns.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["drp_tests_netns"] = mod
    spec.loader.exec_module(mod)
    return mod


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll predicate() until it returns something truthy (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
