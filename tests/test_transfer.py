"""drp.ha.transfer: catch-up downloads from a real dr-provision, in worker threads."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import select
import socket
import ssl
import threading
import time

import pytest
import trio

from drp.ha import transfer
from drp.ha.progress import Progress
from drp.ha.bulkget import CertificateMismatch, Pool
from drp.ha.transfer import Fetcher, Gone

BIG = 8 << 20


@pytest.fixture(scope="module")
def served(module_drp_factory):
    """A server holding two files, and a token for it."""
    server = module_drp_factory("transfer")
    files = {"small.bin": b"hello catch-up\n", "big.bin": random.Random(7).randbytes(BIG)}
    with server.client() as c:
        for name, data in files.items():
            c.post(f"/files/{name}", content=data).raise_for_status()
    token = json.loads(server.drpcli("users", "token", "rocketskates", "ttl", "1h").stdout)["Token"]
    return server, token, {n: (d, hashlib.sha256(d).hexdigest()) for n, d in files.items()}


def pinned(fingerprint: str):
    """A peer check for a standalone server (in a cluster it is the node-certificate check,
    NodeTrust.verify): its certificate's sha256 must be `fingerprint`."""
    def check(der: bytes) -> None:
        seen = hashlib.sha256(der).hexdigest()
        if seen != fingerprint:
            raise ValueError(f"certificate sha256 {seen[:16]}…, not the expected "
                             f"{fingerprint[:16]}…")
    return check


def server_fingerprint(server) -> str:
    pem = ssl.get_server_certificate(("127.0.0.1", server.api_port))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def fetcher_for(server, token: str, partial_dir) -> Fetcher:
    """A fetcher whose peer check accepts the server's certificate."""
    fetcher = Fetcher(server.url, token, partial_dir)
    fingerprint = server_fingerprint(server)
    fetcher.set_peer(fingerprint, pinned(fingerprint))
    return fetcher


async def test_fetch_refuses_a_server_with_another_certificate(served, tmp_path):
    """Nothing (the token included) goes to a server that fails the peer check."""
    server, token, files = served
    data, sha = files["small.bin"]
    fetcher = Fetcher(server.url, token, tmp_path / "partial")
    fetcher.set_peer("other", pinned("0" * 64))
    try:
        with pytest.raises(CertificateMismatch, match="not the expected 0000.*not sending"):
            await fetcher.fetch("/api/v3/files/small.bin", tmp_path / "small.bin", sha)
        assert not (tmp_path / "small.bin").exists()
    finally:
        await fetcher.aclose()


async def test_fetch_verifies_and_installs(served, tmp_path):
    server, token, files = served
    data, sha = files["big.bin"]
    fetcher = fetcher_for(server, token, tmp_path / "partial")
    try:
        dest = tmp_path / "out" / "big.bin"
        assert await fetcher.fetch("/api/v3/files/big.bin", dest, sha, 0o640) == (BIG, sha)
        assert dest.read_bytes() == data and dest.stat().st_mode & 0o777 == 0o640
        assert list((tmp_path / "partial").iterdir()) == []  # nothing left aside
        with pytest.raises(Gone):
            await fetcher.fetch("/api/v3/files/missing.bin", tmp_path / "out" / "m", "0" * 64)
        assert not (tmp_path / "out" / "m").exists()
    finally:
        await fetcher.aclose()


@pytest.mark.parametrize("left", ["prefix", "garbage"])
async def test_fetch_resumes_or_restarts_a_partial_download(served, tmp_path, left):
    """What an interrupted transfer left is resumed with a Range request; bytes that are not
    a prefix of the file fail the sha256 check and the file is fetched whole again."""
    server, token, files = served
    data, sha = files["big.bin"]
    partial_dir = tmp_path / "partial"
    partial_dir.mkdir()
    (partial_dir / sha).write_bytes(data[:3 << 20] if left == "prefix" else b"\0" * 1000)
    fetcher = fetcher_for(server, token, partial_dir)
    try:
        await fetcher.fetch("/api/v3/files/big.bin", tmp_path / "big.bin", sha)
        assert (tmp_path / "big.bin").read_bytes() == data
    finally:
        await fetcher.aclose()


async def test_stage_then_install_and_sweep(served, tmp_path):
    server, token, files = served
    data, sha = files["small.bin"]
    partial_dir = tmp_path / "partial"
    fetcher = fetcher_for(server, token, partial_dir)
    try:
        size, got, staged = await fetcher.stage_blob("files/small.bin", sha, len(data))
        assert (size, got) == (len(data), sha) and staged.name.endswith(".staged")
        await fetcher.install(staged, tmp_path / "x" / "small.bin", 0o644)
        assert (tmp_path / "x" / "small.bin").read_bytes() == data
        fetcher.use_static(server.static_port)
        _, _, left = await fetcher.stage_blob("files/small.bin", sha, len(data))  # not installed
        assert left.read_bytes() == data
        await fetcher.sweep_staged()  # as a follower starting after a crash does
        assert not left.exists()
    finally:
        await fetcher.aclose()


async def test_files_come_from_the_static_port_without_the_token(served, tmp_path):
    """With the active's static port known, files are fetched there over plain HTTP: even a
    token the API would refuse does not matter (nor is there a pinned certificate), and an
    interrupted download resumes there with a Range request."""
    server, _, files = served
    data, sha = files["big.bin"]
    fetcher = Fetcher(server.url, "not-a-token", tmp_path / "partial")
    fetcher.use_static(server.static_port)
    progress = Progress(report=lambda status: None)
    try:
        dest = tmp_path / "out" / "big.bin"
        assert await fetcher.fetch_blob("files/big.bin", dest, sha, BIG, 0o640, progress) == \
            (BIG, sha, True)
        assert dest.read_bytes() == data and dest.stat().st_mode & 0o777 == 0o640
        assert progress.bytes_done == BIG
        (tmp_path / "partial" / sha).write_bytes(data[:BIG // 3])  # as a killed fetch left it
        again = tmp_path / "again.bin"
        assert (await fetcher.fetch_blob("files/big.bin", again, sha, BIG))[2] is True
        assert again.read_bytes() == data
        small, small_sha = files["small.bin"]
        size, got, staged = await fetcher.stage_blob("files/small.bin", small_sha, len(small))
        assert (size, got, staged.read_bytes()) == (len(small), small_sha, small)
    finally:
        await fetcher.aclose()


class _Liar(http.server.BaseHTTPRequestHandler):
    """A static port that answers a GET for `real` (bytes, sha256) as `how` says: with a file
    that changed since ("changed"), a forged announcement and an endless body ("endless"),
    or the right announcement over other bytes ("forged"). It records, per request, whether
    the client hung up before the body was sent, which is what it should do when the
    announcement is not the version it asked for."""
    protocol_version = "HTTP/1.1"
    how, real, seen = "changed", (b"", ""), []

    def do_GET(self):
        data, sha = self.real
        other = bytes(len(data))
        announced, length = {"changed": (hashlib.sha256(other).hexdigest(), len(other)),
                             "endless": (sha, 1 << 40), "forged": (sha, len(data))}[self.how]
        self.send_response(200)
        self.send_header("X-DRP-SHA256SUM", announced)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()
        hung_up = False
        if self.how != "forged":
            readable, _, _ = select.select([self.connection], [], [], 5)
            hung_up = bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        self.seen.append((self.path, hung_up))
        if not hung_up:
            self.wfile.write(other)
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("how", ["changed", "endless", "forged"])
async def test_what_the_static_port_gets_wrong_comes_over_the_api(served, tmp_path, how):
    """A static port announcing another version, or a length other than the file's, is hung
    up on before its body; bytes that announce the right sha256 but are not it fail the
    check (plain HTTP vouches for nothing). Either way the file comes over the API, the
    progress counts it once, and the static port stays in use."""
    server, token, files = served
    data, sha = files["big.bin"]
    _Liar.how, _Liar.real, _Liar.seen = how, (data, sha), []
    liar = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    fetcher = fetcher_for(server, token, tmp_path / "partial")
    fetcher.use_static(liar.server_address[1])
    progress = Progress(report=lambda status: None)
    try:
        dest = tmp_path / "big.bin"
        assert await fetcher.fetch_blob("files/big.bin", dest, sha, BIG, 0o644, progress) == \
            (BIG, sha, False)
        assert dest.read_bytes() == data and progress.bytes_done == BIG
        assert _Liar.seen == [("/files/big.bin", how != "forged")]
        assert fetcher._static_usable
        # Plugins are never asked of the static port (it does not serve them).
        with pytest.raises(Gone):
            await fetcher.fetch_blob("plugins/none", tmp_path / "p", "0" * 64, 1)
        assert len(_Liar.seen) == 1
        assert list((tmp_path / "partial").iterdir()) == []
    finally:
        await fetcher.aclose()
        liar.shutdown()


async def test_a_whole_partial_file_is_checked_without_a_request(served, tmp_path):
    """A fetch killed between its last byte and its rename left the whole file aside: with
    the size known, it is checked and put in place without asking anyone for it again."""
    server, _, files = served
    data, sha = files["big.bin"]
    _Liar.how, _Liar.real, _Liar.seen = "changed", (data, sha), []
    liar = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    fetcher = Fetcher(server.url, "not-a-token", tmp_path / "partial")  # the API would refuse
    fetcher.use_static(liar.server_address[1])
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / sha).write_bytes(data)
    try:
        dest = tmp_path / "big.bin"
        assert await fetcher.fetch_blob("files/big.bin", dest, sha, BIG) == (BIG, sha, True)
        assert dest.read_bytes() == data and _Liar.seen == []
    finally:
        await fetcher.aclose()
        liar.shutdown()


async def test_a_static_port_that_fails_is_left_alone_this_session(served, tmp_path, caplog):
    """A static port that hangs up is tried once per session, logged once; the files come
    over the API. The next session (use_static again) tries it again; port 0 means none."""
    server, token, files = served
    data, sha = files["small.bin"]
    hangup = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept_and_close():
        while True:
            try:
                conn, _ = hangup.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()
    threading.Thread(target=accept_and_close, daemon=True).start()
    fetcher = fetcher_for(server, token, tmp_path / "partial")
    fetcher.use_static(hangup.getsockname()[1])
    try:
        for name in ("a", "b"):
            assert await fetcher.fetch_blob("files/small.bin", tmp_path / name, sha,
                                            len(data)) == (len(data), sha, False)
            assert (tmp_path / name).read_bytes() == data
        assert len(accepted) == 1
        warned = [r.getMessage() for r in caplog.records if "static port" in r.getMessage()]
        assert len(warned) == 1 and f":{hangup.getsockname()[1]} failed (" in warned[0], warned
        fetcher.use_static(server.static_port)  # the next session: tried again
        assert (await fetcher.fetch_blob("files/small.bin", tmp_path / "c", sha,
                                         len(data)))[2] is True
        fetcher.use_static(0)  # an active without a static port
        assert (await fetcher.fetch_blob("files/small.bin", tmp_path / "d", sha,
                                         len(data)))[2] is False
        assert len(accepted) == 1
    finally:
        await fetcher.aclose()
        hangup.close()


class _CancelOnFirstBytes(Progress):
    """Cancels `scope` from the fetch thread once the first bytes arrived: mid-transfer."""

    def __init__(self, scope: trio.CancelScope):
        super().__init__(report=lambda status: None)
        self.scope, self.fired = scope, False

    def add(self, n: int) -> None:
        super().add(n)
        if not self.fired:
            self.fired = True
            trio.from_thread.run_sync(self.scope.cancel)
            deadline = time.monotonic() + 5
            # Hold the thread until the fetch was given up on (its stop event set): else on a
            # busy machine it could finish the file before the event loop got to that.
            while not self.scope.cancelled_caught and time.monotonic() < deadline:
                time.sleep(0.005)


async def test_cancelled_fetch_never_installs_and_resumes_later(served, tmp_path):
    server, token, files = served
    data, sha = files["big.bin"]
    partial_dir = tmp_path / "partial"
    dest = tmp_path / "big.bin"
    fetcher = fetcher_for(server, token, partial_dir)
    with trio.CancelScope() as scope:
        await fetcher.fetch("/api/v3/files/big.bin", dest, sha,
                            progress=_CancelOnFirstBytes(scope))
    assert scope.cancelled_caught
    await fetcher.aclose()  # closes once the abandoned thread has noticed
    with trio.fail_after(transfer.READ_TIMEOUT):
        while transfer._PARTIALS._locks:  # until the abandoned thread is gone
            await trio.sleep(0.01)
    assert not dest.exists()  # given up on: never put in place afterwards
    assert 0 < (partial_dir / sha).stat().st_size < BIG  # kept, to be resumed
    again = fetcher_for(server, token, partial_dir)
    try:
        await again.fetch("/api/v3/files/big.bin", dest, sha)
        assert dest.read_bytes() == data
    finally:
        await again.aclose()


def test_a_connection_checked_against_an_older_certificate_is_not_reused(served):
    """The VIP moved and the stream follows another active while a download was under way:
    that download's connection is not kept for the next one."""
    server, token, _ = served
    pool = Pool(server.url, {"Authorization": f"Bearer {token}"}, 15)
    fingerprint = server_fingerprint(server)
    pool.set_peer(fingerprint, pinned(fingerprint))
    try:
        with pool.get("/api/v3/files/small.bin", {}) as resp:
            assert resp.status == 200
            pool.set_peer("another", pinned("f" * 64))  # now another server is to be trusted
            resp.read()
        assert pool._idle == []
        with pytest.raises(CertificateMismatch):
            with pool.get("/api/v3/files/small.bin", {}):
                pass
    finally:
        pool.close()


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Serves DATA; a request without a Range gets only its first half, then the connection
    closes (an active killed mid-download); a Range request gets the rest."""
    DATA = random.Random(3).randbytes(300_000)

    def do_GET(self):
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-"))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(self.DATA) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.DATA) - 1}/{len(self.DATA)}")
        self.end_headers()
        self.wfile.write(self.DATA[start:] if start else self.DATA[:len(self.DATA) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


async def test_a_body_cut_short_fails_and_resumes(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutShort)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = _CutShort.DATA
    fetcher = Fetcher(f"http://127.0.0.1:{server.server_address[1]}", "t", tmp_path / "partial")
    try:
        # No sha256, as for a job log: only the length tells a short body from the whole.
        with pytest.raises(transfer.TransferError, match="still to come"):
            await fetcher.fetch("/x", tmp_path / "x", "")
        assert not (tmp_path / "x").exists()
        [partial] = (tmp_path / "partial").iterdir()
        assert partial.read_bytes() == data[:len(data) // 2]  # kept, to be resumed
        await fetcher.fetch("/x", tmp_path / "x", "")  # the next attempt: resumed
        assert (tmp_path / "x").read_bytes() == data
    finally:
        await fetcher.aclose()
        server.shutdown()


def test_one_writer_per_partial_file_across_threads(tmp_path):
    """Fetch threads claiming the same partial file one after another, in any timing, never
    overlap, and the lock table empties when they are done."""
    inside, worst = [0], [0]
    count_lock = threading.Lock()
    partial = tmp_path / "same"

    def worker(delay: float) -> None:
        time.sleep(delay)
        with transfer._PARTIALS.held(partial):
            with count_lock:
                inside[0] += 1
                worst[0] = max(worst[0], inside[0])
            time.sleep(0.002)
            with count_lock:
                inside[0] -= 1
    rng = random.Random(1)
    threads = [threading.Thread(target=worker, args=(rng.uniform(0, 0.02),)) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert worst[0] == 1
    assert transfer._PARTIALS._locks == {}
    assert os.listdir(tmp_path) == []
