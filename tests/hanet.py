"""HA clusters in network namespaces: real dr-provision nodes under `ip netns exec` (needs root).

Used by tests/test_ha_roles.py and bench/failover.py.

    with Lab() as lab:
        cluster = Cluster(lab, tmp_path, nodes=2)   # n1 active, n2 passive, a client host
        cluster.start()
        cluster.api("GET", "/info")                  # from the client namespace, via the VIP

HTTP clients run inside a namespace without a subprocess: a dedicated thread enters the
namespace with setns(2) (the network namespace is per thread) and owns an httpx.Client, so every
socket it opens lives in that namespace.
"""
from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import httpx

from tests.drpserver import AUTH, BIN, DrpServer

CLONE_NEWNET = 0x40000000
VIP = "198.18.0.100"
VIP_CIDR = f"{VIP}/24"
API_PORT, STATIC_PORT, METRICS_PORT = 8092, 8091, 8080
HA_ID = "roles-test"
REALTIME = "Stream switch to realtime streaming"
CONNECT_TIMEOUT = 0.05  # a LAN connect takes well under 1 ms; a SYN sent to the old MAC is lost
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(ns: str) -> None:
    """Move the calling thread into network namespace `ns` (from `ip netns add`)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsClient:
    """An httpx.Client living in its own thread inside a network namespace.

    `call(fn)` runs fn(http) in that thread and returns its result (or raises its exception).
    """

    def __init__(self, ns: str, base_url: str = f"https://{VIP}:{API_PORT}/api/v3",
                 auth=AUTH, timeout: float = 10.0, fresh_connections: bool = False):
        self.ns, self.base_url = ns, base_url
        self._jobs: queue.Queue = queue.Queue()
        self._ready = queue.Queue()
        limits = httpx.Limits(max_keepalive_connections=0) if fresh_connections else None
        self._kw = dict(base_url=base_url, verify=False, timeout=timeout, auth=auth,
                        **({"limits": limits} if limits else {}))
        self._thread = threading.Thread(target=self._run, name=f"netns-{ns}", daemon=True)
        self._thread.start()
        err = self._ready.get()
        if err is not None:
            raise err

    def _run(self) -> None:
        try:
            enter_netns(self.ns)
            http = httpx.Client(**self._kw)
        except BaseException as e:  # noqa: BLE001 — reported to the creator
            self._ready.put(e)
            return
        self._ready.put(None)
        with http:
            while (job := self._jobs.get()) is not None:
                fn, box = job
                try:
                    box.put((True, fn(http)))
                except BaseException as e:  # noqa: BLE001
                    box.put((False, e))

    def call(self, fn, timeout: float = 60.0):
        box: queue.Queue = queue.Queue()
        self._jobs.put((fn, box))
        ok, value = box.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        return self.call(lambda http: http.request(method, path, **kw))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)


def run_in_thread_ns(ns: str, fn):
    """Run fn() in a fresh thread inside `ns`; returns the thread (already started).

    fn's exceptions are kept on thread.error."""
    def target():
        try:
            enter_netns(ns)
            fn()
        except BaseException as e:  # noqa: BLE001
            target_thread.error = e
    target_thread = threading.Thread(target=target, daemon=True)
    target_thread.error = None
    target_thread.start()
    return target_thread


class Node(DrpServer):
    """A dr-provision process in a lab host's namespace, fixed ports, clients from inside."""

    def __init__(self, host, base_root: Path, args: list[str], env: dict | None = None):
        super().__init__(base_root, args, env, host=host.ip,
                         prefix=["ip", "netns", "exec", host.ns])
        self.lab_host = host
        self.api_port, self.static_port, self.metrics_port = API_PORT, STATIC_PORT, METRICS_PORT
        self._http: NetnsClient | None = None

    @property
    def drp_id(self) -> str:
        return self.args[self.args.index("--drp-id") + 1]

    @property
    def http(self) -> NetnsClient:
        """A client for this node's own address, from inside its namespace."""
        if self._http is None:
            self._http = NetnsClient(self.lab_host.ns, f"{self.url}/api/v3")
        return self._http

    def ping(self) -> None:
        """DrpServer.wait_ready's probe, sent from inside the node's namespace."""
        self.http.call(lambda h: h.get("/info", timeout=1))

    def drpcli_in(self, *args: str, timeout: float = 60):
        """drpcli run inside the node's own namespace, against its own address: its JSON
        output (None when it prints nothing)."""
        out = self.lab_host.run([str(BIN / "drpcli"), *args],
                                env={**self.drpcli_env(), "RS_ENDPOINT": self.url},
                                timeout=timeout)
        return json.loads(out.stdout) if out.stdout.strip() else None

    def info(self) -> dict:
        return self.http.request("GET", "/info").json()

    def metrics(self) -> str:
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        return self.http.call(lambda h: h.get(url).text)

    def ha_state(self) -> dict:
        return json.loads((self.base_root / "ha-state.json").read_text())

    def has_vip(self) -> bool:
        return VIP_CIDR in self.lab_host.addresses()

    def log_count(self, text: str) -> int:
        return self.logs().count(text)

    def wait_log_count(self, text: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_count(text) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not {count}x in the log after {timeout}s:\n"
                             f"{self.logs()[-4000:]}")

    def wait_info(self, pred, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            try:
                info = self.info()
                if pred(info):
                    return info
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.lab_host.name}: condition not met after {timeout}s; info "
                             f"{json.dumps(info)[:800]}\n{self.logs()[-3000:]}")

    def close(self) -> None:
        self.kill()
        if self._http is not None:
            self._http.close()
            self._http = None


class Writer:
    """POSTs params through the VIP from the client namespace; keeps (sent, acked, name).

    Several loops run side by side, so one request stuck on a connection to the old active
    (its packets black-holed once the VIP moved) does not hide that the new one answers."""

    def __init__(self, ns: str, loops: int = 4, prefix: str = "w"):
        self.ns, self.prefix = ns, prefix
        self.acked: list[tuple[float, float, str]] = []
        self.errors: list[tuple[float, float, str]] = []  # (sent, failed, exception name)
        self.nodes: dict[str, str] = {}  # name -> the drp-id that acknowledged it (X-DRP-Node)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(loops)]
        for t in self._threads:
            t.start()

    def _run(self, loop: int) -> None:
        enter_netns(self.ns)
        http = httpx.Client(base_url=f"https://{VIP}:{API_PORT}/api/v3", verify=False,
                            auth=AUTH,
                            timeout=httpx.Timeout(2.0, connect=CONNECT_TIMEOUT),
                            limits=httpx.Limits(max_keepalive_connections=0))
        n = 0
        with http:
            while not self._stop.is_set():
                n += 1
                name = f"{self.prefix}-{loop}-{n}"
                sent = time.monotonic()
                try:
                    r = http.post("/params", json={"Name": name, "Schema": {}})
                    ok = r.status_code == 201
                except httpx.HTTPError as e:
                    self.errors.append((sent, time.monotonic(), type(e).__name__))
                    ok = False
                if ok:
                    self.nodes[name] = r.headers.get("X-DRP-Node", "")
                    self.acked.append((sent, time.monotonic(), name))
                    time.sleep(0.01)
                else:
                    time.sleep(0.005)

    def first_ack_after(self, t0: float, timeout: float = 30) -> float:
        """When the first write sent at or after t0 was acknowledged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [acked for sent, acked, _ in self.acked[-100:] if sent >= t0]
            if later:
                return min(later)
            time.sleep(0.005)
        raise RuntimeError(f"no write accepted through the VIP within {timeout}s")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def make_token(workdir: Path) -> tuple[Path, str]:
    """Start one standalone node on loopback, make the HA token as the guide says, stop it.

    Returns its base root (the seed of the initially active node) and the token."""
    seed = DrpServer(workdir / "seed", ["--drp-id", "seed"]).start()
    try:
        out = seed.bash("drpcli users token rocketskates ttl 3y | jq -r .Token")
        token = out.stdout.strip()
        assert token and token != "null", out
    finally:
        seed.stop()
    return seed.base_root, token


class Cluster:
    """n1 (initially active, seeded), n2.. (passive) and a client host on one lab bridge."""

    def __init__(self, lab, workdir: Path, nodes: int = 2, seed: tuple[Path, str] | None = None,
                 extra_args: list[str] = ()):
        self.lab, self.workdir = lab, Path(workdir)
        self.seed_root, self.token = seed or make_token(self.workdir)
        self.hosts = [lab.add_host(f"n{i}", f"198.18.0.{10 + i}/24") for i in range(1, nodes + 1)]
        self.client_host = lab.add_host("client", "198.18.0.50/24")
        self.extra_args = list(extra_args)
        self.nodes: list[Node] = []
        self._client: NetnsClient | None = None

    def node_args(self, i: int, passive: bool) -> list[str]:
        return ["--drp-id", f"n{i + 1}", "--ha-enabled", "true", "--ha-id", HA_ID,
                "--ha-address", VIP_CIDR, "--ha-interface", "eth0", "--ha-token", self.token,
                "--ha-passive", str(passive).lower(), *self.extra_args]

    def make_node(self, i: int, passive: bool, name: str | None = None) -> Node:
        root = self.workdir / (name or f"n{i + 1}")
        if i == 0 and not root.exists():
            shutil.copytree(self.seed_root, root)
        node = Node(self.hosts[i], root, self.node_args(i, passive))
        self.nodes.append(node)
        return node

    def start(self) -> list[Node]:
        """n1 active (waits until it accepts writes), then the passives (until in sync)."""
        active = self.make_node(0, False).start()
        active.wait_log("active: accepting writes")
        passives = [self.make_node(i, True).start() for i in range(1, len(self.hosts))]
        for p in passives:
            p.wait_log(REALTIME)
        return [active, *passives]

    @property
    def client(self) -> NetnsClient:
        """The client host's HTTP client for the VIP (a fresh connection per request, so a
        moved VIP is reached on the next request)."""
        if self._client is None:
            self._client = NetnsClient(self.client_host.ns, fresh_connections=True)
        return self._client

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return self.client.request(method, path, **kw)

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.close()
            except Exception:  # noqa: BLE001 — best effort; the lab kills the rest
                pass
        if self._client is not None:
            self._client.close()


