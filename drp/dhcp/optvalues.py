"""DhcpOption Values (strings, after template rendering) to option bytes by code and back, the
way dr-provision converts them (RFC 2132 types), and the string form shown for logs and a
lease's ProvidedOptions.

`encode(code, value)` raises only BadOption; `describe(code, raw)` never raises.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from functools import lru_cache

from drp.dhcp.packets import user_class_text
from drp.modelvalues import parse_bool


class BadOption(ValueError):
    """A Value that cannot be sent as its option code (the argument is a one-line reason)."""


# RFC 2132 (and 3046, 4578, 3942 …) value types by code.
IP1 = {1, 16, 28, 32, 50, 54, 118}  # exactly one address
IPS = {3, 4, 5, 6, 7, 8, 9, 10, 11, 41, 42, 44, 45, 48, 49, 65, 68, 69, 70, 71, 72, 73, 74,
       75, 76, 85, 150}
IP_PAIRS = {21, 33}  # address/mask or destination/router pairs
STRINGS = {12, 14, 15, 17, 18, 40, 47, 56, 60, 62, 64, 66, 67, 86, 87, 100, 101, 114, 209, 210}
I32 = {2}  # time offset: signed
U32 = {24, 35, 38, 51, 58, 59, 91, 211}
U16 = {13, 22, 26, 57}
U16S = {93}  # client architectures (RFC 4578)
U8 = {23, 37, 46, 52, 53}
BOOL = {19, 20, 27, 29, 30, 31, 34, 36, 39}
U8S = {55}  # parameter request list
HEX = {61, 97}  # client identifier, client machine GUID: binary
USER_CLASS = {77}
SEARCH = {119}  # RFC 3397 domain search list (labels, no compression)



def _ints(code: int, value: str, lo: int, hi: int) -> list[int]:
    out = []
    for part in value.split(","):
        part = part.strip()
        try:
            n = int(part, 10)
        except ValueError:
            raise BadOption(f"option {code}: {part!r} is not a whole number") from None
        if not lo <= n <= hi:
            raise BadOption(f"option {code}: {n} is outside {lo}..{hi}")
        out.append(n)
    return out


def _ips(code: int, value: str) -> bytes:
    out = b""
    for part in value.split(","):
        try:
            out += ipaddress.IPv4Address(part.strip()).packed
        except ValueError:
            raise BadOption(f"option {code}: {part.strip()!r} is not an IPv4 address") from None
    return out


def _labels(code: int, value: str) -> bytes:
    out = b""
    for name in value.split(","):
        for label in name.strip().rstrip(".").split("."):
            try:
                raw = label.encode("ascii") if label.isascii() else label.encode("idna")
            except UnicodeError:
                raise BadOption(f"option {code}: {name.strip()!r} is not a domain name") from None
            if not 0 < len(raw) < 64:
                raise BadOption(f"option {code}: {name.strip()!r} is not a domain name")
            out += bytes([len(raw)]) + raw
        out += b"\0"
    return out


def encode(code: int, value: str) -> bytes:
    if not isinstance(value, str):
        raise BadOption(f"option {code}: the value must be a string")
    if not 1 <= code <= 254:
        raise BadOption(f"option code {code} is not 1..254")
    if value.strip() == "":
        raise BadOption(f"option {code}: empty value")  # RFC 2132: every option carries data
    if code in IP1 or code in IPS or code in IP_PAIRS:
        raw = _ips(code, value)
        if code in IP1 and len(raw) != 4:
            raise BadOption(f"option {code} takes one IPv4 address")
        if code in IP_PAIRS and len(raw) % 8:
            raise BadOption(f"option {code} takes pairs of IPv4 addresses")
        return raw
    if code in I32:
        return struct.pack("!i", _one(code, value, -2**31, 2**31 - 1))
    if code in U32:
        return struct.pack("!I", _one(code, value, 0, 2**32 - 1))
    if code in U16:
        return struct.pack("!H", _one(code, value, 0, 65535))
    if code in U16S:
        return b"".join(struct.pack("!H", n) for n in _ints(code, value, 0, 65535))
    if code in U8:
        return bytes([_one(code, value, 0, 255)])
    if code in U8S:
        return bytes(_ints(code, value, 0, 255))
    if code in BOOL:
        v = value.strip()
        truth = parse_bool(v)  # as dr-provision reads a bool (Go's strconv.ParseBool)
        if truth is None:
            raise BadOption(f"option {code}: {v!r} is not true or false")
        return b"\1" if truth else b"\0"
    if code in HEX:
        try:
            return bytes.fromhex(value.replace(":", "").replace("-", ""))
        except ValueError:
            raise BadOption(f"option {code}: {value!r} is not hex bytes") from None
    if code in SEARCH:
        return _labels(code, value)
    raw = value.encode("utf-8")  # strings, 77 (iPXE style: raw) and unknown codes
    if len(raw) > 1020:  # RFC 3396 splits it, but no client reassembles a novel
        raise BadOption(f"option {code}: {len(raw)} bytes is too long")
    return raw


def _one(code: int, value: str, lo: int, hi: int) -> int:
    ints = _ints(code, value, lo, hi)
    if len(ints) != 1:
        raise BadOption(f"option {code} takes one number")
    return ints[0]


def _text(raw: bytes) -> str:
    text = raw.rstrip(b"\0").decode("utf-8", "replace")  # some ROMs NUL-terminate strings
    return text if text.isprintable() else raw.hex(":")


@lru_cache(maxsize=8192)  # per packet, for its options: most repeat from client to client
def describe(code: int, raw: bytes) -> str:
    """raw as dr-provision shows it: 93 → "7", 77 → "iPXE", 55 → "1,3,6", 3 → "10.0.0.1";
    bytes that do not fit their code's type fall back to text or hex."""
    try:
        if code in IP1 | IPS | IP_PAIRS and raw and len(raw) % 4 == 0:
            return ",".join(socket.inet_ntoa(raw[i:i + 4]) for i in range(0, len(raw), 4))
        if code in I32 and len(raw) == 4:
            return str(struct.unpack("!i", raw)[0])
        if code in U32 and len(raw) == 4:
            return str(struct.unpack("!I", raw)[0])
        if code in U16 | U16S and raw and len(raw) % 2 == 0:
            return ",".join(str(n) for (n,) in struct.iter_unpack("!H", raw))
        if code in U8 and len(raw) == 1:
            return str(raw[0])
        if code in U8S:
            return ",".join(str(b) for b in raw)
        if code in BOOL and len(raw) == 1:
            return "true" if raw[0] else "false"
        if code in HEX:
            return raw.hex(":")
        if code in USER_CLASS:
            return user_class_text(raw)
        if code in SEARCH:
            return _unlabel(raw)
    except (ValueError, IndexError, struct.error):
        pass
    return _text(raw)


def _unlabel(raw: bytes) -> str:
    names, labels, i = [], [], 0
    while i < len(raw):
        n = raw[i]
        if n == 0:
            names.append(".".join(labels))
            labels = []
            i += 1
            continue
        if n >= 64 or i + 1 + n > len(raw):
            raise ValueError("not labels")  # compression pointers included: shown as text
        labels.append(raw[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    if labels:
        raise ValueError("unterminated")
    return ",".join(names)
