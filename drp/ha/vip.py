"""The HA virtual IP on a network interface: add/remove/check it, announce it, probe for it.

Everything acts on the *current* network namespace.  Netlink work uses pyroute2's synchronous
``IPRoute`` in a worker thread (``AsyncIPRoute`` is asyncio-only).  ARP frames are built and parsed
with scapy (``scapy.layers.l2`` only, imported lazily in a thread) and sent/received on a trio
``AF_PACKET`` socket bound to ETH_P_ARP, so the kernel hands us only ARP frames (there is no
libpcap here, so scapy could not BPF-filter) and every wait is cancellable.

Announcing: like keepalived / IPaddr2, send a burst of gratuitous ARPs when the VIP is taken and
a second burst a few seconds later (``garp_schedule``; run it as a nursery task).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import logging
import socket
import struct
import subprocess

import trio

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
SIOCGIFHWADDR = 0x8927
BROADCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"


class VipError(Exception):
    """A VIP operation failed; the message is one operator-readable line."""


# --- helpers -------------------------------------------------------------------------------------

def _parse(cidr: str) -> tuple[str, int]:
    """"198.18.0.100/24" -> ("198.18.0.100", 24); a bare address means /32."""
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError as e:
        raise VipError(f"invalid VIP address {cidr!r}: {e}") from None
    if iface.version != 4:
        raise VipError(f"VIP {cidr!r}: only IPv4 VIPs are supported")
    return str(iface.ip), iface.network.prefixlen


def _ip_only(ip: str) -> str:
    return _parse(ip)[0]


def _errmsg(action: str, interface: str, exc: BaseException, cap: str = "CAP_NET_ADMIN") -> str:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if code in (errno.EPERM, errno.EACCES):
        return f"{action} on {interface}: permission denied (needs root or {cap})"
    if code in (errno.ENODEV, errno.ENXIO):
        return f"{action}: interface {interface!r} does not exist"
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return f"{action} on {interface}: {text}"


@functools.cache
def _scapy():
    """Import the scapy layers we need, quietly (first call takes ~0.1 s: call it in a thread)."""
    logging.getLogger("scapy").setLevel(logging.ERROR)
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.config import conf
    conf.verb = 0
    conf.logLevel = logging.ERROR
    import scapy.layers.l2 as l2
    return l2


# --- interface facts (sync) ----------------------------------------------------------------------

def interface_exists(name: str) -> bool:
    """True if `name` is a network interface in the current namespace."""
    try:
        socket.if_nametoindex(name)
        return True
    except (OSError, ValueError):
        return False


def interface_mac(name: str) -> str:
    """The interface's hardware address as "aa:bb:cc:dd:ee:ff" (netns-correct, no sysfs)."""
    if not name or len(name) > 15:
        raise VipError(f"interface {name!r} does not exist")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", name.encode()))
    except OSError as e:
        raise VipError(_errmsg("reading MAC address", name, e)) from None
    return ":".join(f"{b:02x}" for b in res[18:24])


# --- netlink (in threads) ------------------------------------------------------------------------

def _ifindex(ipr, interface: str) -> int:
    idx = ipr.link_lookup(ifname=interface)
    if not idx:
        raise VipError(f"interface {interface!r} does not exist")
    return idx[0]


def _netlink(action: str, interface: str, fn):
    """Run fn(ipr, ifindex) with a fresh IPRoute, mapping errors to VipError. Thread side."""
    from pyroute2 import IPRoute
    try:
        with IPRoute() as ipr:
            return fn(ipr, _ifindex(ipr, interface))
    except VipError:
        raise
    except Exception as e:  # NetlinkError, OSError
        raise VipError(_errmsg(action, interface, e)) from None


def _has(ipr, idx: int, ip: str, prefix: int) -> bool:
    for msg in ipr.get_addr(index=idx, family=socket.AF_INET):
        if msg.get("address") == ip and msg["prefixlen"] == prefix:
            return True
    return False


def _del(ipr, idx: int, ip: str, prefix: int) -> None:
    from pyroute2 import NetlinkError
    try:
        ipr.addr("del", index=idx, address=ip, prefixlen=prefix)
    except NetlinkError as e:
        if e.code != errno.EADDRNOTAVAIL:  # already absent: fine
            raise


async def _run_script(script: str, verb: str, interface: str, ip: str, prefix: int) -> None:
    argv = [script, verb, interface, f"{ip}/{prefix}"]
    try:
        await trio.run_process(argv, check=True, capture_stdout=True, capture_stderr=True)
    except OSError as e:
        raise VipError(f"interface script {script!r}: {e.strerror or e}") from None
    except subprocess.CalledProcessError as e:
        err = (e.stderr or b"").decode(errors="replace").strip().replace("\n", " | ")
        raise VipError(f"interface script `{' '.join(argv)}` exited {e.returncode}"
                       + (f": {err}" if err else "")) from None


# --- public VIP API ------------------------------------------------------------------------------

async def has_vip(interface: str, cidr: str) -> bool:
    """True if exactly this address/prefix is configured on `interface`."""
    ip, prefix = _parse(cidr)
    return await trio.to_thread.run_sync(
        _netlink, "checking VIP", interface, lambda ipr, idx: _has(ipr, idx, ip, prefix))


async def add_vip(interface: str, cidr: str, script: str | None = None) -> None:
    """Put the VIP on `interface` (idempotent). With `script`: run `script add IFACE ADDR/PREFIX`."""
    ip, prefix = _parse(cidr)
    if script:
        return await _run_script(script, "add", interface, ip, prefix)
    await trio.to_thread.run_sync(
        _netlink, f"adding VIP {ip}/{prefix}", interface,
        lambda ipr, idx: ipr.addr("replace", index=idx, address=ip, prefixlen=prefix))
    log.debug("VIP %s/%s added on %s", ip, prefix, interface)  # the role says so


async def remove_vip(interface: str, cidr: str, script: str | None = None) -> None:
    """Take the VIP off `interface` (absent is fine). With `script`: `script remove IFACE ADDR/PREFIX`."""
    ip, prefix = _parse(cidr)
    if script:
        return await _run_script(script, "remove", interface, ip, prefix)
    await trio.to_thread.run_sync(
        _netlink, f"removing VIP {ip}/{prefix}", interface,
        lambda ipr, idx: _del(ipr, idx, ip, prefix))
    log.debug("VIP %s/%s removed from %s", ip, prefix, interface)  # the role says so


# --- ARP -----------------------------------------------------------------------------------------

def _arp_frame(mac: str, psrc: str, pdst: str) -> bytes:
    l2 = _scapy()
    return bytes(l2.Ether(src=mac, dst=BROADCAST, type=ETH_P_ARP)
                 / l2.ARP(op=1, hwsrc=mac, psrc=psrc, hwdst=ZERO_MAC, pdst=pdst))


async def _arp_socket(interface: str):
    """A trio AF_PACKET socket on `interface` that only sees ARP frames."""
    try:
        sock = trio.socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    except OSError as e:
        raise VipError(_errmsg("opening ARP socket", interface, e, "CAP_NET_RAW")) from None
    try:
        await sock.bind((interface, ETH_P_ARP))
    except OSError as e:
        sock.close()
        raise VipError(_errmsg("opening ARP socket", interface, e, "CAP_NET_RAW")) from None
    return sock


async def send_gratuitous_arp(interface: str, ip: str, count: int = 5, interval: float = 0.2) -> None:
    """Broadcast `count` gratuitous ARP requests (psrc = pdst = ip) `interval` seconds apart."""
    ip = _ip_only(ip)
    mac = interface_mac(interface)
    frame = await trio.to_thread.run_sync(_arp_frame, mac, ip, ip)
    sock = await _arp_socket(interface)
    with sock:
        for i in range(count):
            if i:
                await trio.sleep(interval)
            try:
                await sock.send(frame)
            except OSError as e:
                raise VipError(_errmsg(f"sending gratuitous ARP for {ip}", interface, e)) from None
    log.debug("sent %d gratuitous ARPs for %s on %s", count, ip, interface)


async def garp_schedule(interface: str, ip: str, *, count: int = 5, interval: float = 0.2,
                        second_burst_after: float = 3.0) -> None:
    """Announce a freshly taken VIP: a burst now and another `second_burst_after` s later.

    Meant to run as its own nursery task; failures are logged, never raised.
    """
    for burst in range(2):
        if burst:
            await trio.sleep(second_burst_after)
        try:
            await send_gratuitous_arp(interface, ip, count, interval)
        except VipError as e:
            log.warning("gratuitous ARP: %s", e)
            return


async def arp_probe(interface: str, ip: str, timeout: float = 0.5,
                    probes: int = 2) -> str | None:
    """RFC 5227 probe (who-has `ip`, psrc 0.0.0.0): the MAC of another host that answers, or None.

    `probes` requests spread over `timeout` (one lost frame must not hide a holder of the VIP);
    answers from our own MAC are ignored; works without any IPv4 address on `interface`.
    """
    ip = _ip_only(ip)
    mac = interface_mac(interface)
    frame = await trio.to_thread.run_sync(_arp_frame, mac, "0.0.0.0", ip)
    l2 = _scapy()
    sock = await _arp_socket(interface)
    started = trio.current_time()
    with sock:
        for probe in range(1, probes + 1):
            try:
                await sock.send(frame)
            except OSError as e:
                raise VipError(_errmsg(f"sending ARP probe for {ip}", interface, e)) from None
            # Listen until the next probe is due; an answer to any probe counts.
            with trio.move_on_at(started + timeout * probe / probes):
                while True:
                    data, addr = await sock.recvfrom(2048)
                    if addr[2] == socket.PACKET_OUTGOING:
                        continue
                    arp = l2.Ether(data).getlayer(l2.ARP)
                    if arp is None or arp.op != 2 or arp.psrc != ip:
                        continue
                    if arp.hwsrc.lower() != mac:
                        return arp.hwsrc.lower()
    return None
