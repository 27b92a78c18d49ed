"""A throwaway L2 lab made of network namespaces (test helper; needs root).

    with Lab() as lab:
        n1 = lab.add_host("n1", "198.18.0.11/24")
        n1.run(["ip", "addr"])

Every host is a namespace "<prefix>-<name>" with lo up and "eth0" (one end of a veth pair); the
other end is enslaved to bridge "br0" in the namespace "<prefix>-br".  Nothing is created in the
root namespace, and only 198.18.0.0/15 addresses are accepted.  `close()` (or leaving the `with`)
kills every process in the lab's namespaces and deletes them.  Lab names look like
"drpt<pid>x<n>"; namespaces left behind by a crashed run (whose pid is gone) are removed when the
next Lab is created.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

PREFIX = "drpt"
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)x\d+-")
_counter = itertools.count(1)

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _list_netns() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_procs(ns: str) -> None:
    for _ in range(20):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        pids = [p for p in pids if p != os.getpid()]
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _delete_netns(ns: str) -> None:
    _kill_netns_procs(ns)
    _ip("netns", "delete", ns, check=False)


def cleanup_stale() -> list[str]:
    """Delete "drpt<pid>x<n>-*" namespaces whose creating process is gone. Returns their names."""
    stale = [ns for ns in _list_netns()
             if (m := _NAME_RE.match(ns)) and not _pid_alive(int(m.group(1)))]
    for ns in stale:
        _delete_netns(ns)
    return stale


class Host:
    def __init__(self, lab: "Lab", name: str, ns: str, addr: str):
        self.lab, self.name, self.ns, self.addr = lab, name, ns, addr
        self.ifname = "eth0"
        self.ip = addr.split("/")[0]
        self.mac = json.loads(self.run(["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"]

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.addr} {self.mac} ns={self.ns}>"

    def _argv(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        """Run cmd inside the namespace (check=True, text, output captured unless redirected)."""
        kw.setdefault("check", True)
        kw.setdefault("text", True)
        if "capture_output" not in kw:
            kw.setdefault("stdout", subprocess.PIPE)
            kw.setdefault("stderr", subprocess.PIPE)
        try:
            return subprocess.run(self._argv(cmd), **kw)
        except subprocess.CalledProcessError as e:
            raise AssertionError(f"[{self.name}] {' '.join(map(str, cmd))} exited {e.returncode}\n"
                                 f"stdout: {e.stdout}\nstderr: {e.stderr}") from None

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        """Start cmd inside the namespace; the lab kills it on close."""
        kw.setdefault("text", True)
        p = subprocess.Popen(self._argv(cmd), **kw)
        self.lab._procs.append(p)
        return p

    def addresses(self) -> list[str]:
        """IPv4 addresses on eth0 as cidrs."""
        out = self.run(["ip", "-j", "-4", "addr", "show", "dev", self.ifname]).stdout
        return [f"{a['local']}/{a['prefixlen']}"
                for link in json.loads(out or "[]") for a in link.get("addr_info", [])]

    def neighbour_mac(self, ip: str) -> str | None:
        """The MAC for ip in this host's neighbour table (None if absent/incomplete/failed)."""
        out = self.run(["ip", "-j", "neigh", "show", ip, "dev", self.ifname]).stdout
        for entry in json.loads(out or "[]"):
            if entry.get("lladdr"):
                return entry["lladdr"].lower()
        return None

    def resolve(self, ip: str, timeout: float = 3.0) -> str | None:
        """Make the kernel ARP for ip (one UDP datagram to the discard port) and wait for it."""
        self.run([sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                  f" s.sendto(b'x', ({ip!r}, 9))"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if mac := self.neighbour_mac(ip):
                return mac
            time.sleep(0.05)
        return None


class Lab:
    def __init__(self, prefix: str | None = None):
        cleanup_stale()
        self.prefix = prefix or f"{PREFIX}{os.getpid()}x{next(_counter)}"
        self.bridge_ns = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen] = []
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge",
                "forward_delay", "0", "stp_state", "0")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # keep the wire quiet: no IPv6 (router solicitations, MLD, DAD) in the lab
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                       capture_output=True, check=False)

    def add_host(self, name: str, cidr: str) -> Host:
        if name in self.hosts or not re.fullmatch(r"[A-Za-z0-9_.]{1,24}", name):
            raise ValueError(f"bad or duplicate host name {name!r}")
        net = ipaddress.ip_interface(cidr).network
        if net.version != 4 or not net.subnet_of(LAB_NET):
            raise ValueError(f"{cidr}: lab addresses must be inside {LAB_NET}")
        ns = f"{self.prefix}-{name}"
        peer = f"p{len(self.hosts)}{name}"[:15]
        self._add_ns(ns)
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer,
            "netns", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", peer, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", cidr, "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        host = self.hosts[name] = Host(self, name, ns, cidr)
        return host

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        for ns in reversed(self._namespaces):
            _delete_netns(ns)
        self._namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def lab():
    """A fresh Lab per test (skips without root); always torn down."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    with Lab() as lab_:
        yield lab_
