"""HA clusters with automatic failover: three etcd members and drp nodes in network namespaces.

    with Lab() as lab:
        auto = AutoCluster(lab, tmp_path)        # e0..e2 (etcd), n1..n3 (drp), a client host
        auto.start()                             # n1 active, n2 and n3 In-Sync and in `sync`
        auto.cut("n1", "etcd")                   # black-hole routes, both directions
        auto.heal()

Used by tests/test_autofailover.py, tests/test_fault.py's automatic mode and bench/failover.py.
Partitions are `ip route add blackhole` in both namespaces (no packet filter needed): a
connection across the cut hangs, as it would on a real network.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tests.etcdlab import EtcdCluster, _b64, get, put, request
from tests.hanet import REALTIME, Cluster, Node

ETCD_NET = "198.18.0.{}/24"
PREFIX = "/drp/roles-test/"  # the default: /drp/<ha-id>/ (tests.hanet.HA_ID)


class AutoCluster(Cluster):
    def __init__(self, lab, workdir: Path, nodes: int = 3, extra_args: list[str] = (),
                 etcd_members: int = 3, seed: tuple[Path, str] | None = None):
        self.etcd_hosts = [lab.add_host(f"e{i}", ETCD_NET.format(21 + i))
                           for i in range(etcd_members)]
        self.etcd = EtcdCluster(Path(workdir) / "etcd", hosts=self.etcd_hosts)
        super().__init__(lab, workdir, nodes=nodes, seed=seed, extra_args=[
            "--ha-etcd-endpoints", self.etcd.endpoints_arg, *extra_args])
        self._cuts: list[tuple[str, str]] = []  # (namespace, ip) routes added

    # ---- starting -------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> list[Node]:
        """etcd, then n1 (meant to start active: it gets the first go at the leader key),
        then the passives; returns once every passive is In-Sync and in the sync set."""
        self.etcd.start()
        active = self.make_node(0, False).start()
        active.wait_log("active: accepting writes", timeout=timeout)
        passives = [self.make_node(i, True).start() for i in range(1, len(self.hosts))]
        for p in passives:
            p.wait_log(REALTIME, timeout=timeout)
        self.wait_sync({p.drp_id for p in passives}, timeout=timeout)
        return [active, *passives]

    # ---- reading etcd (from the client host, as an operator would) -------------------------
    def etcd_get(self, key: str) -> str | None:
        for endpoint, host in zip(self.etcd.endpoints, self.etcd_hosts):
            try:
                return get(endpoint, PREFIX + key, host=self.client_host)
            except Exception:  # noqa: BLE001 — that member is down or cut: ask the next
                continue
        raise RuntimeError("no etcd member answered")

    def etcd_put(self, key: str, value: str) -> None:
        """Put PREFIX+key from the client host (what an operator's etcdctl would do)."""
        self._each_member(lambda ep: put(ep, PREFIX + key, value, host=self.client_host))

    def etcd_delete(self, key: str) -> None:
        self._each_member(lambda ep: request(ep, "/v3/kv/deleterange",
                                             {"key": _b64(PREFIX + key)}, host=self.client_host))

    def _each_member(self, call) -> None:
        for endpoint in self.etcd.endpoints:
            try:
                call(endpoint)
                return
            except Exception:  # noqa: BLE001 — that member is down or cut: ask the next
                continue
        raise RuntimeError("no etcd member answered")

    def etcd_followers(self) -> list[int]:
        """Indexes of the live etcd members that are not the raft leader."""
        out = []
        for i, m in enumerate(self.etcd.members):
            try:
                st = request(m.client_url, "/v3/maintenance/status", {}, host=self.client_host)
            except Exception:  # noqa: BLE001 — down: neither leader nor follower
                continue
            if st.get("leader") != st.get("header", {}).get("member_id"):
                out.append(i)
        return out

    def leader(self) -> str | None:
        return self.etcd_get("leader")

    def sync(self) -> dict | None:
        text = self.etcd_get("sync")
        return json.loads(text) if text else None

    def wait_sync(self, members: set[str], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sync = self.sync()
            if sync and set(sync["Members"]) == set(members):
                return sync
            time.sleep(0.1)
        raise AssertionError(f"sync set never became {sorted(members)}: {self.sync()}")

    def wait_leader(self, pred=lambda leader: leader is not None, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if pred(leader):
                return leader
            time.sleep(0.05)
        raise AssertionError(f"leader never satisfied the condition: {self.leader()}")

    def node(self, drp_id: str) -> Node:
        return next(n for n in self.nodes if n.drp_id == drp_id)

    # ---- partitions -----------------------------------------------------------------------
    def _ips(self, group: str) -> list[tuple[str, str]]:
        """(namespace, ip) of a host name, "etcd" (every member) or "nodes" (every drp node)."""
        if group == "etcd":
            return [(h.ns, h.ip) for h in self.etcd_hosts]
        if group == "nodes":
            return [(h.ns, h.ip) for h in self.hosts]
        host = self.lab.hosts[group]
        return [(host.ns, host.ip)]

    def cut(self, a: str, b: str) -> None:
        """No packet between the hosts of group a and group b, either way (the VIP too, when
        a side holds it: routes match destination addresses)."""
        from tests.hanet import VIP
        for ns_a, ip_a in self._ips(a):
            for ns_b, ip_b in self._ips(b):
                for ns, ip in ((ns_a, ip_b), (ns_b, ip_a)):
                    self._blackhole(ns, ip)
                if b != "etcd" and a != "etcd":
                    self._blackhole(ns_a, VIP)
                    self._blackhole(ns_b, VIP)

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        """Split host names (n1.., e0..) into two sides with no packet between them. The VIP
        stays reachable only from side_a (put the current active there): routes are static, so
        the drp nodes of side_b lose it for the whole cut, whoever holds it later."""
        from tests.hanet import VIP
        for a in side_a:
            for b in side_b:
                for ns_a, ip_a in self._ips(a):
                    for ns_b, ip_b in self._ips(b):
                        self._blackhole(ns_a, ip_b)
                        self._blackhole(ns_b, ip_a)
        for b in side_b:
            if b in self.lab.hosts and self.lab.hosts[b] in self.hosts:
                self._blackhole(self.lab.hosts[b].ns, VIP)

    def _blackhole(self, ns: str, ip: str) -> None:
        if (ns, ip) in self._cuts:
            return
        self.lab_run(ns, ["ip", "route", "add", "blackhole", f"{ip}/32"])
        self._cuts.append((ns, ip))

    def heal(self) -> None:
        for ns, ip in self._cuts:
            self.lab_run(ns, ["ip", "route", "del", "blackhole", f"{ip}/32"], check=False)
        self._cuts.clear()

    def lab_run(self, ns: str, cmd: list[str], check: bool = True) -> None:
        import subprocess
        subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, capture_output=True)

    def close(self) -> None:
        try:
            self.heal()
        finally:
            try:
                super().close()
            finally:
                self.etcd.close()
