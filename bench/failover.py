"""Failover benchmark: from the signal to the first write accepted through the VIP (root).

    python -m bench failover [--quick] [--planned N] [--crash N] [--auto N] [--only manual|auto]

Two real dr-provision nodes and a client, each in its own network namespace on one bridge
(198.18.0.0/15, VIP 198.18.0.100/24 on eth0). A background writer in the client namespace
POSTs new params through the VIP in 4 loops all along (a fresh connection each, connect timeout
0.05 s); for each switch a fresh prober (2 such loops), started just before the signal, gives
the time of the first write acknowledged after it. (Background requests that reached the old
active just as it dropped the VIP hang until a timeout: their answers are black-holed. They are
counted as stuck_requests and would otherwise hide when the new active starts answering.)

- planned: USR2 to the active, wait until it released the VIP, then USR1 to the passive;
  measured from the USR1 to the first write acknowledged after it.
- crash: kill -9 the active (its namespace keeps the VIP: the guard sees no dr-provision behind
  it and takes over), then USR1 to the passive; measured from the USR1. The killed node is
  restarted with its stale ha-state.json (the guard keeps it passive) and catches up.

auto_crash and auto_fence (automatic failover through etcd, three nodes): bench/autofailover.py.

Also reported: the server's own share, from the new active's "accepting writes (N ms after the
switch began)" log line. The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.hanet import REALTIME, Cluster, Writer
from tests.netns import Lab

ACCEPTING = re.compile(r"active: accepting writes \((\d+) ms after the switch began\)")


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def _server_ms(node, before: int) -> float | None:
    found = ACCEPTING.findall(node.logs())
    return float(found[-1]) if len(found) > before else None


def _summary(values: list[float]) -> dict:
    return {"runs": len(values), "median_s": round(statistics.median(values), 4),
            "max_s": round(max(values), 4), "min_s": round(min(values), 4)}


def run(planned_runs: int, crash_runs: int, workdir: Path) -> dict:
    results: dict[str, list[float]] = {"planned": [], "crash": []}
    server: dict[str, list[float]] = {"planned": [], "crash": []}
    with Lab() as lab:
        cluster = Cluster(lab, workdir, nodes=2)
        writer = None
        stuck = 0
        try:
            nodes = cluster.start()
            writer = Writer(cluster.client_host.ns)
            writer.first_ack_after(time.monotonic())
            active, passive = nodes
            for kind, count in (("planned", planned_runs), ("crash", crash_runs)):
                for i in range(count):
                    old_synced = active.log_count(REALTIME)
                    accepting = len(ACCEPTING.findall(passive.logs()))
                    if kind == "planned":
                        active.signal(signal.SIGUSR2)
                        _wait(lambda: not active.has_vip(), 15, "the active to drop the VIP")
                        time.sleep(0.2)
                    else:
                        active.kill()
                    # A fresh prober: the background writer's requests that reached the old
                    # active as it dropped the VIP hang until a timeout (see stuck_requests).
                    probe = Writer(cluster.client_host.ns, loops=2, prefix=f"probe{kind}{i}")
                    try:
                        t0 = time.monotonic()
                        passive.signal(signal.SIGUSR1)
                        took = probe.first_ack_after(t0) - t0
                    finally:
                        probe.stop()
                    results[kind].append(took)
                    ms = _server_ms(passive, accepting)
                    if ms is not None:
                        server[kind].append(ms / 1000)
                    print(f"{kind} {i + 1}/{count}: first write through the VIP after "
                          f"{took * 1000:.0f} ms (server: {ms} ms)", flush=True)
                    old = active
                    if kind == "crash":
                        old.start(wait=True)  # stale ha-state.json: the guard keeps it passive
                    _wait(lambda: old.log_count(REALTIME) > old_synced and
                          old.info().get("ha_status") == "In-Sync", 60,
                          "the old active to follow the new one")
                    active, passive = passive, old
        finally:
            if writer is not None:
                writer.stop()
            cluster.close()
        stuck = sum(1 for sent, failed, name in writer.errors if failed - sent > 0.3 and
                    name not in ("ConnectTimeout", "ConnectError"))
    out = {kind: _summary(v) for kind, v in results.items() if v}
    out["stuck_requests"] = stuck  # sent to the old active as it dropped the VIP; hung
    for kind, v in server.items():
        if v and kind in out:
            out[kind]["server_median_s"] = round(statistics.median(v), 4)
    out["target_planned_median_s"] = 0.25
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench failover")
    ap.add_argument("--quick", action="store_true", help="3 planned, 2 crash, 3 auto_crash and 3 auto_fence runs")
    ap.add_argument("--planned", type=int, default=None)
    ap.add_argument("--crash", type=int, default=None)
    ap.add_argument("--auto", type=int, default=None,
                    help="rounds of auto_crash and of auto_fence (3 with --quick, else 7)")
    ap.add_argument("--only", choices=("manual", "auto"), default=None,
                    help="only the manual (planned, crash) or only the automatic measurements")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench failover needs root (network namespaces)", file=sys.stderr)
        return 2
    planned = args.planned if args.planned is not None else (3 if args.quick else 10)
    crash = args.crash if args.crash is not None else (2 if args.quick else 5)
    auto = args.auto if args.auto is not None else (3 if args.quick else 7)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="drp-bench-failover-") as tmp:
        for sub in ("manual", "auto"):
            (Path(tmp) / sub).mkdir()
        if args.only != "auto":
            out.update(run(planned, crash, Path(tmp) / "manual"))
        if args.only != "manual" and auto > 0:
            from bench.autofailover import run as run_auto
            out.update(run_auto(auto, Path(tmp) / "auto"))
    print(json.dumps(out))
    return 0
