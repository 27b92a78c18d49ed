"""The nodes' root filesystem: a Debian bookworm debootstrap, built once and cached in CACHE_DIR."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .cache import CACHE_LOCK, MARKER, build_once, clean_stale_builds, content_hash
from .hostutil import CACHE_DIR, HarnessUnavailable, die_with_parent, safe_rmtree, tail, which

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


def ensure_debootstrap() -> str:
    """Path of debootstrap, installing the Debian package when it is missing."""
    if path := which("debootstrap"):
        return path
    if not which("apt-get"):
        raise HarnessUnavailable("debootstrap is missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"]
    r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 or not (path := which("debootstrap")):
        raise HarnessUnavailable(f"cannot install debootstrap with apt-get: {tail(r.stderr, 5)}")
    return path


def rootfs_key(packages: Sequence[str] = ROOTFS_PACKAGES) -> str:
    return content_hash(SUITE, MIRROR, ",".join(sorted(packages)), ROOTFS_RECIPE, ROOTFS_MASKED_UNITS)


def rootfs_path(packages: Sequence[str] = ROOTFS_PACKAGES) -> Path:
    """Where the rootfs for `packages` is cached (complete once it holds MARKER)."""
    return CACHE_DIR / f"rootfs-{rootfs_key(packages)}"


def rootfs_cached(packages: Sequence[str] = ROOTFS_PACKAGES) -> bool:
    return (rootfs_path(packages) / MARKER).is_file()


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


def ensure_rootfs(packages: Sequence[str] = ROOTFS_PACKAGES, *, log=print) -> Path:
    """The cached debootstrap rootfs for `packages`, built (atomically) when missing.

    Built in CACHE_DIR/.build-KEY-PID under a lock, inside its own pid+mount namespace (its mounts
    vanish with it, and it dies with the harness), and renamed to CACHE_DIR/rootfs-KEY only once
    complete: a killed build never leaves a usable-looking cache."""
    final = rootfs_path(packages)
    return build_once(final, CACHE_LOCK, lambda: _build_rootfs(final, packages, log))


def _build_rootfs(final: Path, packages: Sequence[str], log) -> None:
    """ensure_rootfs's build (the caller holds CACHE_LOCK)."""
    clean_stale_builds()
    debootstrap = ensure_debootstrap()
    tmp = CACHE_DIR / f".build-{final.name}-{os.getpid()}"
    safe_rmtree(tmp)
    t0 = time.monotonic()
    log(f"building {final} with debootstrap (one-time; ~1-2 min)")
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
            "--", debootstrap, "--variant=minbase", f"--include={','.join(packages)}",
            SUITE, str(tmp), MIRROR]
    logfile = CACHE_DIR / f"{tmp.name}.log"
    with open(logfile, "w") as lf:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                             preexec_fn=die_with_parent, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        try:
            rc = p.wait(timeout=1200)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    if rc != 0:
        text = logfile.read_text(errors="replace")
        safe_rmtree(tmp)
        raise RuntimeError(f"debootstrap failed ({rc}); see {logfile}\n{tail(text, 30)}")
    _configure_rootfs(tmp)
    (tmp / MARKER).write_text(json.dumps({"packages": list(packages), "suite": SUITE,
                                          "mirror": MIRROR, "seconds": round(time.monotonic() - t0, 1),
                                          "built": time.strftime("%F %T")}) + "\n")
    if final.exists():  # only possible without the marker (e.g. by hand): replace it
        safe_rmtree(final)
    os.rename(tmp, final)
    logfile.unlink(missing_ok=True)
    log(f"built {final} in {time.monotonic() - t0:.0f}s")
