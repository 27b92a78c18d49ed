"""Jepsen-style fault test: writers record what was acknowledged while a nemesis switches roles,
crashes the active and restarts passives mid-catch-up; at the end nothing acknowledged is lost
and every node holds identical data. Bounded: DRP_FAULT_SECONDS (default 40) of faults.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import signal
import threading
import time

import httpx

from tests.hacluster import Cluster, data_digest, info, make_token
from tests.vipproxy import VipProxy

FAULT_SECONDS = float(os.environ.get("DRP_FAULT_SECONDS", "40"))
WRITERS = 8


class Acked:
    """Every write some client was told succeeded."""

    def __init__(self):
        self.lock = threading.Lock()
        self.machines: dict[str, str] = {}
        self.params: dict[str, set] = collections.defaultdict(set)
        self.files: dict[str, str] = {}
        self.log_lines: dict[str, list[str]] = collections.defaultdict(list)
        self.ops = self.acked = 0


def writer(n: int, url: str, token: str, acked: Acked, stop: threading.Event) -> None:
    rng = random.Random(n)
    mine: list[str] = []
    job = None
    seq = 0
    with httpx.Client(base_url=url + "/api/v3", verify=False, timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        while not stop.is_set():
            seq += 1
            op = rng.choice(["create", "create", "patch", "patch", "file", "log"])
            if op != "create" and not mine:
                op = "create"
            if op == "log" and job is None:
                op = "job"
            try:
                ok = _one(http, op, n, seq, rng, mine, acked, job)
                if op == "job" and ok:
                    job = ok
            except httpx.HTTPError:
                ok = False
            with acked.lock:
                acked.ops += 1
                acked.acked += bool(ok)
            if not ok:
                time.sleep(0.05)  # no active right now (a switch is under way)


def _one(http, op, n, seq, rng, mine, acked: Acked, job):
    if op == "create":
        name = f"w{n}-m{seq}"
        r = http.post("/machines", json={"Name": name})
        if r.status_code == 201:
            key = r.json()["Uuid"]
            mine.append(key)
            with acked.lock:
                acked.machines[key] = name
            return True
    elif op == "patch":
        key = rng.choice(mine)
        r = http.patch(f"/machines/{key}", json=[{"op": "add", "path": f"/Params/k{seq}",
                                                   "value": seq}])
        if r.status_code == 200:
            with acked.lock:
                acked.params[key].add(f"k{seq}")
            return True
    elif op == "file":
        data = os.urandom(rng.randint(1, 200_000))
        path = f"w{n}/f{seq}.bin"
        r = http.post(f"/files/{path}", content=data)
        if r.status_code in (200, 201):
            with acked.lock:
                acked.files[path] = hashlib.sha256(data).hexdigest()
            return True
    elif op == "job":
        r = http.post("/jobs", json={"Machine": mine[0]})
        if r.status_code == 201:
            return r.json()["Uuid"]
    elif op == "log":
        line = f"w{n} line {seq}\n"
        r = http.put(f"/jobs/{job}/log", content=line.encode())
        if r.status_code in (200, 201, 204):
            with acked.lock:
                acked.log_lines[job].append(line)
            return True
    return False


def _alive(server) -> bool:
    return server.proc is not None and server.proc.poll() is None


def _info(server, token):
    try:
        return info(server, token)
    except (httpx.HTTPError, ValueError):
        return None


def find_active(nodes, token):
    for server in nodes.values():
        if _alive(server) and (i := _info(server, token)) and i.get("ha_is_active") \
                and i.get("ha_status") == "Up":
            return server
    return None


def wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := pred()):
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def electable(active, nodes, token):
    states = (_info(active, token) or {}).get("ha_passive_state", [])
    ids = {s["id"] for s in states if s["state"] == "In-Sync"}
    return [s for name, s in nodes.items() if f"node-{name}" in ids and _alive(s)]


class Nemesis:
    def __init__(self, cluster: Cluster, token: str, rng: random.Random):
        self.cluster, self.nodes, self.token, self.rng = cluster, cluster.nodes, token, rng
        self.counts = collections.Counter()

    def _electable(self):
        """The active and its In-Sync passives, waiting for one to be In-Sync again."""
        def ready():
            active = find_active(self.nodes, self.token)
            cands = electable(active, self.nodes, self.token) if active else []
            return (active, cands) if cands else None
        return wait_for(ready, timeout=90, what="an electable passive")

    def planned_switch(self):
        active, cands = self._electable()
        target = self.rng.choice(cands)
        active.signal(signal.SIGUSR2)
        wait_for(lambda: (i := _info(active, self.token)) and not i["ha_is_active"],
                 what="the old active to turn passive")
        target.signal(signal.SIGUSR1)
        wait_for(lambda: find_active(self.nodes, self.token) is target, what="the new active")
        self.counts["planned"] += 1

    def crash(self):
        active, cands = self._electable()
        target = self.rng.choice(cands)
        active.kill()
        target.signal(signal.SIGUSR1)
        wait_for(lambda: find_active(self.nodes, self.token) is target, what="promotion")
        self.cluster.start(active)  # comes back with a stale ha-state.json: must stay passive
        self.counts["crash"] += 1

    def restart_passive(self):
        active = find_active(self.nodes, self.token)
        passives = [s for s in self.nodes.values() if s is not active and _alive(s)]
        if not passives:
            return
        victim = self.rng.choice(passives)
        victim.kill()
        self.cluster.start(victim)
        time.sleep(self.rng.uniform(0.05, 0.4))  # likely mid catch-up
        victim.kill()
        self.cluster.start(victim)
        self.counts["passive_restart"] += 1

    def run(self, seconds: float):
        deadline = time.monotonic() + seconds
        actions = [self.planned_switch, self.planned_switch, self.crash, self.crash,
                   self.restart_passive]
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(0.3, 1.5))
            action = self.rng.choice(actions)
            started = time.monotonic()
            action()
            print(f"nemesis: {action.__name__} took {time.monotonic() - started:.1f}s")


def test_no_acknowledged_write_is_lost(tmp_path):
    (tmp_path / "seed-dir").mkdir()
    seed_root, token = make_token(tmp_path / "seed-dir")
    proxy = VipProxy(tmp_path)
    cluster = Cluster(tmp_path, token, seed_root)
    acked, stop = Acked(), threading.Event()
    threads = []
    try:
        def script(server):
            return proxy.script_for(tmp_path, server.api_port)
        extra = ["--ha-sync-timeout", "3s"]
        cluster.node("a", passive=False, join=proxy.url + "/", script=script, extra=extra)
        for name in ("b", "c"):
            cluster.node(name, passive=True, join=proxy.url + "/", script=script, extra=extra)
        active = cluster.nodes["a"]
        wait_for(lambda: len(electable(active, cluster.nodes, token)) == 2, what="In-Sync")
        threads = [threading.Thread(target=writer, args=(i, proxy.url, token, acked, stop))
                   for i in range(WRITERS)]
        for t in threads:
            t.start()
        nemesis = Nemesis(cluster, token, random.Random(int(os.environ.get("DRP_FAULT_SEED",
                                                                            "7"))))
        nemesis.run(FAULT_SECONDS)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(30)
        active = wait_for(lambda: find_active(cluster.nodes, token), what="an active")
        wait_for(lambda: len(electable(active, cluster.nodes, token)) == 2, timeout=60,
                 what="all passives In-Sync at the end")
        digests = {}
        for name, server in cluster.nodes.items():
            digests[name] = wait_for(lambda s=server: _settled(s, active), timeout=30,
                                     what=f"node {name} to reach the active's head")
        lost = check_acked(digests[_name(cluster, active)], active, acked)
        failovers = nemesis.counts["planned"] + nemesis.counts["crash"]
        print(f"\nfault test: operations={acked.ops} acknowledged={acked.acked} "
              f"failovers={failovers} (planned={nemesis.counts['planned']} "
              f"crashes={nemesis.counts['crash']}) "
              f"passive_restarts={nemesis.counts['passive_restart']} lost={len(lost)}")
        assert not lost, lost[:20]
        first = digests["a"]
        for name, digest in digests.items():
            for part in ("objects", "blobs", "files", "head", "epochs"):
                assert digest[part] == first[part], f"node {name} differs in {part}"
        assert failovers >= 2 and acked.acked > 100
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        cluster.stop_all()
        proxy.close()


def _name(cluster, server) -> str:
    return next(n for n, s in cluster.nodes.items() if s is server)


def _settled(server, active):
    digest = data_digest(server)
    return digest if digest["head"] == data_digest(active)["head"] else None


def check_acked(digest: dict, active, acked: Acked) -> list[str]:
    objects = {(k, key): json.loads(body) for k, key, body in digest["objects"]}
    lost = []
    for key, name in acked.machines.items():
        if ("machines", key) not in objects:
            lost.append(f"machine {name}")
    for key, params in acked.params.items():
        have = set(objects.get(("machines", key), {}).get("Params", {}))
        lost += [f"param {p} of {key}" for p in params - have]
    for path, sha in acked.files.items():
        if digest["files"].get(f"tftpboot/files/{path}") != sha:
            lost.append(f"file {path}")
    for job, lines in acked.log_lines.items():
        text = (active.base_root / "job-logs" / job).read_text()
        pos = 0
        for line in lines:  # acknowledged appends are all there, in order
            found = text.find(line, pos)
            if found < 0:
                lost.append(f"log line {line.strip()} of job {job}")
            else:
                pos = found + len(line)
    return lost
