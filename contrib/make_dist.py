#!/usr/bin/env python3
"""Build the offline install archive: drp and every dependency as wheels, plus install.sh.

    python3 contrib/make_dist.py [--out-dir dist] [--cache build/dist-cache]   # `make dist`

writes dist/drp-<version>-py<X.Y>-linux-<machine>.tar.gz for the interpreter running this script
(wheels with C parts are per Python minor version and architecture).  On the target, with no
network: unpack it and run its install.sh (python3 -m venv /opt/drp && /opt/drp/bin/pip install
--no-index --find-links wheels drp); installing wheels needs only pip, not setuptools.

Building needs the package index once: a build venv (with pyproject's build requirements) and the
dependency wheels are cached under --cache, keyed by the Python and pyproject.toml, so a warm build
only makes the drp wheel (offline, no build isolation) and packs.  Delete the cache to pick up
newer dependency releases.  Stdlib only; prints the archive's path on its last line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEMD_FILES = ("dr-provision.service", "20-ha.conf")
MARKER = ".complete"

INSTALL_SH = """\
#!/bin/sh
# Install drp from the wheels beside this script into a venv, without the network:
#   ./install.sh [VENV]      VENV defaults to /opt/drp; PYTHON=python3.X picks the interpreter.
# Run it again with a newer archive to upgrade.  Built by `make dist` for Python {pyver} on {machine}.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${{1:-/opt/drp}}
python=${{PYTHON:-python3}}
have=$("$python" -c 'import platform, sys; print("%d.%d-%s" % (*sys.version_info[:2], platform.machine()))') \\
  || {{ echo "install.sh: cannot run $python" >&2; exit 1; }}
if [ "$have" != "{pyver}-{machine}" ]; then
  echo "install.sh: these wheels are for Python {pyver} on {machine}, $python is Python $have; build an archive for it with: make dist PYTHON=python${{have%-*}}" >&2
  exit 1
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --no-index --find-links "$here/wheels" --disable-pip-version-check --upgrade "drp=={version}"
"""


def source_files(repo: Path = REPO) -> list[Path]:
    """What the drp wheel is built from (everything else in the checkout is left out)."""
    names = ["pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in"]
    files = [repo / n for n in names if (repo / n).is_file()]
    files += sorted(p for p in repo.glob("README*") if p.is_file())
    files += sorted(p for p in repo.glob("LICEN[CS]E*") if p.is_file())
    files += sorted(p for p in (repo / "drp").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))
    return files


def archive_name(pyproject: dict) -> str:
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"drp-{pyproject['project']['version']}-py{pyver}-linux-{platform.machine()}"


def run(argv: list, **kw) -> None:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"make_dist: {' '.join(map(str, argv[:4]))} ... exited {r.returncode}")


def cached(final: Path, build) -> Path:
    """final once complete; otherwise build(tmp) fills a fresh dir renamed into place."""
    if (final / MARKER).is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / MARKER).write_text("")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_venv(cache: Path, pyproject: dict) -> Path:
    """A venv of this Python with pyproject's build requirements, so the drp wheel builds offline."""
    requires = pyproject["build-system"]["requires"]
    key = hashlib.sha256(f"{sys.version}\0{platform.machine()}\0{requires}".encode()).hexdigest()[:16]

    venv = cache / f"venv-{key}"
    if not (venv / MARKER).is_file():  # made in place: a venv does not survive a rename
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", venv])
        run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", *requires])
        (venv / MARKER).write_text("")
    return venv


def dependency_wheels(cache: Path, pip: Path, snap: Path, log) -> Path:
    """Wheels of every dependency of drp as pip resolves them for this Python, cached."""
    pyproject_bytes = (snap / "pyproject.toml").read_bytes()
    key = hashlib.sha256(f"{sys.version}\0{platform.machine()}\0".encode() + pyproject_bytes).hexdigest()[:16]

    def make(tmp: Path) -> None:
        t0 = time.monotonic()
        run([pip, "wheel", "-q", "--disable-pip-version-check", "--wheel-dir", tmp, snap], timeout=1800)
        for w in tmp.glob("drp-*.whl"):
            w.unlink()
        log(f"built dependency wheels in {time.monotonic() - t0:.0f}s")

    return cached(cache / f"deps-{key}", make)


def snapshot(repo: Path, dest: Path) -> Path:
    """A copy of the sources, so building leaves no build/ or *.egg-info in the checkout."""
    for p in source_files(repo):
        dst = dest / p.relative_to(repo)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    return dest


def make_dist(out_dir: Path, cache: Path, repo: Path = REPO, log=print) -> Path:
    """Build the archive into out_dir; returns its path."""
    if sys.platform != "linux":
        raise SystemExit("make_dist: the archive is for Linux servers; build it on Linux")
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    name = archive_name(pyproject)
    cache.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    pip = build_venv(cache, pyproject) / "bin" / "pip"
    with tempfile.TemporaryDirectory(prefix=".make-dist-", dir=cache) as work_s:
        work = Path(work_s)
        snap = snapshot(repo, work / "src")
        deps = dependency_wheels(cache, pip, snap, log)
        stage = work / "stage" / name
        (stage / "wheels").mkdir(parents=True)
        run([pip, "wheel", "-q", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
             "--no-index", "--wheel-dir", stage / "wheels", snap], timeout=600)
        for w in deps.glob("*.whl"):
            shutil.copy2(w, stage / "wheels" / w.name)
        (stage / "systemd").mkdir()
        for f in SYSTEMD_FILES:
            shutil.copy2(repo / "contrib" / "systemd" / f, stage / "systemd" / f)
        script = stage / "install.sh"
        script.write_text(INSTALL_SH.format(pyver=f"{sys.version_info.major}.{sys.version_info.minor}",
                                            machine=platform.machine(),
                                            version=pyproject["project"]["version"]))
        script.chmod(0o755)
        tmp_archive = work / f"{name}.tar.gz"
        with tarfile.open(tmp_archive, "w:gz") as tar:
            tar.add(stage, arcname=name)
        archive = out_dir / tmp_archive.name
        shutil.move(tmp_archive, archive)  # a rename when on one filesystem
    return archive


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build drp's offline install archive (a wheelhouse).")
    ap.add_argument("--out-dir", type=Path, default=REPO / "dist", help="where the archive goes (dist/)")
    ap.add_argument("--cache", type=Path, default=REPO / "build" / "dist-cache",
                    help="build venv and dependency wheels, reused by the next build (build/dist-cache/)")
    ap.add_argument("--list-sources", action="store_true",
                    help="print the files the drp wheel is built from, one per line, and exit")
    args = ap.parse_args(argv)
    if args.list_sources:
        print("\n".join(str(p.relative_to(REPO)) for p in source_files()))
        return
    t0 = time.monotonic()
    archive = make_dist(args.out_dir.resolve(), args.cache.resolve(), log=lambda m: print(m, file=sys.stderr))
    size = archive.stat().st_size
    top = archive.name.removesuffix(".tar.gz")
    print(f"built in {time.monotonic() - t0:.0f}s, {size / 2**20:.1f} MiB; copy it to the server, then "
          f"tar -xzf {archive.name} && cd {top} && ./install.sh", file=sys.stderr)
    print(archive)


if __name__ == "__main__":
    main()
