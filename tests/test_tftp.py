"""drp.tftp: sans-IO packets and transfer, then the server against real clients (tftp-hpa,
curl) and a raw windowed client on loopback."""
from __future__ import annotations

import hashlib
import os
import queue
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import trio
from hypothesis import given, strategies as st

from drp.tftp import packets
from drp.tftp.server import serve_tftp
from drp.tftp.transfer import ReadTransfer


# ---- sans-IO ----------------------------------------------------------------------------------
@given(st.binary(max_size=600))
def test_parse_fuzz(buf):
    try:
        packets.parse(buf)
    except packets.PacketError:
        pass


def test_negotiate():
    opts, acc = packets.negotiate({"blksize": "100000", "tsize": "0", "windowsize": "16",
                                   "timeout": "3", "foo": "1"}, tsize=42, max_blksize=1468)
    assert acc == {"blksize": "1468", "tsize": "42", "windowsize": "16", "timeout": "3"}
    opts, acc = packets.negotiate({"blksize": "4", "timeout": "0", "windowsize": "x"}, tsize=1)
    assert acc == {} and opts.blksize == 512
    req = packets.parse(packets.build_request(packets.RRQ, "a/b", "OCTET", {"BlkSize": "9"}))
    assert req.mode == "octet" and req.options == {"blksize": "9"}


def _pump(t, data):
    while want := t.need():
        t.supply(data[want[0]:want[0] + want[1]], want[1])
    return [packets.parse(p) for p in t.outgoing()]


def test_window_retransmit_duplicate():
    data = os.urandom(512 * 10 + 7)
    t = ReadTransfer(packets.Options(blksize=512, windowsize=4), {"windowsize": "4"},
                     timeout=1, retries=2)
    t.start(0)
    assert isinstance(_pump(t, data)[0], packets.OAck)
    assert t.on_ack(0, 0.1)
    assert [p.block for p in _pump(t, data)] == [1, 2, 3, 4]
    assert not t.on_ack(0, 0.2) and _pump(t, data) == []  # duplicate: nothing resent
    assert t.on_ack(2, 0.3)  # partial: resend from 3
    assert [p.block for p in _pump(t, data)] == [3, 4, 5, 6]
    assert not t.timeout_due(1.0)
    assert t.timeout_due(1.4) and [p.block for p in _pump(t, data)] == [3, 4, 5, 6]
    for k in (6, 10):
        t.on_ack(k, 2)
        got = _pump(t, data)
    assert [len(p.data) for p in got] == [7] and got[0].block == 11
    t.on_ack(11, 3)
    assert t.done and t.error is None
    t2 = ReadTransfer(packets.Options())
    t2.start(0)
    _pump(t2, data)
    assert t2.timeout_due(1.1) and t2.timeout_due(2.2) and t2.timeout_due(99)
    for n in range(5):
        t2.timeout_due(100 + 2 * n)
    assert t2.done and t2.error


def test_rollover():
    data = b"x" * (8 * 70000)
    t = ReadTransfer(packets.Options(blksize=8, windowsize=1))
    t.start(0)
    blocks = []
    while not t.done:
        for p in _pump(t, data):
            blocks.append(p.block)
            t.on_ack(p.block, 0)
    assert blocks[65534:65537] == [65535, 0, 1] and len(blocks) == 70001


# ---- the server -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("tftp")
    root = base / "tftpboot"
    (root / "files").mkdir(parents=True)
    sizes = {"zero": 0, "s511": 511, "s512": 512, "s5120": 5120, "mib": 1 << 20,
             "big": 40 << 20}
    for name, size in sizes.items():
        (root / "files" / name).write_bytes(os.urandom(size))
    (base / "secret").write_text("no")
    (root / "escape").symlink_to(base / "secret")
    q = queue.Queue()

    async def main():
        async with trio.open_nursery() as n:
            port = await n.start(serve_tftp, root, "127.0.0.1", 0)
            q.put((trio.lowlevel.current_trio_token(), n.cancel_scope, port))

    th = threading.Thread(target=trio.run, args=(main,), daemon=True)
    th.start()
    token, scope, port = q.get(timeout=10)
    try:
        yield root, port, sizes
    finally:
        token.run_sync_soon(scope.cancel)
        th.join(10)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.skipif(not shutil.which("tftp"), reason="tftp-hpa not installed")
def test_tftp_hpa_and_curl(tree, tmp_path):
    root, port, sizes = tree
    for name in sizes:
        src = root / "files" / name
        out = tmp_path / f"t-{name}"
        subprocess.run(["tftp", "127.0.0.1", str(port), "-m", "binary", "-c", "get",
                        f"files/{name}", str(out)], check=True, timeout=120)
        assert _sha(out) == _sha(src), name
        for extra in ([], ["--tftp-blksize", "1468"]):
            out = tmp_path / f"c-{name}"
            subprocess.run(["curl", "-sS", f"tftp://127.0.0.1:{port}/files/{name}", "-o",
                            str(out), *extra], check=True, timeout=120)
            assert _sha(out) == _sha(src), (name, extra)


def _raw_get(port, name, options=None, timeout=5.0):
    """A windowed client: (bytes or None, error packet or None)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.sendto(packets.build_request(packets.RRQ, name, "octet", options), ("127.0.0.1", port))
    opts, got, expect, window, since = {}, [], 1, 1, 0
    blksize = 512
    while True:
        buf, peer = s.recvfrom(70000)
        p = packets.parse(buf)
        if isinstance(p, packets.Error):
            return None, p
        if isinstance(p, packets.OAck):
            opts = p.options
            blksize = int(opts.get("blksize", 512))
            window = int(opts.get("windowsize", 1))
            s.sendto(packets.build_ack(0), peer)
            continue
        if p.block != expect & 0xFFFF:
            continue
        got.append(p.data)
        since += 1
        if len(p.data) < blksize or since == window:
            s.sendto(packets.build_ack(expect), peer)
            since = 0
        expect += 1
        if len(p.data) < blksize:
            return b"".join(got), opts


def test_windowed_and_errors(tree):
    root, port, sizes = tree
    data, opts = _raw_get(port, "/files/big", {"blksize": "1468", "windowsize": "16",
                                               "tsize": "0"})
    assert data == (root / "files" / "big").read_bytes()
    assert opts == {"blksize": "1468", "windowsize": "16", "tsize": str(40 << 20)}
    for name, code in (("../etc/passwd", 2), ("escape", 2), ("files/nope", 1),
                       ("/etc/passwd", 1), ("files", 1)):
        assert _raw_get(port, name)[1].code == code, name
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"\x00\x09junk", ("127.0.0.1", port))  # dropped; the server goes on
    s.sendto(packets.build_request(packets.WRQ, "files/x"), ("127.0.0.1", port))
    assert packets.parse(s.recv(600)).code == 2
