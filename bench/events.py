"""Event fan-out: machine creates per second with 0 and with N /api/v3/ws subscribers.

    python -m bench events [--quick] [--subscribers 2000] [--readers 10] [--creates 200]

A standalone drp; creates are POSTed one after another from another process (one keep-alive
connection), first with no subscribers, then with --subscribers connected: --readers of them
registered on machines.*.* and reading every event, the rest on patterns no create matches
(profiles.*.*, machines.delete.*, machines.create.<other key>, *.update.*). Reported per side:
writes/s (best of --rounds) and the server's CPU time per write. The last line of output is one
JSON object.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
from pathlib import Path

import trio

from bench._load import cpu_seconds
from tests.drpserver import DrpServer
from tests.eventsubs import Subscriber, connect_all, create_machines, token

IDLE_PATTERNS = ("profiles.*.*", "machines.delete.*", "machines.create.no-such-key",
                 "*.update.*")


async def side(server: DrpServer, bearer: str, label: str, creates: int, rounds: int) -> dict:
    best, cpu = None, 0.0
    for i in range(rounds):
        cpu0 = cpu_seconds(server.proc.pid)
        seconds, _ = await create_machines(server, bearer, f"{label}{i}", creates)
        cpu += cpu_seconds(server.proc.pid) - cpu0
        best = seconds if best is None else min(best, seconds)
    return {"writes_per_s": round(creates / best, 1),
            "server_cpu_ms_per_write": round(cpu * 1000 / (creates * rounds), 2)}


async def measure(server: DrpServer, subscribers: int, readers: int, creates: int,
                  rounds: int) -> dict:
    bearer = await trio.to_thread.run_sync(token, server)
    await create_machines(server, bearer, "warm", 50)
    out = {"none": await side(server, bearer, "alone", creates, rounds)}
    subs = [Subscriber("machines.*.*", reads=True) for _ in range(readers)]
    subs += [Subscriber(IDLE_PATTERNS[i % len(IDLE_PATTERNS)], reads=False)
             for i in range(subscribers - readers)]
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await connect_all(nursery, server, bearer, subs)
        out["connect_s"] = round(trio.current_time() - t0, 1)
        out["with"] = await side(server, bearer, "loaded", creates, rounds)
        want = creates * rounds
        with trio.move_on_after(60):
            while not all(len(s.events) >= want for s in subs if s.reads):
                await trio.sleep(0.1)
        out["readers_got_every_event"] = all(len(s.events) == want for s in subs if s.reads)
        nursery.cancel_scope.cancel()
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench events")
    ap.add_argument("--quick", action="store_true", help="100 creates, 1 round")
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--readers", type=int, default=10)
    ap.add_argument("--creates", type=int, default=None, help="per round (default 200)")
    ap.add_argument("--rounds", type=int, default=None, help="best of (default 3)")
    args = ap.parse_args(argv)
    creates = args.creates or (100 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * args.subscribers + 500)),
                                                hard))
    workdir = Path(tempfile.mkdtemp(prefix="drp-bench-events-"))
    server = DrpServer(workdir / "drp", ["--log-level", "warn"]).start()
    try:
        r = trio.run(measure, server, args.subscribers, args.readers, creates, rounds)
    finally:
        server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = r["none"]["writes_per_s"] / max(r["with"]["writes_per_s"], 1e-9)
    print(f"writes/s: {r['none']['writes_per_s']} with no subscribers, "
          f"{r['with']['writes_per_s']} with {args.subscribers} ({args.readers} reading); "
          f"server cpu/write {r['none']['server_cpu_ms_per_write']} -> "
          f"{r['with']['server_cpu_ms_per_write']} ms", flush=True)
    print(json.dumps({"bench": "events", "subscribers": args.subscribers,
                      "readers": args.readers, "creates": creates, "rounds": rounds, **r,
                      "slowdown": round(ratio, 2), "target_slowdown": 2.0}))
    return 0
