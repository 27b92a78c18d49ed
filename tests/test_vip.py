"""drp.ha.vip against real network namespaces (root) plus script/error handling (anywhere).

vip functions act on the current network namespace, so the namespace tests drive them in a
subprocess started inside a lab host (`ip netns exec`).
"""

import json
import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from drp.ha import vip
from tests.netns import lab, requires_root  # noqa: F401  (lab is a fixture)

REPO = Path(__file__).resolve().parents[1]
VIP = "198.18.0.100"
VIP_CIDR = f"{VIP}/24"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}

SNIFFER = textwrap.dedent("""
    import json, sys, time
    import scapy.layers.l2 as l2, scapy.sendrecv as sr
    from scapy.config import conf
    conf.verb = 0
    ip, count, timeout, kind = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    sender = ip if kind == "garp" else "0.0.0.0"  # an RFC 5227 probe has no sender address
    def wanted(p):
        a = p.getlayer(l2.ARP)
        return a is not None and a.op == 1 and a.psrc == sender and a.pdst == ip
    pkts = sr.sniff(iface="eth0", lfilter=wanted, count=count, timeout=timeout,
                    started_callback=lambda: print("ready", flush=True))
    print(json.dumps([dict(t=float(p.time), src=p.src, dst=p.dst, hwsrc=p[l2.ARP].hwsrc,
                           hwdst=p[l2.ARP].hwdst, psrc=p[l2.ARP].psrc, pdst=p[l2.ARP].pdst)
                      for p in pkts]))
""")


def call(host, expr: str):
    """Evaluate `await vip.<expr>` in host's namespace; returns its JSON-able result."""
    code = (f"import json, trio\nfrom drp.ha import vip\n"
            f"async def main():\n    print(json.dumps(await vip.{expr}))\ntrio.run(main)")
    out = host.run([sys.executable, "-c", code], cwd=REPO, env=ENV, timeout=30).stdout
    return json.loads(out.strip().splitlines()[-1])


def start_sniffer(host, count: int, timeout: float, kind: str = "garp") -> subprocess.Popen:
    """Capture `count` ARP requests for the VIP: gratuitous ("garp") or probes ("probe")."""
    p = host.popen([sys.executable, "-c", SNIFFER, VIP, str(count), str(timeout), kind],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=ENV)
    ready, _, _ = select.select([p.stdout], [], [], 10)
    assert ready and p.stdout.readline().strip() == "ready", p.stderr.read() if p.poll() else "no ready"
    return p


@pytest.fixture
def net(lab):  # noqa: F811
    return (lab.add_host("n1", "198.18.0.11/24"), lab.add_host("n2", "198.18.0.12/24"),
            lab.add_host("client", "198.18.0.50/24"))


# --- namespace tests (root) ----------------------------------------------------------------------

@requires_root
def test_add_remove_idempotent(net):
    n1, n2, _ = net
    assert call(n1, f"has_vip('eth0', {VIP_CIDR!r})") is False
    for _ in range(2):
        call(n1, f"add_vip('eth0', {VIP_CIDR!r})")
    assert n1.addresses().count(VIP_CIDR) == 1
    assert VIP_CIDR not in n2.addresses()
    assert call(n1, f"has_vip('eth0', {VIP_CIDR!r})") is True
    assert call(n1, f"has_vip('eth0', '{VIP}/32')") is False  # prefix must match too
    assert call(n2, f"has_vip('eth0', {VIP_CIDR!r})") is False
    for _ in range(2):
        call(n1, f"remove_vip('eth0', {VIP_CIDR!r})")
    assert n1.addresses() == [n1.addr]
    assert call(n1, f"has_vip('eth0', {VIP_CIDR!r})") is False


@requires_root
def test_garp_moves_client_neighbour(net):
    n1, n2, client = net
    call(n1, f"add_vip('eth0', {VIP_CIDR!r})")
    assert client.resolve(VIP) == n1.mac
    sniffer = start_sniffer(client, count=4, timeout=10)
    # failover: n1 drops the VIP, n2 takes it and announces (2 bursts of 2, 0.5 s apart)
    call(n1, f"remove_vip('eth0', {VIP_CIDR!r})")
    call(n2, f"add_vip('eth0', {VIP_CIDR!r})")
    assert client.neighbour_mac(VIP) == n1.mac  # stale until announced
    call(n2, f"garp_schedule('eth0', {VIP!r}, count=2, interval=0.1, second_burst_after=0.5)")
    out, err = sniffer.communicate(timeout=15)
    pkts = json.loads(out.strip().splitlines()[-1])
    assert len(pkts) == 4, (pkts, err)
    for p in pkts:
        assert p == dict(p, src=n2.mac, dst="ff:ff:ff:ff:ff:ff", hwsrc=n2.mac,
                         hwdst="00:00:00:00:00:00", psrc=VIP, pdst=VIP)
    assert pkts[2]["t"] - pkts[1]["t"] >= 0.4  # the second burst came later
    assert client.neighbour_mac(VIP) == n2.mac


@requires_root
def test_send_gratuitous_arp_burst(net):
    _, n2, client = net
    sniffer = start_sniffer(client, count=3, timeout=10)
    call(n2, f"send_gratuitous_arp('eth0', {VIP_CIDR!r}, count=3, interval=0.05)")
    pkts = json.loads(sniffer.communicate(timeout=15)[0].strip().splitlines()[-1])
    assert [p["hwsrc"] for p in pkts] == [n2.mac] * 3


@requires_root
def test_arp_probe(net):
    n1, n2, _ = net
    assert call(n2, f"arp_probe('eth0', {VIP!r})") is None  # nobody holds it
    call(n1, f"add_vip('eth0', {VIP_CIDR!r})")
    t0 = time.monotonic()
    assert call(n2, f"arp_probe('eth0', {VIP!r}, timeout=5.0)") == n1.mac
    assert time.monotonic() - t0 < 4.0  # returns on the first answer, not at the timeout
    assert call(n1, f"arp_probe('eth0', {VIP!r})") is None  # our own MAC does not count
    n2.run(["ip", "addr", "flush", "dev", "eth0"])  # works without any IPv4 address
    assert call(n2, f"arp_probe('eth0', {VIP!r})") == n1.mac
    call(n1, f"remove_vip('eth0', {VIP_CIDR!r})")
    assert call(n2, f"arp_probe('eth0', {VIP!r})") is None


@requires_root
def test_arp_probe_sends_two_requests_across_its_window(net):
    """One lost frame must not make the split-brain guard miss a holder of the VIP."""
    _, n2, client = net
    sniffer = start_sniffer(client, count=2, timeout=10, kind="probe")
    assert call(n2, f"arp_probe('eth0', {VIP!r}, timeout=1.0)") is None
    pkts = json.loads(sniffer.communicate(timeout=15)[0].strip().splitlines()[-1])
    assert [p["hwsrc"] for p in pkts] == [n2.mac] * 2
    assert 0.4 <= pkts[1]["t"] - pkts[0]["t"] <= 0.9  # the second at half the window


@requires_root
def test_mac_and_exists_in_namespace(net):
    n1, _, _ = net
    code = "from drp.ha import vip; print(vip.interface_mac('eth0'), vip.interface_exists('eth0'))"
    assert n1.run([sys.executable, "-c", code], cwd=REPO, env=ENV).stdout.split() == [n1.mac, "True"]


# --- no namespace needed ------------------------------------------------------------------------

@pytest.fixture
def script(tmp_path):
    log = tmp_path / "argv.log"
    s = tmp_path / "vip-script"
    s.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {log}\necho --- >> {log}\n"
                 "[ -n \"$FAIL\" ] && { echo 'boom: cannot do it' >&2; exit 3; }\nexit 0\n")
    s.chmod(0o755)
    return s, log


async def test_script_mode_exact_args(script):
    s, log = script
    await vip.add_vip("ethX", VIP_CIDR, script=str(s))
    await vip.remove_vip("ethX", VIP_CIDR, script=str(s))
    assert log.read_text().split("---\n")[:2] == [
        f"add\nethX\n{VIP_CIDR}\n", f"remove\nethX\n{VIP_CIDR}\n"]


async def test_script_failure_is_vip_error(script, monkeypatch):
    s, _ = script
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(vip.VipError, match=r"exited 3: boom: cannot do it"):
        await vip.add_vip("ethX", VIP_CIDR, script=str(s))
    with pytest.raises(vip.VipError, match="interface script"):
        await vip.add_vip("ethX", VIP_CIDR, script=str(s.parent / "missing"))


async def test_errors_are_one_line():
    assert vip.interface_exists("lo") and not vip.interface_exists("drp-nope0")
    for coro in (vip.has_vip("drp-nope0", VIP_CIDR), vip.add_vip("drp-nope0", VIP_CIDR),
                 vip.remove_vip("drp-nope0", VIP_CIDR), vip.arp_probe("drp-nope0", VIP)):
        with pytest.raises(vip.VipError, match="'drp-nope0' does not exist") as e:
            await coro
        assert "\n" not in str(e.value)
    with pytest.raises(vip.VipError, match="does not exist"):
        vip.interface_mac("drp-nope0")
    with pytest.raises(vip.VipError, match="invalid VIP"):
        await vip.add_vip("lo", "not-an-ip/24")
    with pytest.raises(vip.VipError, match="only IPv4"):
        await vip.add_vip("lo", "2001:db8::1/64")
