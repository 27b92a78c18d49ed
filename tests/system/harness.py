"""Real systemd in a network namespace: the harness for drp's system tests (root only).

A "node" is a Debian bookworm root filesystem booted with its own systemd as PID 1:

    ip netns exec NS  unshare --pid --fork --kill-child --mount --uts --ipc --cgroup
        sh boot.sh    # root = overlay(cached rootfs, tmpfs upper); proc, sys (ro), cgroup2,
                      # /dev (tmpfs + a few nodes, console = a pty), /run, /tmp
            exec setpriv (no CAP_SYS_MODULE/TIME/RAWIO) chroot ROOT /lib/systemd/systemd --system

so every mount lives in the node's private mount namespace (nothing ever appears in the host's
mount table), what the node writes lives in a tmpfs that vanishes with it, and killing the node's
PID 1 takes every process of the node with it.  Each node gets its own cgroup2 subtree (as its
cgroup namespace root), so two nodes' systemds never see or kill each other's services.  If the
harness process dies, PR_SET_PDEATHSIG and `unshare --kill-child` take its nodes down with it.

    rootfs = ensure_rootfs()            # debootstrap once, cached in /var/cache/drp-system-test
    wheels = build_wheelhouse()         # pip wheel of this repo + its dependencies, cached
    with Lab() as lab:                  # tests/netns.py: namespaces on a bridge, 198.18.0.0/15
        host = lab.add_host("a", "198.18.0.11/24")
        with SystemdNode("a", netns=host.ns, rootfs=rootfs) as node:
            install_drp(node, wheels, ha=HASettings(...))
            node.systemctl("start", "dr-provision", check=True)
            print(node.journalctl("-u", "dr-provision"))

Everything the harness makes lives under CACHE_DIR (rootfs, wheels; kept) and RUN_DIR (one
directory per node; removed at teardown), and in cgroup2 under "drp-systest/".  `cleanup_stale()`
removes what a killed earlier run left behind; it runs before the first node of every process.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "systemd"
CACHE_DIR = Path(os.environ.get("DRP_SYSTEST_CACHE", "/var/cache/drp-system-test"))
RUN_DIR = Path(os.environ.get("DRP_SYSTEST_RUN", "/var/tmp/drp-system-test"))
NODES_DIR = RUN_DIR / "nodes"
LOGS_DIR = RUN_DIR / "logs"
CGROUP_GROUP = "drp-systest"

SUITE = "bookworm"
MIRROR = os.environ.get("DRP_SYSTEST_MIRROR", "http://deb.debian.org/debian")
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "iproute2",
                   "jq", "procps")
# bump when _configure_rootfs or the boot recipe needs a fresh rootfs
ROOTFS_RECIPE = "1"
# units that only make noise (or network traffic attempts) in a test node
ROOTFS_MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "fstrim.timer",
                       "e2scrub_all.timer", "e2scrub_reap.service", "systemd-udevd.service",
                       "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
                       "systemd-udev-trigger.service", "systemd-udev-settle.service")

NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NODE_ENV = {"PATH": NODE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
            "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "USER": "root", "LOGNAME": "root"}
TMPFS_SIZE = os.environ.get("DRP_SYSTEST_TMPFS_SIZE", "4g")  # per node, for what it writes
CONTAINER_NAME = "drp-systest"  # the $container value systemd sees (systemd-detect-virt)
_MARKER = ".drp-complete"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class HarnessUnavailable(RuntimeError):
    """This machine cannot run system tests (not root, a tool is missing, ...)."""


class NodeError(RuntimeError):
    """A node failed to boot or misbehaved; the message carries its console/boot log tail."""


class NodeCommandError(AssertionError):
    """A command inside a node exited non-zero (check=True)."""

    def __init__(self, node: str, cmd, result: subprocess.CompletedProcess):
        self.result = result
        shown = cmd if isinstance(cmd, str) else shlex.join(map(str, cmd))
        super().__init__(f"[{node}] {shown} exited {result.returncode}\n"
                         f"--- stdout ---\n{_tail(result.stdout)}\n--- stderr ---\n{_tail(result.stderr)}")


def _tail(text, lines: int = 60) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


# --------------------------------------------------------------------------- host helpers

def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":" + _SBIN)


def _run(argv: Sequence[str], *, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(list(map(str, argv)), timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))} exited {r.returncode}\n"
                           f"{_tail(r.stdout, 30)}\n{_tail(r.stderr, 30)}")
    return r


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child if the (thread that started the) harness dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner_record() -> dict:
    return {"pid": os.getpid(), "start": _proc_start_time(os.getpid())}


def _owner_alive(rec: dict) -> bool:
    start = _proc_start_time(int(rec.get("pid", 0)))
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


def _safe_rmtree(path: Path) -> None:
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


@contextlib.contextmanager
def _locked(lock_path: Path, timeout: float = 900) -> Iterator[None]:
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


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- cgroup2

def _cgroup2_mount() -> Path | None:
    for mnt, fstype in host_mounts():
        if fstype == "cgroup2":
            return Path(mnt)
    return None


def _cgroup_base() -> Path:
    mnt = _cgroup2_mount()
    if mnt is None:
        raise HarnessUnavailable("no cgroup2 hierarchy mounted on this host")
    return mnt / CGROUP_GROUP


def _cgroup_procs(cg: Path) -> list[int]:
    pids = []
    for procs in cg.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(x) for x in procs.read_text().split()]
    return pids


def _cgroup_destroy(cg: Path, timeout: float = 10) -> None:
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


# --------------------------------------------------------------------------- prerequisites

def ensure_debootstrap() -> str:
    """Path of debootstrap, installing the Debian package when it is missing."""
    if path := _which("debootstrap"):
        return path
    if not _which("apt-get"):
        raise HarnessUnavailable("debootstrap is missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"]
    r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 or not (path := _which("debootstrap")):
        raise HarnessUnavailable(f"cannot install debootstrap with apt-get: {_tail(r.stderr, 5)}")
    return path


def skip_reason() -> str | None:
    """Why system tests cannot run here (for pytest.skip), or None when they can."""
    if sys.platform != "linux":
        return "system tests need Linux"
    if os.geteuid() != 0:
        return "system tests need root (network namespaces, mounts, systemd as PID 1)"
    missing = [t for t in ("ip", "unshare", "nsenter", "setpriv", "chroot", "mount", "umount", "mknod", "tar")
               if not _which(t)]
    if missing:
        return f"system tests need {', '.join(missing)}"
    if _cgroup2_mount() is None:
        return "system tests need a cgroup2 hierarchy on the host"
    if not (CACHE_DIR / f"rootfs-{rootfs_key()}" / _MARKER).is_file():
        try:
            ensure_debootstrap()
        except HarnessUnavailable as e:
            return str(e)
    return None


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


# --------------------------------------------------------------------------- rootfs

def rootfs_key(packages: Sequence[str] = ROOTFS_PACKAGES) -> str:
    return _hash(SUITE, MIRROR, ",".join(sorted(packages)), ROOTFS_RECIPE, ROOTFS_MASKED_UNITS)


def _configure_rootfs(root: Path) -> None:
    """Offline tweaks to a fresh debootstrap (no chroot needed)."""
    units = root / "etc/systemd/system"
    for unit in ROOTFS_MASKED_UNITS:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # the journal should survive `systemctl restart systemd-journald` and be readable afterwards
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    # the rootfs is copied for every node: keep it small
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / leftover).glob("*"):
            if p.is_file():
                p.unlink()
    (root / "etc/machine-id").write_text("")  # every node writes its own at boot
    (root / "etc/hostname").write_text("node\n")


def _clean_stale_builds() -> None:
    """Remove half-built .build-* dirs whose builder is gone (caller holds the cache lock)."""
    for d in CACHE_DIR.glob(".build-*"):
        m = re.search(r"-(\d+)(?:\.log)?$", d.name)
        if m and _proc_start_time(int(m.group(1))) is not None and int(m.group(1)) != os.getpid():
            continue
        if d.is_dir() and not d.is_symlink():
            _safe_rmtree(d)
        else:
            d.unlink(missing_ok=True)


def ensure_rootfs(packages: Sequence[str] = ROOTFS_PACKAGES, *, log=print) -> Path:
    """The cached debootstrap rootfs for `packages`, built (atomically) when missing.

    Built in CACHE_DIR/.build-KEY-PID under a lock, inside its own pid+mount namespace (its mounts
    vanish with it, and it dies with the harness), and renamed to CACHE_DIR/rootfs-KEY only once
    complete: a killed build never leaves a usable-looking cache."""
    final = CACHE_DIR / f"rootfs-{rootfs_key(packages)}"
    if (final / _MARKER).is_file():
        return final
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE_DIR / ".lock"):
        if (final / _MARKER).is_file():
            return final
        _clean_stale_builds()
        debootstrap = ensure_debootstrap()
        tmp = CACHE_DIR / f".build-{final.name}-{os.getpid()}"
        _safe_rmtree(tmp)
        t0 = time.monotonic()
        log(f"building {final} with debootstrap (one-time; ~1-2 min)")
        argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
                "--", debootstrap, "--variant=minbase", f"--include={','.join(packages)}",
                SUITE, str(tmp), MIRROR]
        logfile = CACHE_DIR / f"{tmp.name}.log"
        with open(logfile, "w") as lf:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                 preexec_fn=_die_with_parent, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            try:
                rc = p.wait(timeout=1200)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if rc != 0:
            text = logfile.read_text(errors="replace")
            _safe_rmtree(tmp)
            raise RuntimeError(f"debootstrap failed ({rc}); see {logfile}\n{_tail(text, 30)}")
        _configure_rootfs(tmp)
        (tmp / _MARKER).write_text(json.dumps({"packages": list(packages), "suite": SUITE,
                                               "mirror": MIRROR, "seconds": round(time.monotonic() - t0, 1),
                                               "built": time.strftime("%F %T")}) + "\n")
        if final.exists():  # only possible without the marker (e.g. by hand): replace it
            _safe_rmtree(final)
        os.rename(tmp, final)
        logfile.unlink(missing_ok=True)
        log(f"built {final} in {time.monotonic() - t0:.0f}s")
    return final


# --------------------------------------------------------------------------- wheelhouse

def _source_files(repo: Path) -> list[Path]:
    names = ["pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in"]
    files = [repo / n for n in names if (repo / n).is_file()]
    files += [p for p in repo.glob("README*") if p.is_file()]
    files += [p for p in repo.glob("LICEN[CS]E*") if p.is_file()]
    files += sorted(p for p in (repo / "drp").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))
    return files


def build_wheelhouse(repo: Path = REPO, *, log=print) -> Path:
    """A directory of wheels (drp + all dependencies) for `pip install --no-index`, cached.

    The dependencies are cached by the hash of pyproject.toml, the drp wheel by the hash of the
    sources; both are built by the harness's own interpreter (CPython 3.11, manylinux wheels that
    Debian's python3.11 in the node installs).  Builds run on a copy of the sources, so the repo
    gets no build/ or *.egg-info from it."""
    files = _source_files(repo)
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    deps_key = _hash(pyver, (repo / "pyproject.toml").read_bytes())
    src_key = _hash(deps_key, *(f"{p.relative_to(repo)}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files))
    final = CACHE_DIR / f"wheelhouse-{src_key}"
    if (final / _MARKER).is_file():
        return final
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE_DIR / ".wheel-lock"):
        if (final / _MARKER).is_file():
            return final
        work = CACHE_DIR / f".build-wheels-{os.getpid()}"
        _safe_rmtree(work)
        snap = work / "src"
        for p in files:
            dst = snap / p.relative_to(repo)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
        deps = CACHE_DIR / f"wheeldeps-{deps_key}"
        if not (deps / _MARKER).is_file():
            t0 = time.monotonic()
            _run([*pip, "--wheel-dir", work / "deps", snap], timeout=900)
            for w in (work / "deps").glob("drp-*.whl"):
                w.unlink()
            (work / "deps" / _MARKER).write_text("")
            _safe_rmtree(deps)
            os.rename(work / "deps", deps)
            log(f"built dependency wheels {deps} in {time.monotonic() - t0:.0f}s")
        _run([*pip, "--no-deps", "--wheel-dir", work / "drp", snap], timeout=300)
        out = work / "out"
        out.mkdir()
        for w in [*deps.glob("*.whl"), *(work / "drp").glob("*.whl")]:
            os.link(w, out / w.name)
        (out / _MARKER).write_text("")
        _safe_rmtree(final)
        os.rename(out, final)
        _safe_rmtree(work)
        # keep the cache from growing without bound (older source snapshots)
        olds = sorted(CACHE_DIR.glob("wheelhouse-*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in olds[5:]:
            _safe_rmtree(old)
    return final


# --------------------------------------------------------------------------- node copies

_overlay_ok: bool | None = None


def overlay_supported() -> bool:
    """Can this kernel mount overlayfs with a tmpfs upper layer (as the nodes use it)?"""
    global _overlay_ok
    if _overlay_ok is None:
        NODES_DIR.mkdir(parents=True, exist_ok=True)
        probe = NODES_DIR / f".overlay-probe-{os.getpid()}"
        try:
            for d in ("lower", "rw", "merged"):
                (probe / d).mkdir(parents=True, exist_ok=True)
            (probe / "lower" / "f").write_text("x")
            script = (f"mount -t tmpfs tmpfs {probe}/rw && mkdir {probe}/rw/upper {probe}/rw/work && "
                      f"mount -t overlay overlay -o lowerdir={probe}/lower,upperdir={probe}/rw/upper,"
                      f"workdir={probe}/rw/work {probe}/merged && echo y > {probe}/merged/f && "
                      f"cat {probe}/merged/f")
            r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                               capture_output=True, text=True, timeout=30)
            _overlay_ok = r.returncode == 0 and r.stdout.strip() == "y"
        finally:
            _safe_rmtree(probe)
    return _overlay_ok


def copy_mode() -> str:
    """How a node gets its own root: "overlay" (the cached rootfs as the lower layer; the default
    when it works) or "copy" (cp -a of the rootfs); DRP_SYSTEST_COPY overrides.  Either way what
    the node writes lives in a tmpfs of its private mount namespace: it costs nothing to delete."""
    mode = os.environ.get("DRP_SYSTEST_COPY", "auto")
    if mode == "auto":
        return "overlay" if overlay_supported() else "copy"
    if mode not in ("overlay", "copy"):
        raise ValueError(f"DRP_SYSTEST_COPY={mode!r}: use overlay, copy or auto")
    return mode


# --------------------------------------------------------------------------- stale cleanup

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
        if owner and _owner_alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            pids = json.loads((d / "pids.json").read_text())
            for pid in (pids.get("pid1"), pids.get("unshare")):
                if pid and _proc_start_time(pid) == pids.get(f"{pid}"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(HarnessUnavailable):
            _cgroup_destroy(_cgroup_base() / d.name)
        _safe_rmtree(d)
        removed.append(str(d))
    with contextlib.suppress(HarnessUnavailable, OSError):
        base = _cgroup_base()
        for cg in base.iterdir() if base.is_dir() else ():
            m = re.search(r"-(\d+)-[0-9a-f]{6}$", cg.name)
            if cg.is_dir() and m and _proc_start_time(int(m.group(1))) is None:
                _cgroup_destroy(cg)
                removed.append(str(cg))
    with contextlib.suppress(Exception):
        removed += load_netns().cleanup_stale()
    if CACHE_DIR.is_dir():
        with contextlib.suppress(TimeoutError):
            with _locked(CACHE_DIR / ".lock", timeout=0):
                _clean_stale_builds()
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    for old in sorted(LOGS_DIR.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)[40:]:
        old.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------- the node

_BOOT_SH = r"""#!/bin/sh
# PID 1 of the node's new pid namespace, in its private mount/uts/ipc/cgroup namespaces.
set -eux
N=@NODE_DIR@
R="$N/root"
@MOUNT_ROOT@
echo @NAME@ > /proc/sys/kernel/hostname
echo @NAME@ > "$R/etc/hostname"
echo @MACHINE_ID@ > "$R/etc/machine-id"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' @NAME@ > "$R/etc/hosts"

mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
# kernel-wide sysctls read-only; the node's own network sysctls stay writable
mount --bind "$R/proc/sys" "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"

mount -t tmpfs -o mode=755,nosuid,size=65536k tmpfs "$R/dev"
for spec in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $spec
    mknod -m 666 "$R/dev/$1" c "$2" "$3"
done
mkdir -m 755 "$R/dev/pts" "$R/dev/net"
mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
touch "$R/dev/console"
mount --bind @CONSOLE@ "$R/dev/console"

mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"

# no kernel modules, clock or raw I/O from inside a node (modprobe@.service & co. skip themselves)
exec @SETPRIV@ --bounding-set -sys_module,-sys_time,-sys_rawio --inh-caps -all \
    env -i container=@CONTAINER@ TERM=dumb LANG=C.UTF-8 @CHROOT@ "$R" /lib/systemd/systemd --system
"""


class _Console:
    """A pty whose slave is the node's /dev/console; a thread copies it to console.log."""

    def __init__(self, logfile: Path):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._file = open(logfile, "ab", buffering=0)
        self._thread = threading.Thread(target=self._pump, name=f"console:{logfile}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave fd is closed
                return
            if not data:
                return
            self._file.write(data)

    def close(self) -> None:
        for fd in (self.slave,):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.master)
        self._file.close()


class SystemdNode:
    """One machine: a copy of `rootfs` booted with systemd as PID 1 inside network namespace `netns`.

    Use as a context manager; leaving it (even through an exception or KeyboardInterrupt) kills
    every process of the node, removes its cgroup and its directory; mounts never leave the node's
    private mount namespace.  On an exception the journal and console are saved to LOGS_DIR and
    their tail is printed (pytest shows it with the failure)."""

    def __init__(self, name: str, *, netns: str, rootfs: Path | None = None,
                 boot_timeout: float = 90, mode: str | None = None):
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
            raise ValueError(f"node name {name!r}: use [a-z0-9-], at most 31 characters")
        self.name, self.netns = name, netns
        self.rootfs = Path(rootfs) if rootfs else None
        self.boot_timeout = boot_timeout
        self.mode = mode
        self.id = f"{name}-{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = NODES_DIR / self.id
        self.pid: int | None = None          # host pid of the node's systemd (PID 1 inside)
        self.boot_state: str | None = None   # "running" or "degraded"
        self.boot_seconds: float | None = None
        self.failed_units: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._console: _Console | None = None
        self._cgroup: Path | None = None
        self._popens: list[subprocess.Popen] = []
        self._stopped = False

    def __repr__(self) -> str:
        return f"<SystemdNode {self.name} pid={self.pid} netns={self.netns} {self.boot_state}>"

    # ---- lifecycle
    def __enter__(self) -> "SystemdNode":
        try:
            self.start()
        except BaseException:
            self.save_diagnostics("boot failed")
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.save_diagnostics(f"{exc_type.__name__}: {exc}")
        finally:
            try:
                self.stop()
            except NodeError as e:
                if exc_type is None:
                    raise
                print(e, file=sys.stderr)  # the test's own failure is the one to report

    def start(self) -> None:
        global _cleaned_once
        if not _cleaned_once:
            cleanup_stale()
            _cleaned_once = True
        t0 = time.monotonic()
        rootfs = self.rootfs or ensure_rootfs()
        mode = self.mode or copy_mode()
        self.dir.mkdir(parents=True)
        (self.dir / "owner.json").write_text(json.dumps(_owner_record()))
        for d in ("root", "rw"):
            (self.dir / d).mkdir()
        # the node's writes go to a tmpfs inside its own mount namespace: gone with the node, and
        # no slow rm -rf of thousands of files (the venv) on a disk mounted with discard
        tmpfs = f'mount -t tmpfs -o mode=755,size={TMPFS_SIZE} tmpfs'
        if mode == "overlay":
            mount_root = (f'{tmpfs} "$N/rw"\nmkdir "$N/rw/upper" "$N/rw/work"\n'
                          f'mount -t overlay overlay -o "lowerdir={rootfs},upperdir=$N/rw/upper,'
                          f'workdir=$N/rw/work" "$R"')
        else:
            mount_root = f'{tmpfs} "$R"\ncp -a {shlex.quote(str(rootfs))}/. "$R/"'

        self._cgroup = _cgroup_base() / self.id
        self._cgroup.mkdir(parents=True)
        self._console = _Console(self.dir / "console.log")
        script = (_BOOT_SH.replace("@NODE_DIR@", shlex.quote(str(self.dir)))
                  .replace("@MOUNT_ROOT@", mount_root)
                  .replace("@NAME@", self.name)
                  .replace("@MACHINE_ID@", secrets.token_hex(16))
                  .replace("@CONSOLE@", shlex.quote(self._console.path))
                  .replace("@CONTAINER@", CONTAINER_NAME)
                  .replace("@SETPRIV@", shlex.quote(_which("setpriv") or "/usr/bin/setpriv"))
                  .replace("@CHROOT@", shlex.quote(_which("chroot") or "/usr/sbin/chroot")))
        (self.dir / "boot.sh").write_text(script)
        cgroup_procs = str(self._cgroup / "cgroup.procs")

        def preexec() -> None:
            os.setsid()  # ^C goes to pytest (which tears us down), not straight to the node
            with open(cgroup_procs, "w") as f:
                f.write(str(os.getpid()))
            _die_with_parent()

        argv = ["ip", "netns", "exec", self.netns,
                "unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
                "--uts", "--ipc", "--cgroup", "--", "/bin/sh", str(self.dir / "boot.sh")]
        with open(self.dir / "boot.log", "wb") as bootlog:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=bootlog,
                                          stderr=subprocess.STDOUT, preexec_fn=preexec,
                                          close_fds=True, env={"PATH": os.environ.get("PATH", "") + ":" + _SBIN})
        self.pid = self._find_pid1()
        (self.dir / "pids.json").write_text(json.dumps({
            "unshare": self._proc.pid, "pid1": self.pid,
            str(self._proc.pid): _proc_start_time(self._proc.pid), str(self.pid): _proc_start_time(self.pid)}))
        self.wait_running(self.boot_timeout)
        self.boot_seconds = time.monotonic() - t0

    def _find_pid1(self, timeout: float = 30) -> int:
        upid = self._proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NodeError(f"[{self.name}] boot script exited {self._proc.returncode}\n{self.boot_log()}")
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{upid}/task/{upid}/children").read_text().split()
                if children:
                    pid = int(children[0])
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return pid
            time.sleep(0.02)
        raise NodeError(f"[{self.name}] systemd did not start within {timeout}s\n{self.boot_log()}")

    def wait_running(self, timeout: float = 90) -> str:
        """Wait until `systemctl is-system-running` says running or degraded; returns it."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None or not self.alive():
                raise NodeError(f"[{self.name}] systemd died during boot\n{self.boot_log()}")
            r = self.exec(["systemctl", "is-system-running"], check=False, timeout=15)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                self.boot_state = state
                if state == "degraded":
                    self.failed_units = self.systemctl("list-units", "--failed", "--plain",
                                                       "--no-legend").stdout.split("\n")
                    self.failed_units = [u.split()[0] for u in self.failed_units if u.strip()]
                return state
            if state in ("maintenance", "stopping"):
                break
            time.sleep(0.1)
        raise NodeError(f"[{self.name}] not running after {timeout}s (is-system-running: {state!r})\n"
                        f"{self.boot_log()}")

    def alive(self) -> bool:
        return self.pid is not None and _proc_start_time(self.pid) is not None and not self._stopped

    def stop(self) -> None:
        """Kill the node (its PID 1, hence its whole pid namespace) and remove all its traces."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # PID 1: the kernel kills the whole pid namespace
        # unshare reaps the dead PID 1 and exits by itself (killing it first, e.g. through
        # cgroup.kill, would leave the zombie to the host's init, which reaps it only later)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        if self._cgroup is not None:
            try:
                _cgroup_destroy(self._cgroup)
            except Exception as e:  # noqa: BLE001 - keep tearing down
                errors.append(str(e))
        for p in [*self._popens, *([self._proc] if self._proc else [])]:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append(f"pid {p.pid} did not exit")
        if self.pid is not None:
            deadline = time.monotonic() + 10
            while _proc_start_time(self.pid) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            if _proc_start_time(self.pid) is not None:
                errors.append(f"PID 1 ({self.pid}) still there")
        if self._console is not None:
            self._console.close()
        try:
            if self.dir.exists():
                _safe_rmtree(self.dir)
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))
        if errors:
            raise NodeError(f"[{self.name}] teardown: " + "; ".join(errors))

    # ---- diagnostics
    def boot_log(self, lines: int = 40) -> str:
        parts = []
        for f in ("boot.log", "console.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {f} ---\n" + _tail((self.dir / f).read_bytes(), lines))
        return "\n".join(parts)

    def save_diagnostics(self, why: str) -> Path | None:
        """Journal + console + boot log of a failed node to LOGS_DIR; prints where, and the tail."""
        try:
            LOGS_DIR.mkdir(parents=True, exist_ok=True)
            path = LOGS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.id}.log"
            journal = ""
            if self.alive():
                with contextlib.suppress(Exception):
                    journal = self.exec(["journalctl", "-b", "--no-pager", "-o", "short-monotonic"],
                                        check=False, timeout=30).stdout
                with contextlib.suppress(Exception):
                    journal += "\n--- systemctl --failed ---\n" + self.systemctl("--failed").stdout
            path.write_text(f"node {self.name} ({self.id}): {why}\n{self.boot_log(400)}\n"
                            f"--- journal ---\n{journal}\n")
            print(f"\n[{self.name}] diagnostics saved to {path}; journal tail:\n{_tail(journal, 40)}",
                  file=sys.stderr)
            return path
        except Exception as e:  # noqa: BLE001 - diagnostics must not mask the real error
            print(f"[{self.name}] could not save diagnostics: {e}", file=sys.stderr)
            return None

    # ---- running things inside
    def _argv(self, cmd: str | Sequence[str], env: dict | None = None) -> list[str]:
        if self.pid is None or self._stopped:
            raise NodeError(f"[{self.name}] node is not running")
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd]
        envs = [f"{k}={v}" for k, v in {**NODE_ENV, **(env or {})}.items()]
        return ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--",
                "/usr/bin/env", "-i", *envs, *map(str, cmd)]

    def exec(self, cmd: str | Sequence[str], *, check: bool = True, timeout: float = 120,
             input: str | bytes | None = None, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        """Run cmd inside the node (all its namespaces, its root) as root with a login-like env.

        A str runs under /bin/sh -c.  Output is captured as text unless input is bytes."""
        kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
        kw.setdefault("text", not isinstance(input, bytes))
        r = subprocess.run(self._argv(cmd, env), input=input, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise NodeCommandError(self.name, cmd, r)
        return r

    def popen(self, cmd: str | Sequence[str], *, env: dict | None = None, **kw) -> subprocess.Popen:
        """Start cmd inside the node in the background; killed with the node at the latest."""
        kw.setdefault("text", True)
        p = subprocess.Popen(self._argv(cmd, env), **kw)
        self._popens.append(p)
        return p

    def systemctl(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.exec(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def journalctl(self, *args: str, timeout: float = 60) -> str:
        return self.exec(["journalctl", "--no-pager", *args], timeout=timeout).stdout

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside the node (through the node's own view of its filesystem)."""
        data = content.encode() if isinstance(content, str) else content
        self.exec(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                   "sh", path, f"{mode:o}"], input=data)

    def read_file(self, path: str) -> str:
        return self.exec(["cat", path]).stdout

    def copy_in(self, src: Path, dest: str, timeout: float = 300) -> None:
        """Copy a host directory's contents into the node at dest (tar through a pipe)."""
        tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE)
        try:
            self.exec(["sh", "-c", 'mkdir -p "$1" && tar -C "$1" -xf -', "sh", dest],
                      stdin=tar.stdout, timeout=timeout, text=False)
        finally:
            tar.stdout.close()
            tar.wait(timeout=30)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit, check=True).stdout.strip()

    def pid_of_unit(self, unit: str, *, host: bool = False) -> int | None:
        """MainPID of unit as the node sees it (host=True: as the host sees it); None if none."""
        pid = int(self.unit_property(unit, "MainPID") or 0)
        if not pid:
            return None
        return self.host_pid(pid) if host else pid

    def host_pid(self, node_pid: int) -> int | None:
        """Translate a pid inside the node into the host's pid for that process."""
        my_ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(d / "ns/pid") != my_ns:
                    continue
                for line in (d / "status").read_text().splitlines():
                    if line.startswith("NSpid:"):
                        if int(line.split()[-1]) == node_pid:
                            return int(d.name)
        return None

    def processes(self) -> list[int]:
        """Host pids of every process in the node's pid namespace."""
        my_ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(d / "ns/pid") == my_ns:
                        out.append(int(d.name))
        return out


# --------------------------------------------------------------------------- installing drp

@dataclass(frozen=True)
class HASettings:
    """Values for /etc/systemd/system/dr-provision.service.d/20-ha.conf."""
    interface: str
    address: str          # the VIP, CIDR
    ha_id: str
    token: str
    passive: bool = False


def render_ha_dropin(settings: HASettings, template: str | None = None) -> str:
    """contrib/systemd/20-ha.conf with the node's values (passive: RS_HA_PASSIVE uncommented)."""
    text = template if template is not None else (CONTRIB / "20-ha.conf").read_text()
    values = {"RS_HA_ENABLED": "true", "RS_HA_INTERFACE": settings.interface,
              "RS_HA_ADDRESS": settings.address, "RS_HA_ID": settings.ha_id,
              "RS_HA_TOKEN": settings.token}
    for var, value in values.items():
        if any(ch in value for ch in "\n\"\\ %"):
            raise ValueError(f"{var}={value!r}: would need quoting in a unit file")
        text, n = re.subn(rf"^Environment={var}=.*$", f"Environment={var}={value}", text, flags=re.M)
        if n == 0:
            text += f"Environment={var}={value}\n"
    if settings.passive:
        text, n = re.subn(r"^#\s*Environment=RS_HA_PASSIVE=.*$", "Environment=RS_HA_PASSIVE=true",
                          text, flags=re.M)
        if n == 0:
            text += "Environment=RS_HA_PASSIVE=true\n"
    return text


DROPIN_PATH = "/etc/systemd/system/dr-provision.service.d/20-ha.conf"
UNIT_PATH = "/etc/systemd/system/dr-provision.service"


def write_ha_dropin(node: SystemdNode, settings: HASettings, *, reload: bool = True) -> str:
    text = render_ha_dropin(settings)
    node.write_file(DROPIN_PATH, text)
    if reload:
        node.systemctl("daemon-reload", check=True)
    return text


def install_drp(node: SystemdNode, wheelhouse: Path | None = None, *, ha: HASettings | None = None,
                enable: bool = True) -> float:
    """Install drp on a running node the way an operator does; returns the seconds it took.

    wheels -> /root/drp-wheelhouse, `python3 -m venv /opt/drp`, pip install --no-index,
    /usr/local/bin/{dr-provision,drpcli} symlinks, the unit (and the HA drop-in when ha is given),
    daemon-reload, enable.  Nothing is started."""
    t0 = time.monotonic()
    wheelhouse = wheelhouse or build_wheelhouse()
    node.copy_in(wheelhouse, "/root/drp-wheelhouse")
    node.exec("python3 -m venv /opt/drp && /opt/drp/bin/pip install -q --disable-pip-version-check "
              "--no-index --find-links /root/drp-wheelhouse drp", timeout=600)
    node.exec("ln -sf /opt/drp/bin/dr-provision /usr/local/bin/dr-provision && "
              "ln -sf /opt/drp/bin/drpcli /usr/local/bin/drpcli")
    node.write_file(UNIT_PATH, (CONTRIB / "dr-provision.service").read_text())
    if ha is not None:
        write_ha_dropin(node, ha, reload=False)
    node.systemctl("daemon-reload", check=True)
    if enable:
        node.systemctl("enable", "dr-provision", check=True)
    return time.monotonic() - t0


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
