"""BOOTP/DHCP packets as bytes and back (RFC 951, 1542, 2131, 2132).

No I/O here. `parse` raises only Malformed, whatever the bytes. The fixed 236-byte BOOTP header
is one struct, the options a walk that checks every length against the packet's end. scapy's
BOOTP/DHCP layers did this until a profile under perfdhcp put their dissect and build at 45%
of the server's CPU (~0.4 ms of every exchange, against a whole budget of ~0.2 ms for the
Kea target); tests/test_dhcp_core.py and tests/test_dhcp_codec.py keep scapy as the
independent reference: client packets are built with it and every reply is dissected by it.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
         7: "RELEASE", 8: "INFORM"}
BOOTREQUEST, BOOTREPLY = 1, 2
MAGIC = bytes([99, 130, 83, 99])
FIXED = 236  # op..file, before the cookie
MIN_REQUEST = 240  # the fixed part and the cookie
MIN_REPLY = 300  # RFC 1542 2.1: relays may drop anything shorter
IP_UDP = 28  # RFC 2132 9.10: option 57 counts the IP and UDP headers
BROADCAST = 0x8000
# op htype hlen hops | xid | secs flags | ciaddr yiaddr siaddr giaddr | chaddr(16) | sname file
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
ZERO_IP = bytes(4)
# What build_reply keeps longest when option 57 forces it to cut: RFC 2131's MUSTs, then the
# addressing and boot options a client cannot work without (later = dropped first).
ESSENTIAL = (53, 54, 82, 51, 1, 3, 58, 59, 67, 66, 6, 28, 15)  # 82: the relay's (RFC 3046)


class Malformed(ValueError):
    """Bytes that are no DHCP request we can answer (the argument is a one-line reason)."""


@dataclass(frozen=True)
class Request:
    msg_type: int
    xid: int
    secs: int
    flags: int
    ciaddr: str
    giaddr: str
    chaddr: str  # "aa:bb:cc:dd:ee:ff"
    options: dict[int, bytes] = field(default_factory=dict)  # raw values; repeats concatenated
    hops: int = 0

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST)

    def _ip(self, code: int) -> str | None:
        raw = self.options.get(code)
        return socket.inet_ntoa(raw) if raw is not None and len(raw) == 4 else None

    @property
    def requested_ip(self) -> str | None:
        return self._ip(50)

    @property
    def server_id(self) -> str | None:
        return self._ip(54)

    @property
    def client_arch(self) -> int | None:
        raw = self.options.get(93)  # RFC 4578: a list of u16; the first is the one in use
        return struct.unpack("!H", raw[:2])[0] if raw and len(raw) >= 2 else None

    @property
    def user_class(self) -> str | None:
        raw = self.options.get(77)
        return None if raw is None else user_class_text(raw)

    @property
    def hostname(self) -> str | None:
        raw = self.options.get(12)
        return None if raw is None else raw.decode("utf-8", "replace")

    @property
    def param_request_list(self) -> tuple[int, ...]:
        return tuple(self.options.get(55, b""))

    @property
    def max_message_size(self) -> int | None:
        raw = self.options.get(57)
        return struct.unpack("!H", raw)[0] if raw is not None and len(raw) == 2 else None


def user_class_text(raw: bytes) -> str:
    """Option 77 as text. RFC 3004 makes it a list of length-prefixed classes; iPXE (and old
    Microsoft clients) send one raw string. Length-prefixed only when the prefixes tile the
    value exactly, so b"iPXE" (0x69 = 105 > 3 bytes left) stays "iPXE"."""
    parts, i = [], 0
    while i < len(raw):
        n = raw[i]
        if n == 0 or i + 1 + n > len(raw):
            break
        parts.append(raw[i + 1:i + 1 + n])
        i += 1 + n
    if parts and i == len(raw):
        return ",".join(p.decode("utf-8", "replace") for p in parts)
    return raw.decode("utf-8", "replace")


def _options(data: bytes) -> dict[int, bytes]:
    """The options after the cookie, each checked to lie inside the packet."""
    options: dict[int, bytes] = {}
    i, n = MIN_REQUEST, len(data)
    while i < n:
        code = data[i]
        if code == 0:  # pad
            i += 1
            continue
        if code == 255:  # end: whatever follows is padding
            return options
        if i + 1 >= n:
            raise Malformed(f"option {code} at byte {i} has no length byte")
        length = data[i + 1]
        if i + 2 + length > n:
            over = i + 2 + length - n
            raise Malformed(f"option {code} at byte {i} runs {over} bytes past the end")
        # RFC 3396: a repeated option is one long option split in parts
        options[code] = options.get(code, b"") + data[i + 2:i + 2 + length]
        i += 2 + length
    return options  # no end option: tolerated (some clients stop at the last option)


def parse(data: bytes) -> Request:
    if len(data) < MIN_REQUEST:
        raise Malformed(f"{len(data)} bytes: a BOOTP message has at least {MIN_REQUEST}")
    if data[0] != BOOTREQUEST:
        raise Malformed(f"op {data[0]} is not BOOTREQUEST")
    if data[1] != 1 or data[2] != 6:
        raise Malformed(f"hardware type {data[1]} length {data[2]}: only Ethernet (1, 6)")
    if data[FIXED:MIN_REQUEST] != MAGIC:
        raise Malformed("no DHCP magic cookie (plain BOOTP is not served)")
    options = _options(data)
    kind = options.get(53)
    if kind is None:
        raise Malformed("no message type (option 53)")
    if len(kind) != 1 or not 1 <= kind[0] <= 8:
        raise Malformed(f"message type {kind.hex()} is not 1..8")
    (_op, _htype, _hlen, hops, xid, secs, flags, ciaddr, _yiaddr, _siaddr, giaddr, chaddr,
     _sname, _file) = HEADER.unpack_from(data)
    return Request(msg_type=kind[0], xid=xid, secs=secs, flags=flags,
                   ciaddr=socket.inet_ntoa(ciaddr), giaddr=socket.inet_ntoa(giaddr),
                   chaddr=chaddr[:6].hex(":"), options=options, hops=hops)


class Reply(bytes):
    """A built reply; `dropped` names the options left out to fit the client's option 57."""
    dropped: tuple[int, ...] = ()


def _size(options: list[tuple[int, bytes]]) -> int:
    return sum(2 * (1 + (len(v) - 1) // 255 if v else 1) + len(v) for _, v in options)


def _fit(options: list[tuple[int, bytes]], room: int) -> tuple[list, list[int]]:
    """options cut to `room` bytes: unlisted codes go first (last given, first dropped), then
    ESSENTIAL from its end; 53 and 54 stay whatever happens."""
    keep, dropped = list(options), []
    rank = {code: i for i, code in enumerate(ESSENTIAL)}
    while _size(keep) > room:
        victims = [i for i, (c, _) in enumerate(keep) if c not in (53, 54)]
        if not victims:
            break
        worst = max(victims, key=lambda i: (rank.get(keep[i][0], len(ESSENTIAL)), i))
        dropped.append(keep.pop(worst)[0])
    return keep, dropped


def build_reply(req: Request, msg_type: int, yiaddr: str, siaddr: str,
                options: list[tuple[int, bytes]], file: str = "", sname: str = "") -> Reply:
    """A BOOTREPLY to req: options in the order given after 53 and 54 (53 is made here; a 54
    in `options` is moved up), an end option, padding to 300 bytes, and never longer than
    the client's option 57 (at least 576, RFC 2132 9.10)."""
    first = [(53, bytes([msg_type]))] + [o for o in options if o[0] == 54][:1]
    rest = [o for o in options if o[0] not in (53, 54)]
    opts = first + rest
    dropped: list[int] = []
    if req.max_message_size is not None:
        room = max(576, req.max_message_size) - IP_UDP - MIN_REQUEST - 1  # 1: the end option
        opts, dropped = _fit(opts, room)
    file_b = file.encode("utf-8", "replace")
    sname_b = sname.encode("utf-8", "replace")
    header = HEADER.pack(
        BOOTREPLY, 1, 6, 0, req.xid, 0, req.flags,
        socket.inet_aton(req.ciaddr) if msg_type != NAK else ZERO_IP,
        socket.inet_aton(yiaddr), socket.inet_aton(siaddr), socket.inet_aton(req.giaddr),
        bytes.fromhex(req.chaddr.replace(":", "")),  # padded to 16 by the struct
        sname_b if len(sname_b) < 64 else b"",  # the option carries longer ones
        file_b if len(file_b) < 128 else b"")
    parts = [header, MAGIC]
    for code, value in opts:
        if len(value) <= 255:
            parts += (bytes((code, len(value))), value)
        else:  # RFC 3396: a longer value goes out as consecutive options of the same code
            for i in range(0, len(value), 255):
                chunk = value[i:i + 255]
                parts += (bytes((code, len(chunk))), chunk)
    parts.append(b"\xff")
    raw = b"".join(parts)
    reply = Reply(raw + b"\0" * (MIN_REPLY - len(raw)) if len(raw) < MIN_REPLY else raw)
    reply.dropped = tuple(dropped)
    return reply
