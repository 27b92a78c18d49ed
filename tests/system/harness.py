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
    archive = build_dist()              # `make dist`'s offline archive of this repo, cached
    with Lab() as lab:                  # tests/netns.py: namespaces on a bridge, 198.18.0.0/15
        host = lab.add_host("a", "198.18.0.11/24")
        with SystemdNode("a", netns=host.ns, rootfs=rootfs) as node:
            install_drp(node, archive, ha=HASettings(...))
            node.systemctl("start", "dr-provision", check=True)
            print(node.journalctl("-u", "dr-provision"))

Everything the harness makes lives under CACHE_DIR (rootfs, archives; kept) and RUN_DIR (one
directory per node; removed at teardown), and in cgroup2 under "drp-systest/".  `cleanup_stale()`
removes what a killed earlier run left behind; it runs before the first node of every process.

This module is the front door (skip_reason() and the names tests use); the work is done in:
hostutil (paths, processes, mounts, safe deletion), cache (build-once cache entries), cgroups,
rootfs (the debootstrap), boot (a node's root, boot script and console), node (SystemdNode),
stale (cleanup_stale), install (build_dist, install_drp) and hadropin (20-ha.conf).
"""

from __future__ import annotations

import os
import sys

from .boot import CONTAINER_NAME, TMPFS_SIZE, copy_mode, overlay_supported
from .cgroups import CGROUP_GROUP, cgroup2_mount
from .hadropin import DROPIN_PATH, HASettings, render_ha_dropin, write_ha_dropin
from .hostutil import (CACHE_DIR, CONTRIB, LOGS_DIR, NODES_DIR, REPO, RUN_DIR, HarnessUnavailable,
                       host_mounts, load_netns, mounts_under, wait_for, which)
from .install import UNIT_PATH, build_dist, build_wheelhouse, install_drp
from .node import NODE_ENV, NODE_PATH, NodeCommandError, NodeError, SystemdNode
from .rootfs import (MIRROR, ROOTFS_MASKED_UNITS, ROOTFS_PACKAGES, ROOTFS_RECIPE, SUITE,
                     ensure_debootstrap, ensure_rootfs, rootfs_cached, rootfs_key)
from .stale import cleanup_stale

__all__ = [
    "REPO", "CONTRIB", "CACHE_DIR", "RUN_DIR", "NODES_DIR", "LOGS_DIR", "CGROUP_GROUP",
    "SUITE", "MIRROR", "ROOTFS_PACKAGES", "ROOTFS_RECIPE", "ROOTFS_MASKED_UNITS",
    "NODE_PATH", "NODE_ENV", "TMPFS_SIZE", "CONTAINER_NAME",
    "HarnessUnavailable", "NodeError", "NodeCommandError",
    "host_mounts", "mounts_under", "ensure_debootstrap", "skip_reason", "load_netns",
    "rootfs_key", "ensure_rootfs", "build_dist", "build_wheelhouse", "overlay_supported", "copy_mode",
    "cleanup_stale", "SystemdNode", "HASettings", "render_ha_dropin", "DROPIN_PATH", "UNIT_PATH",
    "write_ha_dropin", "install_drp", "wait_for",
]


def skip_reason() -> str | None:
    """Why system tests cannot run here (for pytest.skip), or None when they can."""
    if sys.platform != "linux":
        return "system tests need Linux"
    if os.geteuid() != 0:
        return "system tests need root (network namespaces, mounts, systemd as PID 1)"
    missing = [t for t in ("ip", "unshare", "nsenter", "setpriv", "chroot", "mount", "umount", "mknod", "tar")
               if not which(t)]
    if missing:
        return f"system tests need {', '.join(missing)}"
    if cgroup2_mount() is None:
        return "system tests need a cgroup2 hierarchy on the host"
    if not rootfs_cached():
        try:
            ensure_debootstrap()
        except HarnessUnavailable as e:
            return str(e)
    return None
