"""TFTP packets as bytes and back, and option negotiation (RFC 1350, 2347, 2348, 2349, 7440).

No I/O here. `parse` raises only PacketError, whatever the bytes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

# Error codes (RFC 1350, 2347)
NOT_DEFINED, FILE_NOT_FOUND, ACCESS_VIOLATION, DISK_FULL = 0, 1, 2, 3
ILLEGAL_OPERATION, UNKNOWN_TID, FILE_EXISTS, NO_SUCH_USER, OPTION_REJECTED = 4, 5, 6, 7, 8

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
MAX_WINDOW = 65535  # RFC 7440; a server offers far less (see negotiate)
MODES = ("netascii", "octet", "mail")


class PacketError(ValueError):
    """Bytes that are no valid TFTP packet (truncated, unknown opcode, unterminated field)."""


@dataclass
class Request:
    opcode: int  # RRQ or WRQ
    filename: str  # decoded utf-8 with surrogateescape: any bytes give back the same path
    mode: str  # lower-cased
    options: dict[str, str] = field(default_factory=dict)  # names lower-cased; first wins


@dataclass
class Data:
    block: int
    data: bytes


@dataclass
class Ack:
    block: int


@dataclass
class Error:
    code: int
    message: str


@dataclass
class OAck:
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OAck


def _fields(body: bytes, what: str) -> list[bytes]:
    if not body.endswith(b"\0"):
        raise PacketError(f"{what}: last field is not NUL-terminated")
    return body[:-1].split(b"\0")


def _pairs(fields: list[bytes], what: str) -> dict[str, str]:
    if len(fields) % 2:
        raise PacketError(f"{what}: option {fields[-1][:40]!r} has no value")
    options: dict[str, str] = {}
    for name, value in zip(fields[::2], fields[1::2]):
        if not name:
            raise PacketError(f"{what}: empty option name")
        options.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return options


def parse(buf: bytes) -> Packet:
    if len(buf) < 2:
        raise PacketError(f"truncated packet ({len(buf)} bytes)")
    (opcode,) = struct.unpack_from("!H", buf)
    body = buf[2:]
    if opcode in (RRQ, WRQ):
        what = "RRQ" if opcode == RRQ else "WRQ"
        fields = _fields(body, what)
        if len(fields) < 2:
            raise PacketError(f"{what}: no mode")
        filename = fields[0].decode("utf-8", "surrogateescape")
        mode = fields[1].decode("latin-1").lower()
        return Request(opcode, filename, mode, _pairs(fields[2:], what))
    if opcode in (DATA, ACK, ERROR) and len(buf) < 4:
        raise PacketError(f"truncated packet (opcode {opcode}, {len(buf)} bytes)")
    if opcode == DATA:
        return Data(struct.unpack_from("!H", buf, 2)[0], bytes(buf[4:]))
    if opcode == ACK:
        return Ack(struct.unpack_from("!H", buf, 2)[0])
    if opcode == ERROR:
        message = buf[4:].split(b"\0", 1)[0]  # a missing NUL is forgiven
        return Error(struct.unpack_from("!H", buf, 2)[0], message.decode("utf-8", "replace"))
    if opcode == OACK:
        return OAck(_pairs(_fields(body, "OACK"), "OACK"))
    raise PacketError(f"unknown opcode {opcode}")


# ---- building ---------------------------------------------------------------------------------
def _options_bytes(options: dict[str, str]) -> bytes:
    return b"".join(f"{k}\0{v}\0".encode("latin-1") for k, v in options.items())


def build_request(opcode: int, filename: str, mode: str = "octet",
                  options: dict[str, str] | None = None) -> bytes:
    return (struct.pack("!H", opcode) + filename.encode("utf-8", "surrogateescape") + b"\0"
            + mode.encode("ascii") + b"\0" + _options_bytes(options or {}))


def build_data(block: int, data: bytes) -> bytes:
    return struct.pack("!HH", DATA, block & 0xFFFF) + data


def build_ack(block: int) -> bytes:
    return struct.pack("!HH", ACK, block & 0xFFFF)


def build_error(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message[:400].encode("utf-8", "replace") + b"\0"


def build_oack(options: dict[str, str]) -> bytes:
    return struct.pack("!H", OACK) + _options_bytes(options)


# ---- negotiation ------------------------------------------------------------------------------
@dataclass
class Options:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None  # seconds the client asked for; None: the server's default
    tsize: int | None = None


def _number(text: str, low: int, high: int | None = None) -> int | None:
    """An option's decimal value if it is one and >= low (and <= high); None otherwise."""
    text = text.strip()
    if not text.isdigit() or len(text) > 10:  # isdigit: no sign, no spaces, no '0x'
        return None
    value = int(text)
    if value < low or (high is not None and value > high):
        return None
    return value


def negotiate(requested: dict[str, str], *, tsize: int | None,
              max_blksize: int = MAX_BLKSIZE, max_window: int = 64,
              window_bytes: int = 1 << 20) -> tuple[Options, dict[str, str]]:
    """What we agree to of a read request's options, and the OACK's options (empty: send no
    OACK, start with DATA 1). Values we cannot honour are left out, as RFC 2347 allows, rather
    than failing the transfer; sizes beyond our limits are lowered (RFC 2348, 7440).
    `window_bytes` bounds blksize x windowsize, which is what one transfer holds in memory."""
    opts, accepted = Options(), {}
    max_blksize = max(MIN_BLKSIZE, min(max_blksize, MAX_BLKSIZE))
    if (v := _number(requested.get("blksize", ""), MIN_BLKSIZE)) is not None:
        opts.blksize = min(v, max_blksize)
        accepted["blksize"] = str(opts.blksize)
    if (v := _number(requested.get("timeout", ""), 1, 255)) is not None:
        opts.timeout = float(v)
        accepted["timeout"] = str(v)  # RFC 2349: echoed as sent, or not at all
    if "tsize" in requested and tsize is not None and _number(requested["tsize"], 0) is not None:
        opts.tsize = tsize
        accepted["tsize"] = str(tsize)
    if (v := _number(requested.get("windowsize", ""), 1, MAX_WINDOW)) is not None:
        opts.windowsize = max(1, min(v, max_window, window_bytes // opts.blksize))
        accepted["windowsize"] = str(opts.windowsize)
    return opts, accepted
