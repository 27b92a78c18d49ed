"""drp onto a node the way the README installs it: the offline archive `make dist` builds
(contrib/make_dist.py: a wheelhouse of drp and every dependency, install.sh, the unit), copied in,
unpacked and installed with pip --no-index inside the node."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import MARKER, build_once, content_hash
from .hadropin import HASettings, write_ha_dropin
from .hostutil import CACHE_DIR, REPO, run, safe_rmtree

if TYPE_CHECKING:
    from .node import SystemdNode

UNIT_PATH = "/etc/systemd/system/dr-provision.service"
WHEEL_LOCK = ".wheel-lock"
MAKE_DIST = REPO / "contrib" / "make_dist.py"  # what `make dist` runs
DIST_CACHE = CACHE_DIR / "dist-cache"  # make_dist's build venv and dependency wheels
KEEP_DISTS = 5


def _dist_inputs(repo: Path) -> list[Path]:
    """Every file the archive is made of or from: make_dist's sources, itself, the unit files."""
    tool = repo / MAKE_DIST.relative_to(REPO)
    sources = run([sys.executable, tool, "--list-sources"]).stdout.splitlines()
    return ([repo / s for s in sources] + [tool]
            + sorted(p for p in (repo / "contrib" / "systemd").iterdir() if p.is_file()))


def build_dist(repo: Path = REPO, *, log=print) -> Path:
    """The offline install archive (drp-<version>-py3.11-linux-<machine>.tar.gz), cached.

    Built by `make dist`'s own tool with the harness's interpreter (CPython 3.11: manylinux wheels
    that Debian's python3.11 in the node installs); cached under CACHE_DIR by the hash of its
    inputs, the dependency wheels (make_dist's cache) by the hash of pyproject.toml."""
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = content_hash(pyver, *(f"{p.relative_to(repo)}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                                for p in _dist_inputs(repo)))
    final = CACHE_DIR / f"dist-{key}"
    build_once(final, WHEEL_LOCK, lambda: _build_dist(repo, final, log))
    return next(final.glob("drp-*.tar.gz"))


def build_wheelhouse(repo: Path = REPO, *, log=print) -> Path:
    """The wheelhouse the system tests install: the offline archive (kept for their callers)."""
    return build_dist(repo, log=log)


def _build_dist(repo: Path, final: Path, log) -> None:
    """build_dist's build (the caller holds WHEEL_LOCK)."""
    t0 = time.monotonic()
    work = CACHE_DIR / f".build-dist-{os.getpid()}"
    safe_rmtree(work)
    run([sys.executable, repo / MAKE_DIST.relative_to(REPO), "--out-dir", work, "--cache", DIST_CACHE],
        timeout=1800)
    (work / MARKER).write_text("")
    safe_rmtree(final)
    os.rename(work, final)
    log(f"built {next(final.glob('drp-*.tar.gz')).name} in {time.monotonic() - t0:.0f}s")
    # keep the cache from growing without bound (older source snapshots, and the loose
    # wheelhouses the harness kept before it installed from the archive)
    olds = sorted(CACHE_DIR.glob("dist-????????????????"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [*olds[KEEP_DISTS:], *CACHE_DIR.glob("wheelhouse-*"), *CACHE_DIR.glob("wheeldeps-*")]:
        safe_rmtree(old)


def install_drp(node: SystemdNode, archive: Path | None = None, *, ha: HASettings | None = None,
                enable: bool = True) -> float:
    """Install drp on a running node as the README's "Running under systemd" does; returns the
    seconds it took.

    The archive -> /root, unpacked, its install.sh (python3 -m venv /opt/drp, pip install
    --no-index --find-links), /usr/local/bin/{dr-provision,drpcli} symlinks, the archive's unit
    (and the HA drop-in when ha is given), daemon-reload, enable.  Nothing is started."""
    t0 = time.monotonic()
    archive = archive or build_dist()
    unpacked = archive.name.removesuffix(".tar.gz")
    with open(archive, "rb") as f:
        node.exec(["sh", "-c", 'cat > "$1"', "sh", f"/root/{archive.name}"], stdin=f, text=False)
    node.exec(f"cd /root && tar -xzf {archive.name} && ./{unpacked}/install.sh", timeout=600)
    node.exec("ln -sf /opt/drp/bin/dr-provision /opt/drp/bin/drpcli /usr/local/bin/")
    node.exec(f"cp /root/{unpacked}/systemd/dr-provision.service {UNIT_PATH}")
    if ha is not None:
        write_ha_dropin(node, ha, reload=False)
    node.systemctl("daemon-reload", check=True)
    if enable:
        node.systemctl("enable", "dr-provision", check=True)
    return time.monotonic() - t0
