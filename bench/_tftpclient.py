"""A small TFTP client for the benchmark (bench/dhcp.py): tftp-hpa and curl ask no windowsize,
so this one asks blksize, windowsize and tsize (RFC 2347/2348/2349/7440) and ACKs once per
window, the way a PXE ROM with RFC 7440 does."""
from __future__ import annotations

import hashlib
import socket
import struct
import time


def tftp_get(server: str, name: str, blksize: int, windowsize: int, result: dict) -> None:
    """RRQ with blksize/windowsize/tsize (RFC 2347/2348/2349/7440); one ACK per window (or
    per block if the server leaves windowsize out of its OACK). Fills `result`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    opts = {"blksize": blksize, "windowsize": windowsize, "tsize": 0}
    rrq = b"\0\1" + name.encode() + b"\0octet\0" + b"".join(
        f"{k}\0{v}\0".encode() for k, v in opts.items())
    t0 = time.perf_counter()
    s.sendto(rrq, (server, 69))
    peer, blk, win, expected, since_ack, retries, gap = None, 512, 1, 1, 0, 0, False
    chunks: list[bytes] = []
    got: dict = {}
    while True:
        try:
            data, addr = s.recvfrom(65536)
        except socket.timeout:  # resend the RRQ, or ACK what came in order (RFC 7440)
            retries += 1
            if retries > 10:
                raise RuntimeError(f"TFTP from {server}: no answer after 10 timeouts")
            s.sendto(rrq if peer is None else struct.pack("!HH", 4, (expected - 1) & 0xFFFF),
                     peer or (server, 69))
            continue
        peer, retries = peer or addr, 0
        op = struct.unpack("!H", data[:2])[0]
        if addr != peer or op not in (3, 5, 6):
            continue
        if op == 5:
            raise RuntimeError(f"TFTP error from {server}: {data[4:-1]!r}")
        if op == 6:  # OACK: what the server accepted
            parts = data[2:].split(b"\0")
            got = {parts[i].decode().lower(): parts[i + 1].decode()
                   for i in range(0, len(parts) - 1, 2)}
            blk, win = int(got.get("blksize", 512)), int(got.get("windowsize", 1))
            s.sendto(b"\0\4\0\0", peer)
            continue
        block = struct.unpack("!H", data[2:4])[0]
        if block == expected & 0xFFFF:
            chunks.append(data[4:])
            expected, since_ack, gap = expected + 1, since_ack + 1, False
            done = len(data) - 4 < blk
            if done or since_ack >= win:
                s.sendto(struct.pack("!HH", 4, block), peer)
                since_ack = 0
            if done:
                break
        elif not gap and (block - expected) & 0xFFFF < 0x8000:  # a gap: ACK the last in order
            s.sendto(struct.pack("!HH", 4, (expected - 1) & 0xFFFF), peer)
            since_ack, gap = 0, True
    result.update(seconds=time.perf_counter() - t0, size=sum(map(len, chunks)),
                  sha256=hashlib.sha256(b"".join(chunks)).hexdigest(), oack=got)
    s.close()
