"""A PXE boot end to end (system test; root, qemu-system-x86 and ipxe-qemu): a QEMU VM on the lab
bridge boots with Debian's iPXE ROM from drp — address and boot file by DHCP, then an iPXE
script from the static port — standalone, and from the VIP across a planned switch and a
kill -9 + USR1.

How the marker is seen: on the VM's serial console.  iPXE prints through the BIOS (INT 10h); the
VM has no VGA, and `-machine graphics=off` makes SeaBIOS 1.16 mirror INT 10h text onto COM1
(its "sercon"), which QEMU writes to a file (tests/qemuvm.py).  The script `echo`es a marker
unique to the run plus the address iPXE holds, then drops to iPXE's shell so the VM stays put
(no fall-through to "No bootable device") until the test resets or quits it.

Boot file: the reservation's option 67 is a template over the request's options: option 77
(user class) "iPXE" gets the script's HTTP URL; anything else (a plain PXE ROM) would get
ipxe.pxe by TFTP.  Debian's ROM is iPXE, so its first DHCP already takes the HTTP branch.  The
TFTP path is covered by a second VM whose reservation hands a bare file name plus NextServer:
iPXE fetches that script by TFTP, and the script chains the HTTP one.
"""
from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from tests import qemuvm
from tests.drpserver import BIN
from tests.hanet import STATIC_PORT, VIP, Cluster, Node
from tests.netns import lab, requires_root  # noqa: F401  (lab is a fixture)
from tests.qemuvm import Vm

pytestmark = [requires_root, pytest.mark.timeout(240),
              pytest.mark.skipif(qemuvm.missing() is not None,
                                 reason=f"no PXE VM: {qemuvm.missing()}")]
SERVER = "198.18.0.2"
PLANE = ["--disable-dhcp", "false", "--dhcp-ifs", "eth0", "--disable-tftp", "false"]
MAC, ADDR = "52:54:00:00:15:77", "198.18.0.77"
TFTP_MAC, TFTP_ADDR = "52:54:00:00:15:78", "198.18.0.78"
BOOT_TIMEOUT = 60  # SeaBIOS + iPXE under TCG reach the script in ~10 s on 2 cores


def boot_file(server: str) -> str:
    return ('{{if eq (index . 77) "iPXE"}}'
            f"http://{server}:{STATIC_PORT}/files/boot.ipxe"
            "{{else}}ipxe.pxe{{end}}")


def boot_script(marker: str) -> str:
    # no `dhcp`: iPXE configured net0 before it fetched this
    return f"#!ipxe\necho {marker} ip=${{net0/ip}}\nshell\n"


def subnet(server: str) -> dict:
    return {"Name": "lab", "Subnet": "198.18.0.0/24", "ActiveStart": "198.18.0.150",
            "ActiveEnd": "198.18.0.160", "ActiveLeaseTime": 300, "Enabled": True,
            "Options": [{"Code": 3, "Value": "198.18.0.1"}, {"Code": 6, "Value": server}]}


def reservation(server: str) -> dict:
    return {"Addr": ADDR, "Token": MAC, "Strategy": "MAC",
            "Options": [{"Code": 67, "Value": boot_file(server)}]}


def drpcli(host, endpoint: str, env: dict, *args: str, cwd=None):
    out = host.run([str(BIN / "drpcli"), *args], env={**env, "RS_ENDPOINT": endpoint},
                   timeout=60, cwd=cwd)
    return json.loads(out.stdout) if out.stdout.strip() else None


def upload(host, endpoint: str, env: dict, tmp_path, name: str, text: str) -> None:
    """`drpcli files upload ./<name> as <name>`, as an operator does, from `host`."""
    (tmp_path / name).write_text(text)
    got = drpcli(host, endpoint, env, "files", "upload", f"./{name}", "as", name, cwd=tmp_path)
    assert got["Path"].endswith(name), got


def booted(vm: Vm, marker: str, addr: str, after: int = 0) -> int:
    """Wait for the script's marker line; the address iPXE printed must be `addr`."""
    end = vm.wait_console(marker, timeout=BOOT_TIMEOUT, after=after)
    vm.wait_console("\n", timeout=10, after=end)  # the whole line: the serial file grows as we read
    line = vm.console()[end:].split("\n", 1)[0]
    assert line.strip() == f"ip={addr}", (line, vm.console()[after:][-2000:])
    return end


def token_of_lease(lease: dict) -> tuple:
    provided = {o["Code"]: o["Value"] for o in lease.get("ProvidedOptions") or []}
    return lease["Token"], lease["State"], provided.get(77)


@pytest.fixture
def standalone(lab, tmp_path):  # noqa: F811
    host = lab.add_host("srv", f"{SERVER}/24")
    node = Node(host, tmp_path / "drp", ["--drp-id", "srv", *PLANE])
    try:
        node.start()
        yield node
    finally:
        node.close()


def test_a_vm_pxe_boots_from_standalone_drp(standalone, lab, tmp_path):  # noqa: F811
    node, host = standalone, standalone.lab_host
    env = node.drpcli_env()
    cli = lambda *a: drpcli(host, node.url, env, *a)  # noqa: E731
    cli("subnets", "create", json.dumps(subnet(SERVER)))
    cli("reservations", "create", json.dumps(reservation(SERVER)))
    marker = f"drp-pxe-{uuid.uuid4().hex[:12]}"
    upload(host, node.url, env, tmp_path, "boot.ipxe", boot_script(marker))

    vm = Vm(lab, "pxe1", MAC, tmp_path)
    try:
        vm.start()
        booted(vm, marker, ADDR)
        assert token_of_lease(cli("leases", "show", ADDR)) == (MAC, "ACK", "iPXE")
    finally:
        vm.close()


def test_the_bios_tftp_path_then_http(standalone, lab, tmp_path):  # noqa: F811
    """A bare boot file name and NextServer: iPXE fetches it by TFTP from tftpboot (files/…),
    and that script chains the HTTP one."""
    node, host = standalone, standalone.lab_host
    env = node.drpcli_env()
    cli = lambda *a: drpcli(host, node.url, env, *a)  # noqa: E731
    cli("subnets", "create", json.dumps(subnet(SERVER)))
    cli("reservations", "create", json.dumps({
        "Addr": TFTP_ADDR, "Token": TFTP_MAC, "Strategy": "MAC", "NextServer": SERVER,
        "Options": [{"Code": 67, "Value": "files/tftp.ipxe"}]}))
    marker = f"drp-pxe-{uuid.uuid4().hex[:12]}"
    tftp_marker = f"drp-tftp-{uuid.uuid4().hex[:12]}"
    upload(host, node.url, env, tmp_path, "boot.ipxe", boot_script(marker))
    upload(host, node.url, env, tmp_path, "tftp.ipxe",
           f"#!ipxe\necho {tftp_marker}\n"
           f"chain http://{SERVER}:{STATIC_PORT}/files/boot.ipxe\n")

    vm = Vm(lab, "pxe2", TFTP_MAC, tmp_path)
    try:
        vm.start()
        after = vm.wait_console(tftp_marker, timeout=BOOT_TIMEOUT)
        booted(vm, marker, TFTP_ADDR, after=after)
        assert "tftp://" in vm.console() or "files/tftp.ipxe" in vm.console(), vm.console()
        assert cli("leases", "show", TFTP_ADDR)["Token"] == TFTP_MAC
    finally:
        vm.close()


@pytest.fixture
def cluster(lab, tmp_path):  # noqa: F811
    # debug logs every decision ("ACK <addr> to <mac>"): they say which node answered
    c = Cluster(lab, tmp_path, nodes=2,
                extra_args=[*PLANE, "--log-level", "debug"])
    try:
        c.start()
        yield c
    finally:
        c.close()


def acks(node) -> int:
    return node.log_count(f"ACK {ADDR} to {MAC}")


def lease_via_vip(c) -> dict:
    resp = c.api("GET", f"/leases/{ADDR}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_vm_pxe_boots_from_the_vip_across_failovers(cluster, lab, tmp_path):  # noqa: F811
    c = cluster
    n1, n2 = c.nodes
    for path, body in (("/subnets", subnet(VIP)), ("/reservations", reservation(VIP))):
        resp = c.api("POST", path, json=body)
        assert resp.status_code == 201, resp.text
    marker = f"drp-pxe-{uuid.uuid4().hex[:12]}"
    env = n1.drpcli_env()
    upload(c.client_host, f"https://{VIP}:8092", env, tmp_path, "boot.ipxe", boot_script(marker))
    n2.wait_log("Stream switch to realtime streaming")

    vm = Vm(lab, "pxeha", MAC, tmp_path)
    try:
        t0 = time.monotonic()
        vm.start()
        end = booted(vm, marker, ADDR)
        assert token_of_lease(lease_via_vip(c)) == (MAC, "ACK", "iPXE")
        assert acks(n1) >= 1 and acks(n2) == 0, (acks(n1), acks(n2))
        first = lease_via_vip(c)["ExpireTime"]

        # planned switch: n1 hands over, n2 takes the VIP and the provisioning plane
        n1.signal(signal.SIGUSR2)
        n1.wait_log("handover: every In-Sync passive acked")
        n2.signal(signal.SIGUSR1)
        n2.wait_log("active: accepting writes")
        n2.wait_info(lambda info: info["dhcp_enabled"])
        assert n1.info()["dhcp_enabled"] is False
        end = booted(vm, marker, ADDR, after=vm.reset())
        assert acks(n2) >= 1, n2.logs()[-3000:]
        on_n2 = n2.http.request("GET", f"/leases/{ADDR}").json()
        assert token_of_lease(on_n2)[0] == MAC and on_n2["ExpireTime"] >= first, on_n2
        n1.wait_log("Stream switch to realtime streaming", timeout=30)

        # crash: kill -9 of n2, USR1 on n1
        n1_acks = acks(n1)
        n2.kill()
        n1.signal(signal.SIGUSR1)
        n1.wait_log_count("active: accepting writes", 2, timeout=30)
        n1.wait_info(lambda info: info["dhcp_enabled"])
        # kill -9 ends the process, not its host: n2's kernel keeps the VIP, answers ARP for it
        # and resets TCP to 8091.  A machine that reboots asks ARP afresh, and the last answer
        # wins: iPXE then failed with "Connection reset" on the script's URL.  The shipped unit
        # restarts a crashed node (Restart=on-failure, 2 s), and a restarted node removes a VIP
        # left behind; the test does what systemd would before the machine boots again.
        assert n2.has_vip()
        n2.start()
        n2.wait_log("removing VIP 198.18.0.100/24 left behind on eth0")
        n2.wait_log_count("Stream switch to realtime streaming", 2, timeout=30)
        assert not n2.has_vip() and n2.info()["dhcp_enabled"] is False
        booted(vm, marker, ADDR, after=vm.reset())
        assert acks(n1) > n1_acks, n1.logs()[-3000:]
        assert token_of_lease(lease_via_vip(c))[:2] == (MAC, "ACK")
        assert end > 0 and time.monotonic() - t0 < 150
    finally:
        vm.close()
