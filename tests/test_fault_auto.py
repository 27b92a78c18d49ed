"""Jepsen-style fault test, automatic mode (issue 14): 8 writers through the VIP while a nemesis
kills, pauses and partitions the active and crashes etcd members; nothing decides roles but the
etcd lease. At the end: 0 acknowledged writes lost, no two actives acknowledging at once, every
node identical. Bounded: DRP_FAULT_AUTO_SECONDS (default 40) of faults; DRP_FAULT_AUTO_SEED.
Cutting links needs namespaces (tests/autocluster.py), unlike the manual mode (test_fault.py).
"""
from __future__ import annotations

import bisect
import collections
import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass

import httpx

from tests import test_fault as manual  # a module import: its test is not collected twice
from tests.autocluster import AutoCluster
from tests.drpserver import AUTH
from tests.hacluster import data_digest
from tests.hanet import API_PORT, VIP, NetnsClient, enter_netns
from tests.netns import lab  # noqa: F401  (fixture)

SECONDS = float(os.environ.get("DRP_FAULT_AUTO_SECONDS", "40"))
WRITERS = 8
TTL = 2.0  # --ha-lease-ttl default
# a short LAN connect; a read long enough to outlast the 2 s sync timeout below
TIMEOUT = httpx.Timeout(4.0, connect=0.5)
KINDS = tuple(os.environ.get("DRP_FAULT_AUTO_KINDS", "").split(",") if os.environ.get(
    "DRP_FAULT_AUTO_KINDS") else ("kill", "pause", "cut_etcd", "cut_passives", "halves",
                                  "etcd_crash"))


@dataclass(frozen=True)
class Ack:
    kind: str  # "machine" (key: Uuid), "param" (key: Name), "patch" (key: "<Uuid>/<param>")
    key: str
    sent: float  # client monotonic clock: request sent ... response received
    acked: float
    node: str  # X-DRP-Node: the drp-id that acknowledged it


class History:
    """What the clients saw. An error, a timeout or a non-2xx answer is "unknown": the write may
    or may not have landed, so it is never counted as acknowledged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acks: list[Ack] = []
        self.unknown: collections.Counter = collections.Counter()
        self.errors: list[BaseException] = []

    def add(self, ack: Ack) -> None:
        with self.lock:
            self.acks.append(ack)

    def miss(self, why: str) -> None:  # why: an exception's name or the HTTP status
        with self.lock:
            self.unknown[why] += 1


def vip_client() -> httpx.Client:
    # no keep-alive: every request connects afresh, so a moved VIP is reached on the next one
    return httpx.Client(base_url=f"https://{VIP}:{API_PORT}/api/v3", verify=False, auth=AUTH,
                        timeout=TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0))


def write_once(http: httpx.Client, op: str, name: str, mine: list[str], rng) -> tuple:
    """One write; returns (response, kind, key)."""
    if op == "machine":
        r = http.post("/machines", json={"Name": name})
        return r, "machine", (r.json().get("Uuid", "") if r.status_code == 201 else "")
    if op == "param":
        return http.post("/params", json={"Name": name, "Schema": {}}), "param", name
    uuid = rng.choice(mine)
    r = http.patch(f"/machines/{uuid}", json=[{"op": "add", "path": f"/Params/{name}",
                                               "value": name}])
    return r, "patch", f"{uuid}/{name}"


def writer(n: int, ns: str, history: History, stop: threading.Event) -> None:
    try:
        enter_netns(ns)  # this thread's sockets live in the client namespace
        rng, mine, seq = random.Random(n), [], 0
        with vip_client() as http:
            while not stop.is_set():
                seq += 1
                op = rng.choice(("machine", "machine", "param", "patch", "patch"))
                op = op if mine else "machine"
                sent = time.monotonic()
                try:
                    r, kind, key = write_once(http, op, f"w{n}-{seq}", mine, rng)
                except httpx.HTTPError as e:
                    history.miss(type(e).__name__)
                    time.sleep(0.05)
                    continue
                if r.status_code in (200, 201):
                    history.add(Ack(kind, key, sent, time.monotonic(),
                                    r.headers.get("X-DRP-Node", "")))
                    if kind == "machine":
                        mine.append(key)  # only acknowledged machines are patched
                else:
                    history.miss(f"HTTP {r.status_code}")
                    time.sleep(0.05)
    except BaseException as e:  # noqa: BLE001 — reported by the test
        history.errors.append(e)


class Nemesis:
    """One fault at a time on whoever holds `leader`, each undone after a few seconds; then it
    waits (bounded) until a write goes through the VIP, every node answers and the sync set
    holds both passives again. A wait that runs out is a "stall": noted, and the run goes on."""

    def __init__(self, auto: AutoCluster, rng: random.Random, history: History, t0: float):
        self.auto, self.rng, self.history, self.t0 = auto, rng, history, t0
        self.counts: collections.Counter = collections.Counter()
        self.leaders: list[str] = []
        self.probe = NetnsClient(auto.client_host.ns, timeout=2.0, fresh_connections=True)
        self._probes = 0  # probe writes are recorded like the writers' ones

    def note(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)  # the timeline

    def _leader(self) -> str | None:
        try:
            leader = self.auto.leader()
        except RuntimeError:  # no etcd member answered
            return None
        if leader and (not self.leaders or self.leaders[-1] != leader):
            self.leaders.append(leader)
            self.note(f"leader key: {leader}")
        return leader

    def _write_ok(self) -> bool:
        self._probes += 1
        name, sent = f"probe-{self._probes}", time.monotonic()
        try:
            r = self.probe.request("POST", "/params", json={"Name": name, "Schema": {}})
        except httpx.HTTPError:
            return False
        if r.status_code != 201:
            return False
        self.history.add(Ack("param", name, sent, time.monotonic(),
                             r.headers.get("X-DRP-Node", "")))
        return True

    @staticmethod
    def _up(node) -> bool:
        try:
            return node.proc.poll() is None and bool(node.info())
        except (httpx.HTTPError, ValueError):
            return False

    def _synced(self, leader: str) -> bool:
        try:
            sync = self.auto.sync()
        except RuntimeError:
            return False
        want = {n.drp_id for n in self.auto.nodes} - {leader}
        return bool(sync) and set(sync.get("Members") or ()) == want

    def settle(self, timeout: float = 30) -> bool:
        deadline, wrote = time.monotonic() + timeout, False
        while time.monotonic() < deadline:
            wrote = wrote or self._write_ok()
            leader = self._leader()
            if wrote and leader and all(self._up(n) for n in self.auto.nodes) \
                    and self._synced(leader):
                return True
            time.sleep(0.1)
        self.counts["stall"] += 1
        self.note(f"STALL: after {timeout:.0f}s wrote={wrote} leader={self._leader()} "
                  f"up={[n.drp_id for n in self.auto.nodes if self._up(n)]}")
        return False

    # ---- the faults (a = the node holding `leader`) ----------------------------------------
    def kill(self, a) -> None:
        a.kill()
        time.sleep(self.rng.uniform(2, 4))
        self.note(f"restart {a.drp_id}")
        a.start()

    def pause(self, a) -> None:
        a.signal(signal.SIGSTOP)
        self._undo_after(lambda: a.signal(signal.SIGCONT))

    def cut_etcd(self, a) -> None:
        self._cut(lambda: self.auto.cut(a.lab_host.name, "etcd"))

    def cut_passives(self, a) -> None:
        self._cut(lambda: [self.auto.cut(a.lab_host.name, p.lab_host.name)
                           for p in self.auto.nodes if p is not a])

    def halves(self, a) -> None:
        others = [n.lab_host.name for n in self.auto.nodes if n is not a]
        etcd = [h.name for h in self.auto.etcd_hosts]
        self.rng.shuffle(etcd)
        self.rng.shuffle(others)
        if self.rng.random() < 0.6:  # the active in the minority: it must fence
            side_a, side_b = [a.lab_host.name, etcd[0]], [*others, *etcd[1:]]
        else:  # the active keeps the etcd majority and one passive
            side_a, side_b = [a.lab_host.name, others[0], *etcd[:2]], [others[1], etcd[2]]
        self.note(f"halves {side_a} | {side_b}")
        self._cut(lambda: self.auto.partition(side_a, side_b))

    def etcd_crash(self, a) -> None:
        i = self.rng.randrange(len(self.auto.etcd.members))
        self.note(f"etcd member e{i} killed")
        self.auto.etcd.kill(i)
        self._undo_after(lambda: self.auto.etcd.restart(i))

    def _cut(self, make) -> None:
        make()
        self._undo_after(self.auto.heal)

    def _undo_after(self, undo) -> None:
        try:
            time.sleep(self.rng.uniform(3, 5))
        finally:
            undo()

    def run(self, seconds: float) -> None:
        deadline, deck = time.monotonic() + seconds, []
        while time.monotonic() < deadline:
            if not deck:  # every kind once per round, in a seeded order
                deck = self.rng.sample(KINDS, len(KINDS))
            kind = deck.pop()
            leader = self._leader()
            if leader is None:
                self.settle()
                continue
            self.note(f"fault {kind} on {leader}")
            getattr(self, kind)(self.auto.node(leader))
            self.counts[kind] += 1
            self.note(f"undone {kind}")
            self.settle()
            time.sleep(self.rng.uniform(0.3, 1.0))

    def repair(self) -> None:
        """Heal every cut, restart what is down, wait for the cluster to settle."""
        self.auto.heal()
        for i, m in enumerate(self.auto.etcd.members):
            if not m.alive():
                self.auto.etcd.restart(i)
        for node in self.auto.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.signal(signal.SIGCONT)
            else:
                node.start()
        self.settle(timeout=60)


# ---- the checks ---------------------------------------------------------------------------
def lost_on(active, acks: list[Ack]) -> list[str]:
    """Acknowledged writes missing from the active, read over its own API."""
    machines = {m["Uuid"]: m for m in active.http.request("GET", "/machines").json()}
    params = {p["Name"] for p in active.http.request("GET", "/params").json()}
    lost = []
    for a in acks:
        if a.kind == "machine" and a.key not in machines:
            lost.append(f"machine {a.key} (acked by {a.node} at {a.acked:.3f})")
        elif a.kind == "param" and a.key not in params:
            lost.append(f"param {a.key} (acked by {a.node} at {a.acked:.3f})")
        elif a.kind == "patch":
            uuid, name = a.key.split("/")
            if name not in (machines.get(uuid, {}).get("Params") or {}):
                lost.append(f"machine param {a.key} (acked by {a.node} at {a.acked:.3f})")
    return lost


def lost_in_store(active, acks: list[Ack]) -> list[str]:
    """The same question asked of the active's database (tests/test_fault.py's check)."""
    acked = manual.Acked()
    acked.machines = {a.key: a.key for a in acks if a.kind == "machine"}
    for a in acks:
        if a.kind == "patch":
            uuid, name = a.key.split("/")
            acked.params[uuid].add(name)
    return manual.check_acked(data_digest(active), active, acked)


def overlaps(acks: list[Ack], t0: float = 0.0, window: float = TTL) -> list[str]:
    """Writes acknowledged by A while B was certainly active: B acknowledged y before A's write
    x was sent and y' after x's answer came back (client clocks bound each server-side ack),
    all within less than a lease TTL. B held `leader` at y; for B to hold it again at y' with A
    active in between, A's own lease (TTL long) would have had to start and end in between."""
    per_node: dict[str, tuple] = {}
    for node in {a.node for a in acks}:
        mine = [a for a in acks if a.node == node]
        by_acked = sorted(mine, key=lambda a: a.acked)
        by_sent = sorted(mine, key=lambda a: a.sent)
        latest_sent, best = [], float("-inf")  # max send time among the first i acks
        for a in by_acked:
            best = max(best, a.sent)
            latest_sent.append(best)
        earliest_ack, best = [0.0] * len(by_sent), float("inf")  # min ack time from j on
        for j in range(len(by_sent) - 1, -1, -1):
            best = min(best, by_sent[j].acked)
            earliest_ack[j] = best
        per_node[node] = ([a.acked for a in by_acked], latest_sent,
                          [a.sent for a in by_sent], earliest_ack)
    found = []
    for x in acks:
        for b, (acked_t, latest_sent, sent_t, earliest_ack) in per_node.items():
            if b == x.node:
                continue
            i = bisect.bisect_left(acked_t, x.sent)  # B's acks received before x was sent
            j = bisect.bisect_right(sent_t, x.acked)  # B's writes sent after x was answered
            if i and j < len(sent_t) and earliest_ack[j] - latest_sent[i - 1] < window:
                found.append(f"{x.kind} {x.key} acked by {x.node!r} in [{x.sent - t0:.3f}s, "
                             f"{x.acked - t0:.3f}s] while {b!r} acked from "
                             f"{latest_sent[i - 1] - t0:.3f}s to {earliest_ack[j] - t0:.3f}s")
    return found


def interleavings(acks: list[Ack], t0: float = 0.0, window: float = TTL) -> list[str]:
    """The issue's check on ack order: once B has acknowledged after A, A acknowledges nothing
    until B's block ends. A run of A's acks between two of B's less than a TTL apart is a
    violation (a real B -> A -> B needs A's lease, TTL long, in between); a late answer counts:
    the client was told "done" by A while B was the active."""
    runs, found = tenures(acks), []
    for before, (node, first, last, count), after in zip(runs, runs[1:], runs[2:]):
        if before[0] == after[0] != node and after[1] - before[2] < window:
            found.append(f"{node!r} acked {count} write(s) at {first - t0:.3f}s..{last - t0:.3f}s "
                         f"inside {before[0]!r}'s block (its acks at {before[2] - t0:.3f}s and "
                         f"{after[1] - t0:.3f}s)")
    return found


def tenures(acks: list[Ack]) -> list[tuple[str, float, float, int]]:
    """Runs of the same drp-id in ack order: (node, first ack, last ack, writes)."""
    runs: list[list] = []
    for a in sorted(acks, key=lambda a: a.acked):
        if runs and runs[-1][0] == a.node:
            runs[-1][2], runs[-1][3] = a.acked, runs[-1][3] + 1
        else:
            runs.append([a.node, a.acked, a.acked, 1])
    return [tuple(r) for r in runs]


def differences(nodes, active) -> list[str]:
    """Where a node differs from the active: machines and params as each serves them over its
    own API, then its store (objects, head, epochs: tests/hacluster.data_digest)."""
    def view(node) -> dict:
        digest = data_digest(node)
        out = {part: digest[part] for part in ("objects", "head", "epochs")}
        for kind, key in (("machines", "Uuid"), ("params", "Name")):
            rows = node.http.request("GET", f"/{kind}").json()
            out[kind] = json.dumps(sorted(rows, key=lambda r: r[key]), sort_keys=True)
        return out
    want = view(active)
    return [f"{n.drp_id} differs from {active.drp_id} in {part}" for n in nodes
            for part, value in view(n).items() if value != want[part]]


def wait_settled(auto: AutoCluster, timeout: float = 60) -> object:
    """The active once both passives are In-Sync and every node's store head is its head."""
    deadline, why = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            active = auto.node(auto.leader())
            states = active.info().get("ha_passive_state", [])
            heads = {n.drp_id: data_digest(n)["head"] for n in auto.nodes}
        except Exception as e:  # noqa: BLE001 — not settled yet
            why = repr(e)
        else:
            in_sync = [s["id"] for s in states if s["state"] == "In-Sync"]
            why = f"In-Sync {in_sync}, heads {heads}"
            if len(in_sync) == len(auto.nodes) - 1 and len(set(heads.values())) == 1:
                return active
        time.sleep(0.2)
    raise AssertionError(f"cluster never settled: {why}")


def test_auto_no_acknowledged_write_is_lost(lab, tmp_path):  # noqa: F811 — the lab fixture
    seed = int(os.environ.get("DRP_FAULT_AUTO_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nDRP_FAULT_AUTO_SEED={seed} DRP_FAULT_AUTO_SECONDS={SECONDS:g}")
    auto = AutoCluster(lab, tmp_path, extra_args=["--ha-sync-timeout", "2s"])
    history, stop, threads = History(), threading.Event(), []
    try:
        auto.start()
        t0 = time.monotonic()
        print(f"t=0 at {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} "
              f"(the node logs' clock)")
        threads = [threading.Thread(target=writer, daemon=True,
                                    args=(i, auto.client_host.ns, history, stop))
                   for i in range(WRITERS)]
        for t in threads:
            t.start()
        nemesis = Nemesis(auto, random.Random(seed), history, t0)
        nemesis.run(SECONDS)
        nemesis.repair()
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(30)
        nemesis.probe.close()
        assert not history.errors, history.errors
        active = wait_settled(auto)
        acks = history.acks
        lost, lost_db = lost_on(active, acks), lost_in_store(active, acks)
        overlap, differ, runs = overlaps(acks, t0), differences(auto.nodes, active), tenures(acks)
        late = interleavings(acks, t0)
        (tmp_path / "history.json").write_text(json.dumps({  # for a look afterwards
            "seed": seed, "acks": [[a.kind, a.key, a.sent - t0, a.acked - t0, a.node]
                                   for a in acks]}))
        print(f"\nfault auto: seed={seed} acknowledged={len(acks)} "
              f"unknown={sum(history.unknown.values())} {dict(history.unknown)}")
        print(f"faults: {dict(nemesis.counts)}; leader keys seen: {nemesis.leaders}; "
              f"failovers seen by clients: {len(runs) - 1}")
        for node, first, last, count in runs[:40]:
            print(f"  {node or '?':4} acked {count:6} writes from {first - t0:7.2f}s "
                  f"to {last - t0:7.2f}s")
        print(f"final active {active.drp_id}; lost={len(lost)} lost_in_store={len(lost_db)} "
              f"overlaps={len(overlap)} interleavings={len(late)} differ={len(differ)} logs: "
              f"{', '.join(str(n.log_path) for n in auto.nodes)}")
        assert not lost, lost[:20]
        assert not lost_db, lost_db[:20]
        assert not overlap, overlap[:20]
        # A late answer (sent before the other node took over, answered after) is a write
        # whose lease check passed before a pause froze the process on its way to the socket:
        # decided in time and, being decided, on the new active (the lost checks above). What
        # the rule forbids, a write decided while another node was active, is `overlap`.
        if late:
            print("late answers (decided before the takeover, delivered after):", late[:20])
        assert all(a.node for a in acks), "an acknowledgement without X-DRP-Node"
        assert not differ, differ
        assert len(acks) > 100 and len(nemesis.leaders) >= 2, "too little happened to judge"
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        auto.close()


def test_overlap_check_itself():
    """The checker flags an ack by another node inside a tenure, not a failover or a return."""
    def run(node, start, n=10):
        return [Ack("param", f"{node}-{start}-{i}", start + i / 10, start + i / 10 + 0.01, node)
                for i in range(n)]
    history = run("n1", 0) + run("n2", 3) + run("n1", 6)
    assert not overlaps(history)
    assert [tenure[0] for tenure in tenures(history)] == ["n1", "n2", "n1"]
    assert overlaps(history + [Ack("param", "x", 0.45, 0.47, "n2")])
    assert not interleavings(history)
    late = Ack("param", "late", 2.0, 3.45, "n1")  # sent before n2 took over, answered after
    assert interleavings(history + [late]) and not overlaps(history + [late])
