"""HA roles for real: USR1/USR2 and the API move the VIP between dr-provision processes.

Namespace tests (root): a bridge, node namespaces n1 198.18.0.11, n2 .12 (n3 .13), a client
namespace .50, VIP 198.18.0.100/24 on eth0; every node is a real `dr-provision` under
`ip netns exec` with --ha-interface eth0 and the default --ha-join (the VIP). The lab and every
process in it are torn down even when a test fails.

Loopback test (anywhere): two nodes on 127.0.0.1 with --ha-interface lo and an interface
script that records its calls.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.drpserver import BIN, DrpServer
from tests.hanet import REALTIME, VIP, VIP_CIDR, Cluster, Writer, make_token
from tests.netns import lab, requires_root  # noqa: F401  (lab is a fixture)
from tests.test_vip import start_sniffer

pytestmark = pytest.mark.timeout(120)


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A standalone node's base root and the HA token made on it (the guide's first step)."""
    return make_token(tmp_path_factory.mktemp("seed"))


@pytest.fixture
def cluster(lab, seed, tmp_path):  # noqa: F811
    """cluster(nodes=2, start=True) -> Cluster; its processes are killed at the end."""
    made: list[Cluster] = []

    def make(nodes: int = 2, start: bool = True) -> Cluster:
        c = Cluster(lab, tmp_path, nodes=nodes, seed=seed)
        made.append(c)
        if start:
            c.start()
        return c
    yield make
    for c in made:
        c.close()


def wait_for(pred, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def vip_holders(c: Cluster) -> list[str]:
    return [h.name for h in [*c.hosts, c.client_host] if VIP_CIDR in h.addresses()]


def sniffed(sniffer: subprocess.Popen) -> list[dict]:
    out, err = sniffer.communicate(timeout=20)
    lines = out.strip().splitlines()
    assert lines, err
    return json.loads(lines[-1])


def names(resp) -> set[str]:
    assert resp.status_code == 200, resp.text
    return {p["Name"] for p in resp.json()}


# --- namespace tests (root) ----------------------------------------------------------------------

@requires_root
def test_signals_move_the_vip(cluster):
    c = cluster(2)
    n1, n2 = c.nodes
    assert vip_holders(c) == ["n1"]
    info = c.api("GET", "/info").json()
    assert (info["id"], info["ha_is_active"], info["ha_status"]) == ("n1", True, "Up")
    assert n2.info()["ha_status"] == "In-Sync" and not n2.info()["ha_is_active"]
    assert c.client_host.neighbour_mac(VIP) == n1.lab_host.mac
    assert "drp_ha_role_active 1.0" in n1.metrics()
    assert n1.ha_state() == {"Passive": False} and n2.ha_state() == {"Passive": True}

    n1.signal(signal.SIGUSR1)  # already active
    n1.wait_log("already active; ignoring the switch to active")
    sniffer = start_sniffer(c.client_host, count=5, timeout=10)
    n1.signal(signal.SIGUSR2)
    wait_for(lambda: vip_holders(c) == [], what="n1 to release the VIP")
    assert n1.info()["ha_is_active"] is False
    resp = n1.http.request("POST", "/params", json={"Name": "refused", "Schema": {}})
    assert resp.status_code == 503 and "is passive" in resp.text, resp.text
    n2.signal(signal.SIGUSR1)
    n2.wait_log("active: accepting writes")
    assert vip_holders(c) == ["n2"]

    pkts = sniffed(sniffer)
    assert len(pkts) == 5, pkts
    for p in pkts:
        assert p == dict(p, src=n2.lab_host.mac, dst="ff:ff:ff:ff:ff:ff", hwsrc=n2.lab_host.mac,
                         psrc=VIP, pdst=VIP)
    wait_for(lambda: c.client_host.neighbour_mac(VIP) == n2.lab_host.mac, 5,
             "the client's neighbour entry to move to n2")
    info = c.api("GET", "/info").json()
    assert (info["id"], info["ha_is_active"]) == ("n2", True)
    assert c.api("POST", "/params", json={"Name": "after-signals", "Schema": {}}).status_code == 201
    n1.wait_log(REALTIME)  # the old active follows the new one
    wait_for(lambda: "after-signals" in names(n1.http.request("GET", "/params")), 10,
             "n1 to have the write made on n2")
    assert n1.ha_state() == {"Passive": True} and n2.ha_state() == {"Passive": False}
    assert "drp_ha_role_active 1.0" in n2.metrics()
    assert "drp_ha_role_active 0.0" in n1.metrics()
    log = n2.logs()
    for step in ("switching from passive to active", "split-brain guard: no other active",
                 "active: stopped following at seq", "active: epoch", "active: VIP",
                 "gratuitous ARP", "active: accepting writes"):
        assert step in log, step
    for step in ("handover: refusing new writes", "handover: every In-Sync passive acked",
                 "VIP 198.18.0.100/24 removed from eth0", "passive: following the active"):
        assert step in n1.logs(), step
    assert n1.logs().count("VIP 198.18.0.100/24 removed from eth0") == 1  # said once
    assert log.count("VIP 198.18.0.100/24 added") == 1


@requires_root
def test_api_switch_loses_no_acknowledged_write(cluster):
    c = cluster(3)
    n1, n2, n3 = c.nodes
    writer = Writer(c.client_host.ns, loops=3, prefix="swap")
    try:
        writer.first_ack_after(time.monotonic())
        sniffer = start_sniffer(c.client_host, count=5, timeout=10)
        # through the VIP: the answer gets out before the VIP goes
        resp = c.api("POST", "/system/passive")
        assert resp.status_code == 200, resp.text
        assert resp.json()["ha_is_active"] is False
        wait_for(lambda: "n1" not in vip_holders(c), what="n1 to release the VIP")
        released = time.time()  # n1's own announcements (its second burst) came before this
        # the passive is asked at its own address, with drpcli, as an operator would
        out = c.client_host.run([str(BIN / "drpcli"), "system", "active"],
                                env={**n2.drpcli_env(), "RS_ENDPOINT": n2.url}, timeout=60)
        assert json.loads(out.stdout)["ha_is_active"] is True
        assert vip_holders(c) == ["n2"]
        assert {p["hwsrc"] for p in sniffed(sniffer) if p["t"] >= released} == {n2.lab_host.mac}
        wait_for(lambda: c.client_host.neighbour_mac(VIP) == n2.lab_host.mac, 5,
                 "the client's neighbour entry to move to n2")
        writer.first_ack_after(time.monotonic())  # writes go on, now on n2
    finally:
        writer.stop()
    acked = {name for _, _, name in writer.acked}
    assert len(acked) > 10
    assert not acked - names(c.api("GET", "/params")), "acknowledged writes lost on n2"
    for node in (n1, n3):
        wait_for(lambda: node.info()["ha_status"] == "In-Sync"
                 and node.info()["ha_active_id"] == "n2", 20, f"{node} to follow n2")
        n2_head = c.api("GET", "/params").json()
        wait_for(lambda: len(node.http.request("GET", "/params").json()) >= len(n2_head), 10,
                 "the passive to catch up")
        assert not acked - names(node.http.request("GET", "/params"))
    resp = n2.http.request("POST", "/system/active")
    assert resp.status_code == 200
    n2.wait_log("already active; ignoring the switch to active")


@requires_root
def test_guard_refuses_a_second_active_and_stale_vip_goes(cluster):
    c = cluster(3, start=False)
    n1 = c.make_node(0, passive=False).start()
    n1.wait_log("active: accepting writes")
    # n2 comes up passive with the VIP still on its interface (a crash left it there)
    c.hosts[1].run(["ip", "addr", "add", VIP_CIDR, "dev", "eth0"])
    n2 = c.make_node(1, passive=True).start()
    n2.wait_log(REALTIME)
    assert "removing VIP 198.18.0.100/24 left behind on eth0" in n2.logs()
    assert vip_holders(c) == ["n1"]

    # USR1 to a passive while the active serves: refused, it keeps following
    n2.signal(signal.SIGUSR1)
    n2.wait_log("refusing to become active")
    assert "n1 serves as active" in n2.logs() and "switch it to passive first" in n2.logs()
    resp = n2.http.request("POST", "/system/active")
    assert resp.status_code == 409 and "n1 serves as active" in resp.text, resp.text
    assert n2.info()["ha_is_active"] is False and n2.ha_state() == {"Passive": True}
    assert vip_holders(c) == ["n1"]
    assert c.api("POST", "/params", json={"Name": "still-n1", "Schema": {}}).status_code == 201
    wait_for(lambda: "still-n1" in names(n2.http.request("GET", "/params")), 10,
             "n2 to keep following")

    # a node configured to start active while another is active: stays passive, follows
    n3 = c.make_node(2, passive=False).start()
    n3.wait_log(REALTIME)
    assert "starting active: decided by --ha-passive=false" in n3.logs()
    assert "refusing to become active: VIP 198.18.0.100 is answered by" in n3.logs()
    assert n3.ha_state() == {"Passive": True} and n3.info()["ha_is_active"] is False
    assert vip_holders(c) == ["n1"]


@requires_root
def test_crash_failover_stale_state_and_sigterm(cluster):
    c = cluster(2)
    n1, n2 = c.nodes
    assert c.api("POST", "/params", json={"Name": "before-crash", "Schema": {}}).status_code == 201
    n1.kill()  # kill -9: its namespace keeps the VIP
    assert vip_holders(c) == ["n1"]
    n2.signal(signal.SIGUSR1)
    n2.wait_log("active: accepting writes")
    assert "no dr-provision answers there (a crashed node?); taking it over" in n2.logs()
    wait_for(lambda: c.client_host.neighbour_mac(VIP) == n2.lab_host.mac, 5,
             "the client's neighbour entry to move to n2")
    assert c.api("GET", "/info").json()["id"] == "n2"
    assert "before-crash" in names(c.api("GET", "/params"))

    # the old active restarts with its stale ha-state.json (active) and its leftover VIP
    assert n1.ha_state() == {"Passive": False}
    n1.start()
    n1.wait_log(REALTIME)
    log = n1.logs()
    assert "removing VIP 198.18.0.100/24 left behind on eth0" in log
    assert f"decided by {n1.base_root / 'ha-state.json'}" in log
    assert "refusing to become active" in log and "n2 serves as active" in log
    assert n1.ha_state() == {"Passive": True}
    assert vip_holders(c) == ["n2"]

    # SIGTERM on the active: the VIP goes before the process exits
    assert n2.stop() == 0
    assert vip_holders(c) == []
    assert "VIP 198.18.0.100/24 removed from eth0" in n2.logs()


# --- loopback (no root) --------------------------------------------------------------------------

RECORDER = "#!/bin/sh\necho \"$*\" >> \"$VIP_LOG\"\n[ \"$1\" = remove ] && sleep 0.3\nexit 0\n"


def test_loopback_signals_and_state_file(tmp_path, seed):
    script = tmp_path / "vip-script"
    script.write_text(RECORDER)
    script.chmod(0o755)
    a_root = tmp_path / "a"
    shutil.copytree(seed[0], a_root)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a's sd_notify STATUS lines
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    a = DrpServer(a_root, env={"VIP_LOG": str(tmp_path / "a.calls"),
                               "NOTIFY_SOCKET": str(tmp_path / "notify")})
    b = DrpServer(tmp_path / "b", env={"VIP_LOG": str(tmp_path / "b.calls")})
    common = ["--ha-enabled", "true", "--ha-id", "lo-test", "--ha-address", "127.0.0.100/8",
              "--ha-interface", "lo", "--ha-interface-script", str(script),
              "--ha-token", seed[1]]
    a.args = [*common, "--drp-id", "a", "--ha-join", b.url + "/"]
    b.args = [*common, "--drp-id", "b", "--ha-join", a.url + "/", "--ha-passive", "true"]

    def calls(who: str) -> list[str]:
        path = tmp_path / f"{who}.calls"
        return path.read_text().splitlines() if path.exists() else []

    def state(server) -> dict:
        return json.loads((server.base_root / "ha-state.json").read_text())

    statuses: list[str] = []

    def status() -> str:
        while True:
            try:
                msg = notify.recv(4096).decode()
            except BlockingIOError:
                return statuses[-1] if statuses else ""
            statuses.extend(m[7:] for m in msg.splitlines() if m.startswith("STATUS="))
    try:
        a.start()
        a.wait_log("active: accepting writes")
        assert "starting active: decided by --ha-passive=false (no ha-state.json yet)" in a.logs()
        b.start()
        b.wait_log(REALTIME)
        assert calls("a") == ["remove lo 127.0.0.100/8", "add lo 127.0.0.100/8"]
        assert calls("b") == ["remove lo 127.0.0.100/8"]  # a leftover VIP goes at start
        assert state(a) == {"Passive": False} and state(b) == {"Passive": True}
        assert status().startswith("active: serving on 127.0.0.100/8 (epoch")

        a.signal(signal.SIGUSR1)
        a.wait_log("already active; ignoring the switch to active")
        b.signal(signal.SIGUSR1)  # a is active: the guard (via --ha-join) refuses
        b.wait_log("refusing to become active: https://127.0.0.1")

        a.signal(signal.SIGUSR2)
        a.wait_log("passive: following the active")
        assert calls("a")[-1] == "remove lo 127.0.0.100/8" and state(a) == {"Passive": True}
        assert status().startswith("passive: ")
        assert "handover: refusing writes, waiting for passives" in statuses
        b.signal(signal.SIGUSR1)
        b.wait_log("active: accepting writes")
        assert calls("b")[-1] == "add lo 127.0.0.100/8" and state(b) == {"Passive": False}
        wait_for(lambda: a.logs().count(REALTIME) >= 1 and "connected to active b" in a.logs(),
                 20, "a to follow b")
        with b.client() as http:
            info = http.get("/info").json()
        assert (info["id"], info["ha_is_active"]) == ("b", True)

        # a second switch arriving mid-switch is queued, then carried out in order (the
        # script's `remove` takes 0.3 s, so the USR1 lands while the handover runs)
        b.signal(signal.SIGUSR2)
        time.sleep(0.1)
        b.signal(signal.SIGUSR1)
        wait_for(lambda: b.logs().count("active: accepting writes") >= 2, 20,
                 "b to be active again")
        assert calls("b")[-2:] == ["remove lo 127.0.0.100/8", "add lo 127.0.0.100/8"]
        assert state(b) == {"Passive": False}
        log = b.logs()
        assert "switch to active queued: the switch to passive is still in progress" in log
        assert log.rindex("switching from active to passive") < \
            log.rindex("switching from passive to active")

        # SIGTERM on the active removes the VIP; the state file decides the next start
        assert b.stop() == 0
        assert calls("b")[-1] == "remove lo 127.0.0.100/8"
        assert a.stop() == 0
        a.start()
        a.wait_log(f"starting passive: decided by {a_root / 'ha-state.json'}")
        wait_for(lambda: status().startswith("passive: connecting to https://127.0.0.1"), 10,
                 "the STATUS line of a restarted passive")
    finally:
        a.kill()
        b.kill()
        notify.close()
