"""Smoke test of the system-test harness: real systemd in a network namespace, drp installed the
way an operator installs it.  Does not need a working server: nothing here starts dr-provision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from . import harness as h

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.timeout(600)]

NODE_CIDR = "198.18.0.11/24"
VIP = "198.18.0.100/24"


@pytest.fixture(scope="module")
def rootfs() -> Path:
    if reason := h.skip_reason():
        pytest.skip(reason)
    return h.ensure_rootfs()


@pytest.fixture(scope="module")
def lab(rootfs):
    with h.load_netns().Lab() as lab_:
        yield lab_


@pytest.fixture(scope="module")
def node(request, lab, rootfs):
    host = lab.add_host("smoke", NODE_CIDR)
    failed_before = request.session.testsfailed
    with h.SystemdNode("smoke", netns=host.ns, rootfs=rootfs) as n:
        yield n
        if request.session.testsfailed > failed_before:  # keep the journal of a failed module
            n.save_diagnostics("a test using this node failed")


@pytest.fixture(scope="module")
def installed(node) -> float:
    """drp installed on the node with an HA drop-in for a passive node; returns seconds taken."""
    wheels = h.build_wheelhouse()
    return h.install_drp(node, wheels, ha=h.HASettings(interface="eth0", address=VIP,
                                                       ha_id="smoke-cluster", token="smoke-token",
                                                       passive=True))


def test_boots_to_running(node):
    assert node.boot_state == "running", f"failed units: {node.failed_units}"
    assert node.systemctl("is-system-running").stdout.strip() == "running"
    assert node.exec(["ps", "-o", "comm=", "-p", "1"]).stdout.strip() == "systemd"
    assert node.exec("hostname").stdout.strip() == "smoke"
    assert node.exec(["systemd-detect-virt", "--container"]).stdout.strip() == "container-other"
    # the node's own cgroup tree: systemd sees itself at the root of it
    assert "0::/init.scope" in node.exec(["cat", "/proc/1/cgroup"]).stdout


def test_journald_records(node):
    assert node.systemctl("is-active", "systemd-journald").stdout.strip() == "active"
    marker = f"smoke-{uuid.uuid4()}"
    node.exec(["systemd-cat", "-t", "drp-smoke", "echo", marker])
    h.wait_for(lambda: marker in node.journalctl("-t", "drp-smoke", "-o", "cat"), timeout=10,
               what="the marker in the journal")
    # a unit's output lands in the journal under its unit name
    node.exec(["systemd-run", "--unit=smoke-echo", "--wait", "sh", "-c", f"echo unit-{marker}"])
    h.wait_for(lambda: f"unit-{marker}" in node.journalctl("-u", "smoke-echo", "-o", "cat"),
               timeout=10, what="the unit's output in the journal")


def test_node_network_is_its_namespace(node, lab):
    host = lab.hosts["smoke"]
    links = json.loads(node.exec(["ip", "-j", "addr"]).stdout)
    names = sorted(link["ifname"] for link in links)
    assert names == ["eth0", "lo"]
    eth0 = next(link for link in links if link["ifname"] == "eth0")
    assert eth0["address"] == host.mac
    assert any(f"{a['local']}/{a['prefixlen']}" == NODE_CIDR for a in eth0["addr_info"])


def test_operator_install(node, installed):
    cat = node.systemctl("cat", "dr-provision", check=True).stdout
    assert f"# {h.UNIT_PATH}" in cat
    assert f"# {h.DROPIN_PATH}" in cat
    for line in ("Type=notify", "NotifyAccess=main", "ExecStart=/usr/local/bin/dr-provision",
                 "Environment=RS_HA_ENABLED=true", "Environment=RS_HA_INTERFACE=eth0",
                 f"Environment=RS_HA_ADDRESS={VIP}", "Environment=RS_HA_ID=smoke-cluster",
                 "Environment=RS_HA_TOKEN=smoke-token", "Environment=RS_HA_PASSIVE=true"):
        assert line in cat.splitlines(), line
    assert node.systemctl("is-enabled", "dr-provision").stdout.strip() == "enabled"
    props = dict(line.split("=", 1) for line in node.systemctl(
        "show", "dr-provision", "-p", "Type,NotifyAccess,Restart,StateDirectory,LimitNOFILE,KillSignal",
        check=True).stdout.splitlines() if "=" in line)
    assert props == {"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
                     "StateDirectory": "dr-provision", "LimitNOFILE": "1048576",
                     "KillSignal": str(int(signal.SIGTERM))}
    env = node.systemctl("show", "dr-provision", "-p", "Environment", "--value", check=True).stdout.split()
    assert "RS_HA_PASSIVE=true" in env and f"RS_HA_ADDRESS={VIP}" in env
    # systemd's own lint of the unit as installed
    verify = node.exec(["systemd-analyze", "verify", "dr-provision.service"], check=False)
    assert verify.returncode == 0, verify.stderr
    for tool in ("dr-provision", "drpcli"):
        assert node.exec(["readlink", f"/usr/local/bin/{tool}"]).stdout.strip() == f"/opt/drp/bin/{tool}"
    # nothing was started
    assert node.systemctl("is-active", "dr-provision").stdout.strip() == "inactive"


def test_entry_points_run_in_the_node(node, installed):
    r = node.exec(["/usr/local/bin/drpcli", "--help"])
    assert "usage" in (r.stdout + r.stderr).lower()
    r = node.exec(["/usr/local/bin/dr-provision", "--help"])
    assert "--ha-enabled" in r.stdout
    # Debian's python3 runs them, not the host's
    ver = node.exec(["/opt/drp/bin/python", "-c", "import sys, drp; print(sys.executable, drp.__file__)"])
    assert ver.stdout.startswith("/opt/drp/bin/python /opt/drp/lib/python3.11/site-packages/drp/")


def _pid_ns_members(ns_link: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "ns/pid") == ns_link:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_teardown_on_failure_leaves_nothing(rootfs):
    """A test failing inside the node: no processes, mounts, cgroup, namespaces or files remain."""
    netns = h.load_netns()
    with pytest.raises(AssertionError, match="deliberate"):
        with netns.Lab() as lab:
            host = lab.add_host("tear", "198.18.0.21/24")
            prefix = lab.prefix
            with h.SystemdNode("tear", netns=host.ns, rootfs=rootfs) as n:
                node_dir, cgroup, pid1 = n.dir, n._cgroup, n.pid
                ns_link = os.readlink(f"/proc/{pid1}/ns/pid")
                n.exec(["systemd-run", "--unit=busy", "sleep", "1000"])
                n.popen(["sleep", "1000"])
                assert len(_pid_ns_members(ns_link)) > 3
                assert node_dir.is_dir() and cgroup.is_dir()
                assert False, "deliberate failure inside the node"
    assert _pid_ns_members(ns_link) == []
    assert not node_dir.exists()
    assert not cgroup.exists()
    assert h.mounts_under(h.RUN_DIR) == [] and h.mounts_under(h.CACHE_DIR) == []
    assert not [ns for ns in _netns_names() if ns.startswith(prefix)]
    saved = sorted(h.LOGS_DIR.glob(f"*-{node_dir.name}.log"))
    assert saved and "deliberate failure" in saved[-1].read_text()


_CRASHER = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.system import harness as h
lab = h.load_netns().Lab()
host = lab.add_host("crash", "198.18.0.31/24")
node = h.SystemdNode("crash", netns=host.ns, rootfs={rootfs!r}).__enter__()
print(node.dir, node._cgroup, node.pid, host.ns, flush=True)
time.sleep(600)
"""


def test_crashed_run_is_cleaned_up(rootfs):
    """SIGKILL the process running a node: the node dies with it, cleanup_stale() removes the rest."""
    p = subprocess.Popen([sys.executable, "-c", _CRASHER.format(repo=str(h.REPO), rootfs=str(rootfs))],
                         stdout=subprocess.PIPE, text=True, cwd=h.REPO)
    try:
        line = p.stdout.readline().split()
        assert len(line) == 4, "the crasher did not boot its node"
        node_dir, cgroup, pid1, ns = Path(line[0]), Path(line[1]), int(line[2]), line[3]
        ns_link = os.readlink(f"/proc/{pid1}/ns/pid")
    finally:
        p.kill()
        p.wait()
    # the node dies with its owner (PR_SET_PDEATHSIG + unshare --kill-child)
    h.wait_for(lambda: not _pid_ns_members(ns_link), timeout=10, what="the orphaned node to die")
    assert node_dir.is_dir()  # what a crash leaves (and its netns, unless another Lab swept it)
    removed = h.cleanup_stale()
    assert str(node_dir) in removed
    assert not node_dir.exists() and not cgroup.exists() and ns not in _netns_names()
    assert h.mounts_under(h.RUN_DIR) == []
