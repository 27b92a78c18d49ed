"""IPv4 packet info (IP_PKTINFO) for UDP servers on a wildcard address: which interface and
address a datagram came in on, and how to make a reply leave by that interface from that
address (DHCP and TFTP answer as the address they were asked: the VIP on an active)."""
from __future__ import annotations

import socket
import struct

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python < 3.12 lacks the name
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; its cmsg type has the same value
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_TIMESPEC = struct.Struct("=qq")  # struct timespec: seconds, nanoseconds (64-bit Linux)


def enable(sock, stamps: bool = False) -> None:
    """Ask the kernel to tell us, with each datagram, where it arrived (and, with stamps,
    when: a server that fell behind can tell requests their clients gave up on)."""
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    if stamps:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def received_at(ancdata) -> float | None:
    """When the kernel received the datagram (time.time()'s clock), if it said."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec + nsec / 1e9
    return None


def arrival(ancdata) -> tuple[int, str] | None:
    """(interface index, the local address the datagram was sent to) from recvmsg's
    ancillary data, or None when there is none."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            ifindex, spec_dst, _addr = _PKTINFO.unpack_from(data)
            return ifindex, socket.inet_ntoa(spec_dst)
    return None


def leave_by(ifindex: int, source: str) -> list[tuple[int, int, bytes]]:
    """Ancillary data for sendmsg: out of interface ifindex, from address source (a broadcast
    goes out of that interface only)."""
    return [(socket.IPPROTO_IP, IP_PKTINFO,
             _PKTINFO.pack(ifindex, socket.inet_aton(source), b"\0" * 4))]
