"""A passive replaying the change log while a big file comes over a slow link: progress in the
journal and on the Status: line while the file is fetched, a stop that does not wait for the
copy, and a restart that resumes the partial file and says so. Real processes on loopback; the
passive's downloads are slowed inside its own process (a sleep per 64 KiB read)."""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time

import pytest

from tests.hacluster import Cluster, http, make_token
from tests.notify import Notifications

pytestmark = pytest.mark.timeout(120)
REALTIME = "Stream switch to realtime streaming"
BIG = 24 << 20  # ~8 s at the slowed rate (64 KiB per 20 ms)

SLOW_LINK = '''
import time, drp.ha.transfer as t
_receive = t._receive
def slow(resp, *args):
    read = resp.readinto
    def readinto(buf):
        time.sleep(0.02)
        return read(buf)
    resp.readinto = readinto
    return _receive(resp, *args)
t._receive = slow
'''


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "seed").mkdir()
    seed_root, token = make_token(tmp_path / "seed")
    c = Cluster(tmp_path, token, seed_root)
    yield c
    c.stop_all()


def slowed(server) -> None:
    """Run this server's dr-provision with its downloads slowed down."""
    code = (f"exec({SLOW_LINK!r}); from drp.server import main; "
            "sys.argv[0] = 'dr-provision'; main()")
    server.command = lambda: [sys.executable, "-c", f"import sys; {code}", "--base-root",
                              str(server.base_root), "--api-port", str(server.api_port),
                              "--static-port", str(server.static_port), "--metrics-port", "0",
                              *server.args]


def test_replay_progress_bounded_stop_and_resume(cluster, tmp_path):
    a = cluster.node("a", passive=False)
    data = os.urandom(BIG)
    with http(a, cluster.token) as c:
        c.post("/machines", json={"Name": "before-the-iso"}).raise_for_status()
        c.post("/isos/big.iso", content=data).raise_for_status()
        c.post("/machines", json={"Name": "after-the-iso"}).raise_for_status()

    b = cluster.node("b", passive=True, start=False)
    b.env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    seen = Notifications(tmp_path / "notify")
    slowed(b)
    try:
        cluster.start(b)
        # progress while the file comes, though nothing else happens on the connection
        b.wait_log("files 0/1", timeout=30)
        line = next(ln for ln in b.logs().splitlines() if "files 0/1" in ln)
        assert "streaming: applied seq" in line and "GiB" in line and "ETA" in line, line
        deadline = time.monotonic() + 5
        while not any("files" in s for s in seen.statuses()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(s.startswith("passive: syncing,") and "GiB" in s for s in seen.statuses()), \
            seen.statuses()
        # a stop mid-copy does not wait for the copy
        began = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        b.proc.wait(10)
        took = time.monotonic() - began
        assert took < 5, f"the stop took {took:.1f}s"
        assert REALTIME not in b.logs()  # it really was mid-copy
        partial = list((b.base_root / "ha" / "partial").glob("*"))
        assert partial and partial[0].stat().st_size > 0, partial
        held = partial[0].stat().st_size
    finally:
        seen.close()

    del b.command  # the normal binary again, full speed
    cluster.start(b)
    b.wait_log(REALTIME, timeout=60)
    resumed = [ln for ln in b.logs().splitlines() if "resuming " in ln]
    assert resumed and f"{held / 2**20:.1f} MiB of it already here" in resumed[0], resumed
    got = (b.base_root / "tftpboot" / "isos" / "big.iso").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
