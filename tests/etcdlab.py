"""Real etcd v3 clusters for tests and benchmarks (Debian's /usr/bin/etcd 3.4).

    with EtcdCluster(tmp_path) as ec:          # 3 members on 127.0.0.1, free ports
        ec.start()
        put(ec.endpoints[0], "k", "v")

    EtcdCluster(workdir, hosts=[h1, h2, h3])   # one member per netns Host, on host.ip:2379/2380

Every member gets a fresh data dir under the workdir (etcd refuses to form a "new" cluster over an
old one), its output goes to workdir/etcd-<name>.log, and `close()` kills every member but deletes
nothing.  The gateway helpers (`request`, `put`, `get`) talk to etcd's JSON gateway (keys and
values base64, int64 as strings) either directly or from inside a netns Host.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.drpserver import free_port

ETCD = "/usr/bin/etcd"
CLIENT_PORT, PEER_PORT = 2379, 2380  # fixed ports inside lab hosts (one namespace each)


class EtcdError(Exception):
    """A gateway call failed (connection refused, timeout, HTTP error, grpc error body)."""


# Runs inside a namespace: one HTTP call, prints the body; exits 1 with the error on failure.
_PY_CALL = (
    "import sys, urllib.request as u\n"
    "d = sys.argv[2].encode() if sys.argv[2] else None\n"
    "try:\n"
    "    r = u.urlopen(u.Request(sys.argv[1], data=d), timeout=float(sys.argv[3]))\n"
    "    sys.stdout.write(r.read().decode())\n"
    "except Exception as e:\n"
    "    body = e.read().decode() if hasattr(e, 'read') else ''\n"
    "    sys.stderr.write(f'{type(e).__name__}: {e} {body}'); sys.exit(1)\n"
)


def request(endpoint: str, path: str, body: dict | None = None, timeout: float = 2.0,
            host=None) -> dict:
    """POST body (or GET when None) to endpoint+path; from inside `host`'s namespace if given."""
    url = endpoint.rstrip("/") + path
    data = json.dumps(body) if body is not None else ""
    if host is None:
        try:
            req = urllib.request.Request(url, data=data.encode() if data else None)
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as e:
            raise EtcdError(f"{url}: HTTP {e.code} {e.read().decode(errors='replace')}") from None
        except (OSError, ValueError) as e:  # URLError, timeouts, resets
            raise EtcdError(f"{url}: {type(e).__name__}: {e}") from None
    else:
        p = host.run([sys.executable, "-c", _PY_CALL, url, data, str(timeout)], check=False,
                     timeout=timeout + 10)
        if p.returncode != 0:
            raise EtcdError(f"[{host.name}] {url}: {p.stderr.strip()}")
        text = p.stdout
    try:
        out = json.loads(text)
    except ValueError:
        raise EtcdError(f"{url}: not JSON: {text[:200]!r}") from None
    if isinstance(out, dict) and "error" in out and "header" not in out:
        raise EtcdError(f"{url}: {out}")
    return out


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def put(endpoint: str, key: str, value: str, lease: str | int | None = None,
        timeout: float = 2.0, host=None) -> dict:
    body = {"key": _b64(key), "value": _b64(value)}
    if lease is not None:
        body["lease"] = str(lease)
    return request(endpoint, "/v3/kv/put", body, timeout, host)


def get(endpoint: str, key: str, timeout: float = 2.0, host=None) -> str | None:
    """The value of key (linearizable read), or None when absent."""
    kvs = request(endpoint, "/v3/kv/range", {"key": _b64(key)}, timeout, host).get("kvs") or []
    return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None


class Member:
    def __init__(self, name: str, ip: str, client_port: int, peer_port: int, host=None):
        self.name, self.ip, self.host = name, ip, host
        self.client_url = f"http://{ip}:{client_port}"
        self.peer_url = f"http://{ip}:{peer_port}"
        self.data_dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, workdir, n: int = 3, hosts=None, heartbeat_ms: int = 100,
                 election_ms: int = 1000, etcd: str = ETCD):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts = list(hosts) if hosts else None
        self.n = len(self.hosts) if self.hosts else n
        self.heartbeat_ms, self.election_ms, self.etcd = heartbeat_ms, election_ms, etcd
        self.token = f"drp-etcdlab-{uuid.uuid4().hex[:12]}"
        self.start_seconds: float | None = None  # how long the last start() took
        self.members = self._layout()

    def _layout(self) -> list[Member]:
        if self.hosts:
            return [Member(f"m{i}", h.ip, CLIENT_PORT, PEER_PORT, host=h)
                    for i, h in enumerate(self.hosts)]
        return [Member(f"m{i}", "127.0.0.1", free_port(), free_port()) for i in range(self.n)]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints_arg(self) -> str:
        return ",".join(self.endpoints)

    def log_path(self, i: int) -> Path:
        return self.workdir / f"etcd-{self.members[i].name}.log"

    def log(self, i: int) -> str:
        p = self.log_path(i)
        return p.read_text(errors="replace") if p.exists() else ""

    def logs(self) -> str:
        """Every member's log, headed by its name (for failure messages)."""
        return "\n".join(f"----- etcd {m.name} ({m.client_url}) -----\n{self.log(i)[-6000:]}"
                         for i, m in enumerate(self.members))

    def _argv(self, m: Member, state: str) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [self.etcd, "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                "--enable-v2=false", "--logger", "zap", "--log-outputs", "stderr"]

    def _spawn(self, i: int, state: str) -> None:
        m = self.members[i]
        if m.alive():
            raise RuntimeError(f"etcd {m.name} is already running")
        # ETCD_* variables in our environment would silently override the flags
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(self.log_path(i), "a") as logf:
            logf.write(f"\n===== {time.strftime('%H:%M:%S')} start {m.name} state={state}\n")
            logf.flush()
            kw = dict(stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env)
            argv = self._argv(m, state)
            m.proc = m.host.popen(argv, **kw) if m.host else subprocess.Popen(argv, **kw)

    def healthy(self, i: int, timeout: float = 1.0) -> bool:
        m = self.members[i]
        if not m.alive():
            return False
        try:
            return request(m.client_url, "/health", None, timeout, m.host).get("health") == "true"
        except EtcdError:
            return False

    def _wait_healthy(self, idx: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(idx)
        while pending:
            dead = [self.members[i].name for i in pending if not self.members[i].alive()]
            if dead:
                raise RuntimeError(f"etcd {dead} exited during start\n{self.logs()}")
            pending = [i for i in pending if not self.healthy(i)]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = [self.members[i].name for i in pending]
                raise TimeoutError(f"etcd {names} not healthy after {timeout}s\n{self.logs()}")
            time.sleep(0.1)

    def start(self, timeout: float = 20) -> "EtcdCluster":
        """Start every member as a new cluster and wait until all answer /health with true."""
        t0 = time.monotonic()
        attempts = 1 if self.hosts else 3  # loopback: a free port may be taken before etcd binds
        for attempt in range(attempts):
            for i, m in enumerate(self.members):
                # a fresh member needs a fresh dir: never reuse one from an earlier cluster
                m.data_dir = Path(tempfile.mkdtemp(prefix=f"etcd-{m.name}-", dir=self.workdir))
                self._spawn(i, "new")
            try:
                self._wait_healthy(list(range(self.n)), timeout)
                break
            except BaseException as e:
                in_use = any("address already in use" in self.log(i) for i in range(self.n))
                self.close()
                if not isinstance(e, RuntimeError) or not in_use or attempt == attempts - 1:
                    raise
                self.token = f"drp-etcdlab-{uuid.uuid4().hex[:12]}"
                self.members = self._layout()
        self.start_seconds = time.monotonic() - t0
        return self

    def kill(self, i: int) -> None:
        """SIGKILL member i and wait until it is gone."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
        if m.proc is not None:
            m.proc.wait(timeout=10)

    def stop(self, i: int, timeout: float = 10) -> None:
        """SIGTERM member i (graceful), SIGKILL if it lingers."""
        m = self.members[i]
        if m.proc is None or m.proc.poll() is not None:
            return
        m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(i)

    def restart(self, i: int, timeout: float = 20) -> None:
        """Start member i again over its old data dir and wait until it is healthy."""
        if self.members[i].data_dir is None:
            raise RuntimeError("restart() before start()")
        self._spawn(i, "existing")
        self._wait_healthy([i], timeout)

    def close(self) -> None:
        for i in range(len(self.members)):
            try:
                self.kill(i)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "EtcdCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def etcd3(tmp_path):
    """A started 3-member loopback etcd cluster (skips without /usr/bin/etcd); always closed."""
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"{ETCD} missing: apt-get install etcd-server")
    cluster = EtcdCluster(tmp_path / "etcd")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def etcd_floor(endpoint: str, runs: int = 3, poll_s: float = 0.01) -> dict:
    """What etcd itself costs a lease-based failover: the smallest TTL it grants when asked for
    1 s, and how late (seconds past that TTL) an expired lease's key actually disappears."""
    min_ttl = int(request(endpoint, "/v3/lease/grant", {"TTL": 1})["TTL"])
    late = []
    for r in range(runs):
        key = f"/etcdlab/floor/{uuid.uuid4().hex[:8]}/{r}"
        lease = request(endpoint, "/v3/lease/grant", {"TTL": min_ttl})
        granted = time.monotonic()  # the lease clock started a little before this
        put(endpoint, key, "x", lease=lease["ID"])
        deadline = granted + min_ttl + 10
        while get(endpoint, key) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key} still present 10 s after its {min_ttl} s lease")
            time.sleep(poll_s)
        late.append(round(time.monotonic() - granted - min_ttl, 4))
    return {"min_ttl_s": min_ttl, "expiry_late_s": late,
            "expiry_late_median_s": statistics.median(late)}
