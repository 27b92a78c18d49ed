"""DHCP for real (root): a standalone dr-provision in a lab namespace serving a subnet, busybox
udhcpc and ISC dhclient in other namespaces on the same bridge. Addresses from the range and
from a reservation, renewals at T1, release, reclaiming expired leases, relays' giaddr,
OnlyReservations, bad packets; every lease checked through `drpcli leases`.
"""
from __future__ import annotations

import datetime
import json
import time

import pytest

from tests.dhcpclients import Dhclient, Udhcpc, client_host, mac_of
from tests.drpserver import BIN
from tests.hanet import Node
from tests.netns import lab, requires_root  # noqa: F401  (lab is a fixture)

pytestmark = [requires_root, pytest.mark.timeout(120)]
SERVER = "198.18.0.2"
LEASE_TIME = 6  # T1 = 3 s: the clients renew within a test


@pytest.fixture
def drp(lab, tmp_path):  # noqa: F811
    host = lab.add_host("srv", f"{SERVER}/24")
    node = Node(host, tmp_path / "drp", ["--drp-id", "srv", "--disable-dhcp", "false",
                                          "--dhcp-ifs", "eth0", "--disable-tftp", "false"])
    try:
        node.start()
        # the API answers first; DHCP and TFTP start right after it (Info says when)
        node.wait_info(lambda info: info["dhcp_enabled"] and info["tftp_enabled"], timeout=20)
        yield node
    finally:
        node.close()


def drpcli(node, *args: str) -> dict | list:
    return node.drpcli_in(*args, timeout=30)


def make_subnet(node, **fields) -> dict:
    subnet = {"Name": "lab", "Subnet": "198.18.0.0/24", "ActiveStart": "198.18.0.150",
              "ActiveEnd": "198.18.0.160", "ActiveLeaseTime": LEASE_TIME, "Enabled": True,
              "Options": [{"Code": 3, "Value": "198.18.0.1"}, {"Code": 6, "Value": SERVER},
                          {"Code": 15, "Value": "lab.test"}], **fields}
    return drpcli(node, "subnets", "create", json.dumps(subnet))


def lease_of(node, addr: str) -> dict:
    return drpcli(node, "leases", "show", addr)


def expires(lease: dict) -> float:
    return datetime.datetime.fromisoformat(lease["ExpireTime"].replace("Z", "+00:00")).timestamp()


def test_info_reports_dhcp_and_tftp_serving(drp):
    info = drp.info()
    assert (info["dhcp_enabled"], info["dhcp_port"]) == (True, 67), info
    assert (info["tftp_enabled"], info["tftp_port"]) == (True, 69), info
    assert info["errors"] == []


CLIENTS = {"udhcpc": Udhcpc, "dhclient": Dhclient}
MASK = {"udhcpc": "24", "dhclient": "255.255.255.0"}  # as each hands it to its script


def wait_state(node, addr: str, state: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while (lease := lease_of(node, addr))["State"] != state:
        assert time.monotonic() < deadline, lease
        time.sleep(0.1)
    return lease


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_an_address_from_the_range_renewed_and_released(drp, lab, tmp_path, name):  # noqa: F811
    make_subnet(drp)
    host = client_host(lab, "c1", "198.18.0.201/24")
    client = CLIENTS[name](host, tmp_path).start()
    try:
        bound = client.wait_event("bound", timeout=30)
        assert bound["ip"].startswith("198.18.0.1") and 150 <= int(bound["ip"].split(".")[-1]) <= 160
        assert (bound["mask"], bound["router"], bound["dns"], bound["domain"], bound["serverid"],
                bound["lease"]) == (MASK[name], "198.18.0.1", SERVER, "lab.test", SERVER,
                                    str(LEASE_TIME)), bound
        assert bound["boot_file"] == "", bound  # no PXE options asked, none configured
        assert any(a.startswith(bound["ip"] + "/") for a in host.addresses())
        lease = lease_of(drp, bound["ip"])
        assert (lease["Token"], lease["Strategy"], lease["State"], lease["Via"]) == (
            mac_of(host), "MAC", "ACK", SERVER), lease
        first_expiry = expires(lease)
        assert abs(first_expiry - (bound["t"] + LEASE_TIME)) < 2
        listed = drpcli(drp, "leases", "list")
        assert [item["Addr"] for item in listed] == [bound["ip"]]

        count = len(client.events())
        client.renew()  # udhcpc: SIGUSR1 (busybox stretches short leases); dhclient: T1, 3 s
        renewed = client.wait_event("renew", after=count, timeout=LEASE_TIME + 5)
        assert renewed["ip"] == bound["ip"] and renewed["serverid"] == SERVER, renewed
        assert expires(lease_of(drp, bound["ip"])) > first_expiry

        client.release()
        wait_state(drp, bound["ip"], "FREE")
    finally:
        client.stop()


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_reservation_with_its_boot_options(drp, lab, tmp_path, name):  # noqa: F811
    make_subnet(drp)
    host = client_host(lab, "c2", "198.18.0.202/24")
    mac = mac_of(host)
    drpcli(drp, "reservations", "create", json.dumps({
        "Addr": "198.18.0.50", "Token": mac, "NextServer": SERVER,
        "Options": [{"Code": 67, "Value": "lpxelinux.0"}]}))
    client = CLIENTS[name](host, tmp_path).start()
    try:
        bound = client.wait_event("bound", timeout=30)
        assert bound["ip"] == "198.18.0.50" and bound["serverid"] == SERVER, bound
        assert bound["boot_file"] == "lpxelinux.0" and bound["siaddr"] == SERVER, bound
        lease = lease_of(drp, "198.18.0.50")
        assert (lease["Token"], lease["State"], lease["Duration"]) == (mac, "ACK", 7200), lease
        client.release()
        wait_state(drp, "198.18.0.50", "FREE")
    finally:
        client.stop()


def test_only_reservations_answers_nobody_else(drp, lab, tmp_path):  # noqa: F811
    make_subnet(drp, OnlyReservations=True)
    host = client_host(lab, "c3", "198.18.0.203/24")
    out = host.run(["udhcpc", "-i", "eth0", "-n", "-q", "-t", "3", "-T", "1", "-s", "/bin/true"],
                   check=False, timeout=30)
    assert out.returncode != 0, out
    assert drpcli(drp, "leases", "list") == []


def test_an_expired_lease_is_reclaimed_for_another_client(drp, lab, tmp_path):  # noqa: F811
    make_subnet(drp, ActiveStart="198.18.0.150", ActiveEnd="198.18.0.150", ActiveLeaseTime=2)
    first = Udhcpc(client_host(lab, "c4", "198.18.0.204/24"), tmp_path).start()
    first_bound = first.wait_event("bound")
    assert first_bound["ip"] == "198.18.0.150"
    first.stop()  # kill -9: no release; the lease runs out
    second_host = client_host(lab, "c5", "198.18.0.205/24")
    second = Udhcpc(second_host, tmp_path).start()
    try:
        bound = second.wait_event("bound", timeout=30)
        assert bound["ip"] == "198.18.0.150"
        assert bound["t"] - first_bound["t"] >= 2 - 0.1  # not before the old one ran out
        assert lease_of(drp, "198.18.0.150")["Token"] == mac_of(second_host)
    finally:
        second.stop()


def test_bad_packets_are_dropped_logged_and_serving_goes_on(drp, lab, tmp_path):  # noqa: F811
    make_subnet(drp)
    sender = lab.add_host("bad", "198.18.0.210/24")
    garbage = [b"", b"\x01", b"\x01\x01\x06\x00" + b"\xff" * 300,  # wrong magic cookie
               b"\x01\x01\x06\x00" + bytes(232) + b"\x63\x82\x53\x63" + b"\x35\x09\x01",  # 53 too long
               b"\x02" + bytes(300)]  # a BOOTREPLY
    script = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              f"for p in {garbage!r}:\n  s.sendto(p,('{SERVER}',67))\n")
    sender.run(["python3", "-c", script])
    drp.wait_log("dropped a bad packet", timeout=10)
    client = Udhcpc(client_host(lab, "c6", "198.18.0.206/24"), tmp_path).start()
    try:
        assert client.wait_event("bound")["serverid"] == SERVER
    finally:
        client.stop()
    assert drp.proc.poll() is None


def test_relayed_request_gets_the_subnet_of_its_giaddr(drp, lab):  # noqa: F811
    """A relay (giaddr 198.18.7.1) asks for a client on another subnet: the server offers from
    that subnet and answers the relay on port 67."""
    make_subnet(drp)
    make_subnet(drp, Name="far", Subnet="198.18.7.0/24", ActiveStart="198.18.7.10",
                ActiveEnd="198.18.7.20", Options=[{"Code": 3, "Value": "198.18.7.1"}])
    relay = lab.add_host("relay", "198.18.0.7/24")
    relay.run(["ip", "addr", "add", "198.18.7.1/24", "dev", "eth0"])  # its client-side address
    drp.lab_host.run(["ip", "route", "add", "198.18.7.0/24", "via", "198.18.0.7"])
    script = f"""
import socket
from scapy.all import BOOTP, DHCP, raw
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 67))
s.settimeout(5)
p = BOOTP(op=1, xid=0x1234, giaddr='198.18.7.1', hops=1,
          chaddr=bytes.fromhex('525400aabbcc') + bytes(10)) / DHCP(options=[
          ('message-type', 'discover'), 'end'])
s.sendto(raw(p), ('{SERVER}', 67))
data, peer = s.recvfrom(2048)
r = BOOTP(data)
opts = dict(o for o in r[DHCP].options if isinstance(o, tuple))
print(r.yiaddr, peer[1], opts.get('router'), opts.get('message-type'))
"""
    out = relay.run([str(BIN / "python"), "-c", script], timeout=30).stdout.split()
    assert out[1:] == ["67", "198.18.7.1", "2"], out
    assert out[0].startswith("198.18.7.") and 10 <= int(out[0].split(".")[-1]) <= 20, out


def test_tftp_from_the_node(drp, lab, tmp_path):  # noqa: F811
    """TFTP runs beside DHCP on a standalone node: tftp-hpa fetches a file from tftpboot."""
    (drp.base_root / "tftpboot").mkdir(exist_ok=True)
    (drp.base_root / "tftpboot" / "hello.ipxe").write_text("#!ipxe\necho hello\n")
    host = lab.add_host("tc", "198.18.0.220/24")
    out = host.run(["tftp", SERVER, "-c", "get", "hello.ipxe", str(tmp_path / "got")], timeout=30)
    assert (tmp_path / "got").read_text() == "#!ipxe\necho hello\n", out

