"""drp onto a node the way an operator installs it: a wheelhouse of this repo, then pip in a venv."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import MARKER, build_once, content_hash
from .hadropin import HASettings, write_ha_dropin
from .hostutil import CACHE_DIR, CONTRIB, REPO, run, safe_rmtree

if TYPE_CHECKING:
    from .node import SystemdNode

UNIT_PATH = "/etc/systemd/system/dr-provision.service"
WHEEL_LOCK = ".wheel-lock"


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
    deps_key = content_hash(pyver, (repo / "pyproject.toml").read_bytes())
    src_key = content_hash(deps_key, *(f"{p.relative_to(repo)}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                                       for p in files))
    final = CACHE_DIR / f"wheelhouse-{src_key}"
    return build_once(final, WHEEL_LOCK, lambda: _build_wheelhouse(repo, files, deps_key, final, log))


def _build_wheelhouse(repo: Path, files: list[Path], deps_key: str, final: Path, log) -> None:
    """build_wheelhouse's build (the caller holds WHEEL_LOCK)."""
    work = CACHE_DIR / f".build-wheels-{os.getpid()}"
    safe_rmtree(work)
    snap = work / "src"
    for p in files:
        dst = snap / p.relative_to(repo)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    deps = CACHE_DIR / f"wheeldeps-{deps_key}"
    if not (deps / MARKER).is_file():
        t0 = time.monotonic()
        run([*pip, "--wheel-dir", work / "deps", snap], timeout=900)
        for w in (work / "deps").glob("drp-*.whl"):
            w.unlink()
        (work / "deps" / MARKER).write_text("")
        safe_rmtree(deps)
        os.rename(work / "deps", deps)
        log(f"built dependency wheels {deps} in {time.monotonic() - t0:.0f}s")
    run([*pip, "--no-deps", "--wheel-dir", work / "drp", snap], timeout=300)
    out = work / "out"
    out.mkdir()
    for w in [*deps.glob("*.whl"), *(work / "drp").glob("*.whl")]:
        os.link(w, out / w.name)
    (out / MARKER).write_text("")
    safe_rmtree(final)
    os.rename(out, final)
    safe_rmtree(work)
    # keep the cache from growing without bound (older source snapshots)
    olds = sorted(CACHE_DIR.glob("wheelhouse-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds[5:]:
        safe_rmtree(old)


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
