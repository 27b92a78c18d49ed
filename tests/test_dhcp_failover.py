"""The provisioning plane across HA switches (root): two nodes in lab namespaces, DHCP and TFTP
on, a busybox udhcpc client and a TFTP client on the same bridge, all through the VIP.

- Only the active serves DHCP and TFTP (Info says so on each node).
- A client leased from the old active renews with the new one and keeps its address, after a
  planned switch and after kill -9 + USR1: its lease was replicated before the ACK left.
- A TFTP download cut by a kill -9 of the active completes when the client retries.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import pytest

from tests.dhcpclients import Udhcpc, client_host, mac_of
from tests.drpserver import BIN
from tests.hanet import VIP, Cluster, make_token
from tests.netns import lab, requires_root  # noqa: F401  (lab is a fixture)

pytestmark = [requires_root, pytest.mark.timeout(180)]
PLANE = ["--disable-dhcp", "false", "--dhcp-ifs", "eth0", "--disable-tftp", "false"]
LEASE_TIME = 6


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return make_token(tmp_path_factory.mktemp("seed"))


@pytest.fixture
def cluster(lab, seed, tmp_path):  # noqa: F811
    c = Cluster(lab, tmp_path, nodes=2, seed=seed, extra_args=PLANE)
    try:
        c.start()
        resp = c.api("POST", "/subnets", json={
            "Name": "lab", "Subnet": "198.18.0.0/24", "ActiveStart": "198.18.0.150",
            "ActiveEnd": "198.18.0.160", "ActiveLeaseTime": LEASE_TIME, "Enabled": True,
            "Options": [{"Code": 3, "Value": "198.18.0.1"}]})
        assert resp.status_code == 201, resp.text
        yield c
    finally:
        c.close()


def lease(c, addr: str) -> dict:
    resp = c.api("GET", f"/leases/{addr}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def renewed_after(client: Udhcpc, t: float, timeout: float = 20) -> dict:
    """The first renew/bound event stamped after t."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.events():
            if event["event"] in ("renew", "bound") and event["t"] > t:
                return event
        time.sleep(0.1)
    raise AssertionError(f"no renewal after the switch: {client.events()[-5:]}\n{client.log()[-2000:]}")


def test_only_the_active_serves_and_a_lease_survives_switches(cluster, lab, tmp_path):  # noqa: F811
    c = cluster
    n1, n2 = c.nodes
    assert (n1.info()["dhcp_enabled"], n1.info()["tftp_enabled"]) == (True, True)
    assert (n2.info()["dhcp_enabled"], n2.info()["tftp_enabled"]) == (False, False)
    host = client_host(lab, "pxe", "198.18.0.240/24")
    client = Udhcpc(host, tmp_path).start()
    try:
        bound = client.wait_event("bound")
        addr = bound["ip"]
        assert bound["serverid"] == VIP, bound  # clients renew with whoever holds the VIP
        assert lease(c, addr)["Token"] == mac_of(host)

        # planned: n1 hands over, n2 takes the VIP
        n1.signal(signal.SIGUSR2)
        n1.wait_log("handover: every In-Sync passive acked")
        n2.signal(signal.SIGUSR1)
        n2.wait_log("active: accepting writes")
        switched = time.time()
        n2.wait_info(lambda info: info["dhcp_enabled"])
        assert n1.info()["dhcp_enabled"] is False
        event = renewed_after(client, switched)
        assert (event["ip"], event["serverid"]) == (addr, VIP), event
        on_n2 = n2.http.request("GET", f"/leases/{addr}").json()
        assert on_n2["Token"] == mac_of(host)
        n1.wait_log("Stream switch to realtime streaming", timeout=30)

        # crash: kill -9 of n2, USR1 on n1
        n2.kill()
        n1.signal(signal.SIGUSR1)
        n1.wait_log("active: accepting writes", timeout=30)
        crashed = time.time()
        event = renewed_after(client, crashed, timeout=LEASE_TIME * 2 + 10)
        assert (event["ip"], event["serverid"]) == (addr, VIP), event
        assert lease(c, addr)["Token"] == mac_of(host)
    finally:
        client.stop()


def test_a_tftp_download_cut_by_a_failover_completes_on_retry(cluster, lab, tmp_path):  # noqa: F811
    c = cluster
    n1, n2 = c.nodes
    blob = os.urandom(24 << 20)
    digest = hashlib.sha256(blob).hexdigest()
    src = tmp_path / "boot.img"
    src.write_bytes(blob)
    up = c.client_host.run([str(BIN / "drpcli"), "files", "upload", str(src), "as", "boot.img"],
                           env={**n1.drpcli_env(), "RS_ENDPOINT": f"https://{VIP}:8092"},
                           timeout=120)
    assert json.loads(up.stdout)["Path"].endswith("boot.img"), up.stdout
    n2.wait_log("Stream switch to realtime streaming")
    got = tmp_path / "got.img"
    # a small block size makes the download take long enough to be cut
    first = c.client_host.popen(["tftp", "-m", "binary", VIP, "-c", "get", "files/boot.img",
                                 str(got)])
    time.sleep(1.0)
    assert first.poll() is None, "the download ended before the failover"
    n1.kill()
    n2.signal(signal.SIGUSR1)
    n2.wait_log("active: accepting writes", timeout=30)
    first.wait(timeout=60)
    for attempt in range(3):  # the client retries until it gets the whole file
        out = c.client_host.run(["tftp", "-m", "binary", VIP, "-c", "get", "files/boot.img",
                                 str(got)], check=False, timeout=120)
        if got.exists() and hashlib.sha256(got.read_bytes()).hexdigest() == digest:
            break
    else:
        raise AssertionError(f"TFTP from the new active did not give the file: {out}")
    assert attempt <= 1
