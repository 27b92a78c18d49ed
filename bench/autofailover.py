"""Automatic failover through etcd (issue 14), measured; run by `python -m bench failover`.

Three etcd members and three dr-provision nodes in network namespaces (tests/autocluster.py),
default lease TTL (2 s). Each round picks the current active and either

- auto_crash: kill -9 of it, until the first write accepted through the VIP, or
- auto_fence: black-holes it from every etcd member (clients and passives still reach it),
  until the first write accepted through the VIP by another node (X-DRP-Node).

Breakdown, from the client host's point of view (wall clock, one machine):
  detection  the fault -> the leader key deleted (an etcd watch from the client host, so the
             moment is seen without polling gaps)
  election   deleted -> the new leader key put
  promotion  put -> the new active's "active: accepting writes" log line (its timestamp)
  vip        that line -> the first write accepted through the VIP
auto_fence also gives fence_s: the cut -> the old active's "fencing:" log line, which must come
before the key is deleted (never two actives). The floor etcd sets is measured against one member
(tests.etcdlab.etcd_floor: the shortest TTL it grants, how late an expired lease's key goes).
"""
from __future__ import annotations

import base64
import json
import re
import statistics
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from tests.autocluster import PREFIX, AutoCluster
from tests.etcdlab import etcd_floor
from tests.hanet import Writer, enter_netns, run_in_thread_ns
from tests.netns import Lab

ACCEPTING = "active: accepting writes"
FENCING = "fencing:"
PROBE_LOOPS = 6  # side by side: a request caught in flight as the VIP moves hangs until timeout
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class LeaderWatch:
    """Every change of the leader key as the client host sees it, as (wall time, value|None),
    from one etcd watch (JSON gateway, a stream of one JSON object per line)."""

    def __init__(self, ns: str, endpoint: str, key: str = PREFIX + "leader"):
        self.events: list[tuple[float, str | None]] = []
        self.error: BaseException | None = None
        self._created = threading.Event()
        self._args = (ns, endpoint, key)
        threading.Thread(target=self._run, daemon=True, name="leader-watch").start()
        if not self._created.wait(10):
            raise RuntimeError(f"etcd watch on {key} not created: {self.error}")

    def _run(self) -> None:
        ns, endpoint, key = self._args
        try:
            enter_netns(ns)
            body = json.dumps({"create_request": {"key": base64.b64encode(key.encode()).decode()}})
            req = urllib.request.Request(endpoint + "/v3/watch", data=body.encode())
            with urllib.request.urlopen(req, timeout=3600) as r:
                for line in r:
                    now = time.time()
                    result = json.loads(line).get("result", {})
                    if result.get("created"):
                        self._created.set()
                    for ev in result.get("events", []):
                        value = (None if ev.get("type") == "DELETE" else
                                 base64.b64decode(ev["kv"].get("value", "")).decode())
                        self.events.append((now, value))
        except BaseException as e:  # noqa: BLE001 — the lab closing ends the stream
            self.error = e
            self._created.set()

    def first(self, after: float, pred, timeout: float = 30) -> float:
        """The wall time of the first event after `after` whose value satisfies pred."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, value in list(self.events):
                if t >= after and pred(value):
                    return t
            time.sleep(0.005)
        raise RuntimeError(f"no such leader-key event within {timeout}s: {self.events[-5:]}")

    def value_after(self, t_wall: float) -> str | None:
        return next(v for t, v in self.events if t >= t_wall and v is not None)


def log_time(node, text: str, before: int, timeout: float = 30) -> float:
    """Wall time of the (before+1)-th log line containing text (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [ln for ln in node.logs().splitlines() if text in ln]
        if len(lines) > before and (m := _STAMP.match(lines[before])):
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        time.sleep(0.02)
    raise RuntimeError(f"{node.drp_id}: no new {text!r} line within {timeout}s")


def first_ack(writer: Writer, t0: float, old: str, timeout: float = 30) -> tuple[float, str]:
    """(monotonic time, drp-id) of the first write sent at/after t0 acknowledged by a node
    other than old."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        later = [(acked, writer.nodes.get(name, "")) for sent, acked, name in writer.acked[-400:]
                 if sent >= t0 and writer.nodes.get(name, "") != old]
        if later:
            return min(later)
        time.sleep(0.005)
    raise RuntimeError(f"no write accepted by a new active through the VIP within {timeout}s")


def _count(node, text: str) -> int:
    return sum(1 for ln in node.logs().splitlines() if text in ln)


def one_round(auto: AutoCluster, watch: LeaderWatch, kind: str, i: int) -> dict:
    old_id = auto.leader()
    old = auto.node(old_id)
    others = [n for n in auto.nodes if n is not old]
    accepting = {n.drp_id: _count(n, ACCEPTING) for n in others}
    fenced = _count(old, FENCING)
    probe = Writer(auto.client_host.ns, loops=PROBE_LOOPS, prefix=f"{kind}{i}")
    try:
        time.sleep(0.3)  # the probe is writing through the VIP before the fault
        offset = time.time() - time.monotonic()
        t0 = time.monotonic()
        if kind == "auto_crash":
            old.kill()
        else:
            auto.cut(old_id, "etcd")
        acked, by = first_ack(probe, t0, old_id)
    finally:
        probe.stop()
    w0 = t0 + offset
    gone = watch.first(w0, lambda v: v is None)
    put = watch.first(gone, lambda v: v is not None)
    new_id = watch.value_after(gone)
    new = auto.node(new_id)
    accept = log_time(new, ACCEPTING, accepting[new_id])
    out = {"total_s": acked - t0, "detection_s": gone - w0, "election_s": put - gone,
           "promotion_s": accept - put, "vip_s": acked + offset - accept,
           # probe requests that hung (sent before the first ack, failed after > 0.3 s)
           "stuck": sum(1 for sent, failed, name in probe.errors
                        if sent < acked and failed - sent > 0.3 and
                        name not in ("ConnectTimeout", "ConnectError"))}
    if kind == "auto_fence":
        out["fence_s"] = log_time(old, FENCING, fenced) - w0
        out["fenced_before_key_gone"] = out["fence_s"] < out["detection_s"]
    if by != new_id:
        raise RuntimeError(f"first write acknowledged by {by}, but {new_id} took the key")
    print(f"{kind} {i + 1}: {old_id} -> {new_id}, first write through the VIP after "
          f"{out['total_s'] * 1000:.0f} ms (" +
          ", ".join(f"{k[:-2]} {v * 1000:.0f}" for k, v in out.items()
                    if k.endswith("_s") and k != "total_s") + f" ms; {out['stuck']} stuck)",
          flush=True)
    # back to three nodes in sync before the next round
    if kind == "auto_crash":
        old.start(wait=True)  # finds the leader key held: stays passive and resyncs
    else:
        auto.heal()
    auto.wait_sync({n.drp_id for n in auto.nodes} - {new_id}, timeout=60)
    return out


def _summary(rounds: list[dict]) -> dict:
    out = {"runs": len(rounds)}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        if isinstance(values[0], bool):
            out[key] = all(values)
        elif key == "stuck":
            out["stuck_requests"] = sum(values)
        elif key == "total_s":
            out.update(median_s=round(statistics.median(values), 4),
                       max_s=round(max(values), 4), min_s=round(min(values), 4))
        else:
            out[key.replace("_s", "_median_s")] = round(statistics.median(values), 4)
    return out


def measure_floor(auto: AutoCluster, runs: int) -> dict:
    """etcd_floor against member e0, from a thread inside the client namespace."""
    box: dict = {}
    t = run_in_thread_ns(auto.client_host.ns,
                         lambda: box.update(etcd_floor(auto.etcd.endpoints[0], runs=runs)))
    t.join(60)
    if t.error is not None:
        raise t.error
    return {**box, "heartbeat_ms": auto.etcd.heartbeat_ms, "election_ms": auto.etcd.election_ms}


def run(rounds: int, workdir: Path, floor_runs: int = 3) -> dict:
    results: dict[str, list[dict]] = {"auto_crash": [], "auto_fence": []}
    with Lab() as lab:
        auto = AutoCluster(lab, workdir)
        try:
            auto.start()
            watch = LeaderWatch(auto.client_host.ns, auto.etcd.endpoints[0])
            floor = measure_floor(auto, floor_runs)
            for kind in results:
                for i in range(rounds):
                    results[kind].append(one_round(auto, watch, kind, i))
        finally:
            auto.close()
    out = {kind: _summary(r) for kind, r in results.items()}
    out["etcd_floor"] = floor
    out["lease_ttl_s"] = 2
    out["target_auto_crash_median_s"] = 3.0
    return out
