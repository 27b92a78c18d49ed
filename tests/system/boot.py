"""How a node boots: its own root (overlay or copy of the cached rootfs, writes in a tmpfs),
the boot script that becomes PID 1 of its namespaces and execs systemd, and its console pty."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import threading
import tty
from pathlib import Path

from .hostutil import NODES_DIR, safe_rmtree, which

TMPFS_SIZE = os.environ.get("DRP_SYSTEST_TMPFS_SIZE", "4g")  # per node, for what it writes
CONTAINER_NAME = "drp-systest"  # the $container value systemd sees (systemd-detect-virt)

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
            safe_rmtree(probe)
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




def render_boot_script(node_dir: Path, name: str, rootfs: Path, mode: str, console: str) -> str:
    """boot.sh for node `name` in node_dir: its root from `rootfs` by `mode` ("overlay" or
    "copy"), console (a pty path) as its /dev/console, a fresh machine id."""
    # the node's writes go to a tmpfs inside its own mount namespace: gone with the node, and
    # no slow rm -rf of thousands of files (the venv) on a disk mounted with discard
    tmpfs = f'mount -t tmpfs -o mode=755,size={TMPFS_SIZE} tmpfs'
    if mode == "overlay":
        mount_root = (f'{tmpfs} "$N/rw"\nmkdir "$N/rw/upper" "$N/rw/work"\n'
                      f'mount -t overlay overlay -o "lowerdir={rootfs},upperdir=$N/rw/upper,'
                      f'workdir=$N/rw/work" "$R"')
    else:
        mount_root = f'{tmpfs} "$R"\ncp -a {shlex.quote(str(rootfs))}/. "$R/"'
    return (_BOOT_SH.replace("@NODE_DIR@", shlex.quote(str(node_dir)))
            .replace("@MOUNT_ROOT@", mount_root)
            .replace("@NAME@", name)
            .replace("@MACHINE_ID@", secrets.token_hex(16))
            .replace("@CONSOLE@", shlex.quote(console))
            .replace("@CONTAINER@", CONTAINER_NAME)
            .replace("@SETPRIV@", shlex.quote(which("setpriv") or "/usr/bin/setpriv"))
            .replace("@CHROOT@", shlex.quote(which("chroot") or "/usr/sbin/chroot")))


class Console:
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

