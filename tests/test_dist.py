"""The offline install archive (`make dist`), installed the way the README says, with no network.

The archive is built once by make_dist (cached like the system test's, so a second run is fast),
unpacked into a temp dir and installed by its install.sh into a fresh venv of the stock pip, with
pip's configuration and index pointed nowhere (and, as root, in a network namespace of its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.system.hostutil import CACHE_DIR, REPO
from tests.system.install import MAKE_DIST, build_dist

pytestmark = [pytest.mark.timeout(1200), pytest.mark.skipif(sys.platform != "linux", reason="Linux only")]

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
DEAD_INDEX = "http://127.0.0.1:9/"  # the discard port: any index request fails at once


def _cache_writable(path: Path) -> bool:
    while not path.exists():
        path = path.parent
    return os.access(path, os.W_OK)


def _offline_env(**extra: str) -> dict[str, str]:
    """The environment minus pip's settings, with no usable index and no pip config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "VIRTUAL_ENV"}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": DEAD_INDEX, "PIP_NO_CACHE_DIR": "1",
                "PYTHON": sys.executable, **extra})
    return env


def _no_network() -> list[str]:
    """A prefix that runs a command in a new, empty network namespace when we may make one."""
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare and subprocess.run([unshare, "--net", "true"]).returncode == 0:
        return [unshare, "--net", "--"]
    return []


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    if _cache_writable(CACHE_DIR):  # the system test's cache entry: the same archive
        return build_dist(log=lambda m: print(m, file=sys.stderr))
    out = tmp_path_factory.mktemp("dist")  # the tool still caches its dependency wheels in build/
    r = subprocess.run([sys.executable, MAKE_DIST, "--out-dir", out], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.split()[-1])


@pytest.fixture(scope="module")
def unpacked(archive, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("server")
    subprocess.run(["tar", "-C", root, "-xzf", archive], check=True)
    return root / archive.name.removesuffix(".tar.gz")


@pytest.fixture(scope="module")
def installed(unpacked) -> Path:
    venv = unpacked.parent / "opt-drp"
    r = subprocess.run([*_no_network(), unpacked / "install.sh", venv], env=_offline_env(),
                       cwd=unpacked.parent, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"install.sh exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return venv


def test_archive_name_and_contents(archive):
    assert archive.name == f"drp-{VERSION}-py{PYVER}-linux-{os.uname().machine}.tar.gz"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    top = archive.name.removesuffix(".tar.gz")
    assert {f"{top}/install.sh", f"{top}/systemd/dr-provision.service", f"{top}/systemd/20-ha.conf",
            f"{top}/wheels/drp-{VERSION}-py3-none-any.whl"} <= set(names)
    wheels = [n for n in names if n.startswith(f"{top}/wheels/") and n != f"{top}/wheels"]
    assert wheels and all(n.endswith(".whl") for n in wheels), "only wheels: nothing to build on the server"
    assert all(n == top or n.startswith(f"{top}/") for n in names)


def test_installs_offline_and_runs(installed, unpacked):
    version = subprocess.run([installed / "bin" / "dr-provision", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"dr-provision {VERSION}"
    cli = subprocess.run([installed / "bin" / "drpcli", "--help"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "usage: drpcli" in cli.stdout
    # drp comes from the venv, not from this checkout
    where = subprocess.run([installed / "bin" / "python", "-c", "import drp; print(drp.__file__)"],
                           capture_output=True, text=True, cwd=unpacked.parent, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr


def test_install_sh_refuses_another_python(unpacked, tmp_path):
    other = tmp_path / "python"
    other.write_text("#!/bin/sh\necho 3.99-x86_64\n")
    other.chmod(0o755)
    r = subprocess.run([unpacked / "install.sh", tmp_path / "venv"], env=_offline_env(PYTHON=str(other)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == (f"install.sh: these wheels are for Python {PYVER} on {os.uname().machine}, "
                        f"{other} is Python 3.99-x86_64; build an archive for it with: "
                        "make dist PYTHON=python3.99\n")
    assert not (tmp_path / "venv").exists()
