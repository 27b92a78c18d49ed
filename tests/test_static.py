"""The static file server: plain HTTP, read-only, unauthenticated, tftpboot/ only."""
from __future__ import annotations

import hashlib
import os
import socket
import time

import httpx
import pytest

from tests.blobutil import raw_request


@pytest.fixture
def static(drp):
    with httpx.Client(base_url=f"http://127.0.0.1:{drp.static_port}", timeout=30) as client:
        yield client


def test_serves_uploaded_files_and_isos(drp, static):
    data, iso = os.urandom(1_234_567), os.urandom(300_000)
    with drp.client() as c:
        c.post("/files/pxe/boot/vmlinuz", content=data)
        c.post("/isos/os.iso", content=iso)
    r = static.get("/files/pxe/boot/vmlinuz")  # no credentials needed
    assert r.status_code == 200 and r.content == data
    digest = hashlib.sha256(data).hexdigest()
    assert r.headers["X-DRP-SHA256SUM"] == digest and r.headers["ETag"] == f'"SHA256:{digest}"'
    assert static.get("/isos/os.iso").content == iso
    head = static.head("/isos/os.iso")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(iso))
    r = static.get("/isos/os.iso", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == iso[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(iso)}"
    r = static.get("/isos/os.iso", headers={"Range": "bytes=999999-"})
    assert r.status_code == 416
    etag = static.get("/files/pxe/boot/vmlinuz").headers["ETag"]
    assert static.get("/files/pxe/boot/vmlinuz",
                      headers={"If-None-Match": etag}).status_code == 304


def test_other_tftpboot_files_are_served_without_a_checksum(drp, static):
    tftp = drp.base_root / "tftpboot"
    (tftp / "pxelinux.cfg").mkdir(parents=True, exist_ok=True)
    (tftp / "pxelinux.cfg/default").write_text("DEFAULT local\n")
    r = static.get("/pxelinux.cfg/default")
    assert r.status_code == 200 and r.text == "DEFAULT local\n"
    assert "X-DRP-SHA256SUM" not in r.headers


def test_read_only_and_no_listings(drp, static):
    with drp.client() as c:
        c.post("/files/d/x", content=b"x")
    for path in ("/", "/files", "/files/", "/files/d", "/files/d/"):
        r = static.get(path)
        assert r.status_code == 404 and b"x" != r.content, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = static.request(method, "/files/d/x", content=b"y")
        assert r.status_code == 405, method
    assert (drp.base_root / "tftpboot/files/d/x").read_bytes() == b"x"


@pytest.mark.parametrize("target,code", [
    ("/../drp.db", 400),
    ("/files/../../drp.db", 400),
    ("/files/%2e%2e/%2e%2e/drp.db", 400),
    ("/%2e%2e/plugins/p", 400),
    ("//etc/passwd", 400),
    ("/%2Fetc%2Fpasswd", 400),
    ("/files/a%00b", 400),
    ("/../job-logs/x", 400),
])
def test_traversal_refused(drp, target, code):
    (drp.base_root / "plugins").mkdir(exist_ok=True)
    (drp.base_root / "plugins/p").write_text("not served")
    status, headers, body = raw_request("127.0.0.1", drp.static_port, target, auth=False)
    assert status == code, (target, body)
    assert b"not served" not in body and b"SQLite" not in body
    assert b'"Messages"' in body


def test_symlinks_leaving_tftpboot_are_refused(drp, static, tmp_path):
    tftp = drp.base_root / "tftpboot"
    tftp.mkdir(exist_ok=True)
    (tftp / "db").symlink_to(drp.base_root / "drp.db")
    (tftp / "up").symlink_to(drp.base_root)
    (tftp / "files").mkdir(exist_ok=True)
    (tftp / "files/ok.txt").write_text("ok")
    (tftp / "alias.txt").symlink_to(tftp / "files/ok.txt")
    for path in ("/db", "/up/drp.db", "/up/plugins"):
        r = static.get(path)
        assert r.status_code == 403 and "symlink" in r.json()["Messages"][0], path
    # links whose real path stays inside tftpboot/ are fine
    assert static.get("/alias.txt").text == "ok"
    assert static.get("/up/tftpboot/files/ok.txt").text == "ok"


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    sock.sendall(request)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_keep_alive_heads_errors_and_bad_requests(drp, static):
    """Several requests on one connection (a HEAD and a 404 in between leave it usable); a
    request that is not HTTP gets a 400 with the error body; the server carries on."""
    data = os.urandom(200_000)
    with drp.client() as c:
        c.post("/files/ka/a.bin", content=data).raise_for_status()
    with socket.create_connection(("127.0.0.1", drp.static_port), timeout=10) as sock:
        reply = _exchange(sock, b"HEAD /files/ka/a.bin HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"GET /files/ka/missing HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"HEAD /files/ka/missing HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"GET /files/ka/a.bin HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200") == 2 and reply.count(b"HTTP/1.1 404") == 2
    assert reply.count(b'"Messages"') == 1  # the GET's error body; the HEAD's has none
    assert reply.endswith(data)
    with socket.create_connection(("127.0.0.1", drp.static_port), timeout=10) as sock:
        reply = _exchange(sock, b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b'"Messages"' in reply
    assert static.get("/files/ka/a.bin").content == data


def _fds(pid: int, path) -> tuple[int, int]:
    """(sockets, descriptors of `path`) the process holds open. Other files come and go on
    their own: each new worker thread opens its own SQLite reader."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass  # closed meanwhile
    return sum(t.startswith("socket:") for t in targets), targets.count(str(path))


def test_a_client_leaving_mid_download_leaves_the_server_serving(drp, static):
    """Clients that hang up mid-body cost nothing lasting: no error logged, every file and
    socket closed again, the next download whole."""
    big = os.urandom(32 << 20)
    with drp.client() as c:
        c.post("/isos/big.iso", content=big).raise_for_status()
    static.get("/isos/big.iso")  # the server's own connections and files now exist
    iso = drp.base_root / "tftpboot" / "isos" / "big.iso"
    sockets, _ = _fds(drp.proc.pid, iso)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", drp.static_port), timeout=10) as sock:
            sock.sendall(b"GET /isos/big.iso HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    r = static.get("/isos/big.iso", headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == big[1000:]
    def leaked() -> bool:
        now_sockets, iso_fds = _fds(drp.proc.pid, iso)
        return now_sockets > sockets or iso_fds > 0
    deadline = time.monotonic() + 10
    while leaked() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked(), _fds(drp.proc.pid, iso)
    assert "request failed" not in drp.logs()


def test_stalled_clients_do_not_hold_up_the_others(drp, static):
    """Clients that stop reading wait for room in their socket without holding one of the
    sending threads: a download beside forty of them runs as it does alone."""
    big = os.urandom(64 << 20)
    with drp.client() as c:
        c.post("/isos/big.iso", content=big).raise_for_status()
    stalled = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", drp.static_port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /isos/big.iso HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append(sock)
        time.sleep(0.5)  # every one of them has filled its buffers by now
        began = time.monotonic()
        assert static.get("/isos/big.iso").content == big
        # Alone this takes well under a second here; a sender per stalled client holding a
        # thread for a while each turn made it take ten.
        assert time.monotonic() - began < 5
    finally:
        for sock in stalled:
            sock.close()


def test_errors_opening_a_file_get_an_error_body(drp, static):
    tftp = drp.base_root / "tftpboot"
    tftp.mkdir(exist_ok=True)
    (tftp / "loop").symlink_to(tftp / "loop")
    r = static.get("/loop")
    assert r.status_code == 500 and "symbolic links" in r.json()["Messages"][0], r.text
    r = static.get("/" + "/".join(["x" * 250] * 20))
    assert r.status_code == 400 and r.json()["Messages"], r.text
    with socket.create_connection(("127.0.0.1", drp.static_port), timeout=10) as sock:
        reply = _exchange(sock, b"GET http://x/files/none HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404") and b"files/none not found" in reply


def test_stop_does_not_wait_for_a_client_that_stopped_reading(drp_factory):
    """A download the client stopped taking in holds SIGTERM up for the static server's
    grace period (1 s) only, not until the client resumes (nor until the whole server's
    last-resort cancel)."""
    server = drp_factory("stall")
    with server.client() as c:
        c.post("/isos/big.iso", content=os.urandom(64 << 20)).raise_for_status()
    with socket.create_connection(("127.0.0.1", server.static_port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /isos/big.iso HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        assert server.stop(timeout=10) == 0
        assert time.monotonic() - began < 2.9, server.logs()[-2000:]  # the server: 3 s
