"""drp.ha.transfer: catch-up downloads from a real dr-provision, in worker threads."""
from __future__ import annotations

import hashlib
import json
import os
import random
import ssl
import threading
import time

import pytest
import trio

from drp.ha import transfer
from drp.ha.bulkget import CertificateMismatch
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


def fetcher_for(server, token: str, partial_dir) -> Fetcher:
    """A fetcher that trusts the server's certificate, as the replication stream pins it."""
    fetcher = Fetcher(server.url, token, partial_dir)
    pem = ssl.get_server_certificate(("127.0.0.1", server.api_port))
    fetcher.set_fingerprint(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())
    return fetcher


async def test_fetch_refuses_a_server_with_another_certificate(served, tmp_path):
    """The token goes only to the server whose certificate the stream pinned."""
    server, token, files = served
    data, sha = files["small.bin"]
    fetcher = Fetcher(server.url, token, tmp_path / "partial")
    fetcher.set_fingerprint("0" * 64)
    try:
        with pytest.raises(CertificateMismatch, match="not sending the token"):
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
        size, got, staged = await fetcher.stage("/api/v3/files/small.bin", sha)
        assert (size, got) == (len(data), sha) and staged.name.endswith(".staged")
        await fetcher.install(staged, tmp_path / "x" / "small.bin", 0o644)
        assert (tmp_path / "x" / "small.bin").read_bytes() == data
        _, _, left = await fetcher.stage("/api/v3/files/small.bin", sha)  # never installed
        await fetcher.sweep_staged()  # as a follower starting after a crash does
        assert not left.exists()
    finally:
        await fetcher.aclose()


class _CancelOnFirstBytes(transfer.Progress):
    """Cancels `scope` from the fetch thread once the first bytes arrived: mid-transfer."""

    def __init__(self, scope: trio.CancelScope):
        super().__init__(report=lambda status: None)
        self.scope, self.fired = scope, False

    def add(self, n: int) -> None:
        super().add(n)
        if not self.fired:
            self.fired = True
            trio.from_thread.run_sync(self.scope.cancel)


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
