"""The dr-provision process: sd_notify, signals, logs, identity and certificate across restarts."""
from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from drp import systemd

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.\-]+: \S")


class NotifySocket:
    """The AF_UNIX datagram socket systemd would give a Type=notify service."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                for line in data.decode().splitlines():
                    self.messages.append((time.monotonic(), line))
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 20) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.messages:
                    if predicate(item[1]):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching notification; got {self.texts()}")
                self._cond.wait(left)

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def close(self):
        self._closed = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def api_answers(server) -> bool:
    try:
        return httpx.get(server.url + "/api/v3/info", auth=("rocketskates", "r0cketsk8ts"),
                         verify=False, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# ---- sd_notify --------------------------------------------------------------------------------
def test_sd_notify_ready_status_watchdog_stopping(drp_factory, notify_socket):
    server = drp_factory("notify", start=False,
                         env={"NOTIFY_SOCKET": str(notify_socket.path),
                              "WATCHDOG_USEC": "200000"})
    server.start(wait=False)
    notify_socket.wait_for(lambda m: m == "READY=1")
    # READY=1 is sent once the API listens: it answers right away, no retry needed
    assert api_answers(server)
    texts = notify_socket.texts()
    status = [m for m in texts if m.startswith("STATUS=")]
    assert status and status[0] != "STATUS=", texts
    assert "standalone" in status[-1] or "active" in status[-1], status
    assert texts.index("READY=1") > texts.index(status[0])  # status first, then ready
    # watchdog keep-alives every WATCHDOG_USEC/2 = 0.1 s
    notify_socket.wait_for(lambda m: m == "WATCHDOG=1")
    time.sleep(0.6)
    beats = [t for t, m in notify_socket.messages if m == "WATCHDOG=1"]
    assert len(beats) >= 3, notify_socket.texts()
    assert "STOPPING=1" not in notify_socket.texts()

    started = time.monotonic()
    assert server.stop() == 0
    elapsed = time.monotonic() - started
    notify_socket.wait_for(lambda m: m == "STOPPING=1", timeout=1)
    assert elapsed < 2.5, f"SIGTERM took {elapsed:.1f}s"
    # without JOURNAL_STREAM, log lines carry their own timestamps
    lines = [ln for ln in server.logs().splitlines() if ln.strip()]
    assert len(lines) >= 3
    for line in lines:
        assert TIMESTAMP.match(line), line
        assert LOG_LINE.match(line.split(" ", 2)[2]), line
    # the watchdog stops with the process
    stopping_at = next(t for t, m in notify_socket.messages if m == "STOPPING=1")
    time.sleep(0.3)
    assert all(t < stopping_at + 0.2 for t, m in notify_socket.messages if m == "WATCHDOG=1")


def test_notify_unit(tmp_path, monkeypatch):
    """The sd_notify client itself: path and abstract sockets, and no socket at all."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    ns = NotifySocket(tmp_path / "n.sock")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
        assert systemd.notify("STATUS=hello") is True
        ns.wait_for(lambda m: m == "STATUS=hello", timeout=5)
    finally:
        ns.close()
    name = f"drp-test-{os.getpid()}-{time.monotonic_ns()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        abstract.bind("\0" + name)
        abstract.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1") is True
        assert abstract.recv(100) == b"READY=1"
    finally:
        abstract.close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert systemd.watchdog_interval() is None


# ---- signals and logs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def journal_server(module_drp_factory, tmp_path_factory):
    """A server run as under systemd without a watchdog: JOURNAL_STREAM and NOTIFY_SOCKET set."""
    ns = NotifySocket(tmp_path_factory.mktemp("notify") / "n.sock")
    server = module_drp_factory("journal", env={"JOURNAL_STREAM": "8:12345",
                                                "NOTIFY_SOCKET": str(ns.path)})
    server.notify = ns
    yield server
    ns.close()


def test_no_watchdog_without_watchdog_usec(journal_server):
    journal_server.notify.wait_for(lambda m: m == "READY=1")
    time.sleep(0.3)
    assert "WATCHDOG=1" not in journal_server.notify.texts()


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
def test_sigusr_without_ha_is_ignored(journal_server, signum):
    name = signal.Signals(signum).name
    journal_server.signal(signum)
    journal_server.wait_log(f"got {name}: HA not enabled; ignoring", timeout=10)
    assert journal_server.proc.poll() is None
    with journal_server.client() as c:
        assert c.get("/info").json()["ha_is_active"] is True
        r = c.post("/profiles", json={"Name": f"after-{name}"})
        assert r.status_code == 201, r.text


def test_logs_have_no_timestamps_under_journald(journal_server):
    journal_server.wait_log("API listening")
    lines = [ln for ln in journal_server.logs().splitlines() if ln.strip()]
    assert len(lines) >= 3, lines
    for line in lines:
        assert not TIMESTAMP.match(line), line
        assert LOG_LINE.match(line), line
    assert any(ln.startswith("WARNING drp.node: created the default user") for ln in lines)
    assert any(ln.startswith("INFO drp.server: API listening") for ln in lines)


# ---- identity and certificate -----------------------------------------------------------------
def server_cert_der(server) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((server.host, server.api_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server.host) as tls:
            return tls.getpeercert(binary_form=True)


def test_restart_keeps_id_and_certificate(drp_factory):
    """The id chosen on first start (here from --drp-id) and the self-signed certificate made
    then are kept in the base root: a restart, even without --drp-id, serves both again."""
    server = drp_factory("ident", "--static-ip", "192.0.2.10", "--drp-id", "pinned-node")
    with server.client() as c:
        assert c.get("/info").json()["id"] == "pinned-node"
    cert = server_cert_der(server)
    assert (server.base_root / "server.crt").is_file()
    assert oct((server.base_root / "server.key").stat().st_mode & 0o777) == "0o600"
    sans = x509.load_der_x509_certificate(cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "192.0.2.10"} <= ips

    assert server.stop() == 0
    server.args = ["--static-ip", "192.0.2.10"]  # no --drp-id this time
    server.start()
    with server.client() as c:
        info = c.get("/info").json()
    assert info["id"] == "pinned-node" and info["local_id"] == "pinned-node"
    assert server_cert_der(server) == cert


def test_operator_certificate_is_used_then_sigint(drp_factory, journal_server):
    """--tls-cert/--tls-key: the server presents the operator's certificate, not its own."""
    server = drp_factory("custom", "--tls-cert", str(journal_server.base_root / "server.crt"),
                         "--tls-key", str(journal_server.base_root / "server.key"))
    assert server_cert_der(server) == server_cert_der(journal_server)
    assert not (server.base_root / "server.crt").exists()
    # and SIGINT (Ctrl-C in a terminal) stops it as gracefully as SIGTERM
    started = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 2.5
    assert "got SIGINT: graceful stop" in server.logs()


async def test_sigterm_with_an_open_event_stream(drp_factory):
    """Open websockets do not hold the process: they are closed at once on SIGTERM."""
    import base64

    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    server = drp_factory("wsstop")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    auth = (b"Authorization", b"Basic " + base64.b64encode(b"rocketskates:r0cketsk8ts"))
    with trio.fail_after(20):
        async with open_websocket_url(server.url.replace("https://", "wss://") + "/api/v3/ws",
                                      ssl_context=ctx, extra_headers=[auth]) as ws:
            await ws.send_message("register machines.*.*")
            await ws.send_message("ping")
            assert "Error" in await ws.get_message()  # registered and served
            started = time.monotonic()
            assert await trio.to_thread.run_sync(server.stop) == 0
            assert time.monotonic() - started < 2.5
            with pytest.raises(ConnectionClosed):
                await ws.get_message()


def test_a_disk_that_will_not_flush_stops_the_server(drp_factory, tmp_path):
    """A write whose commit cannot be flushed gets 500 StorageError, and the server stops with
    exit status 1 (systemd's Restart=on-failure starts it again from what the disk holds)."""
    flag = tmp_path / "disk-fails"
    server = drp_factory("flaky", env={"PYTHONPATH": str(Path(__file__).parent / "faults"),
                                       "DRP_TEST_FAIL_WAL_FLUSH": str(flag)})
    with server.client() as c:
        assert c.post("/profiles", json={"Name": "before"}).status_code == 201
        flag.touch()
        r = c.post("/profiles", json={"Name": "unflushed"})
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["Type"] == "StorageError" and body["Code"] == 500
    assert "could not be made durable" in body["Messages"][0]
    assert server.proc.wait(15) == 1
    assert re.search(r"CRITICAL drp.store: a commit could not be made durable", server.logs())
    flag.unlink()
    server.start()  # what a restart finds: the disk came back
    with server.client() as c:
        assert c.get("/profiles/before").status_code == 200
        assert c.post("/profiles", json={"Name": "after"}).status_code == 201
