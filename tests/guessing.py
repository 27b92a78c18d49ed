"""A password guesser, run as its own process so its CPU and GIL are not the measuring client's:

    python -m tests.guessing URL SECONDS [--concurrency N] [--users a,b,...|N] [--sources N]

N tasks send GET /api/v3/info with HTTP Basic and a new wrong password each time, over
keep-alive connections (from --sources loopback addresses), ignoring Retry-After (as an
attacker would), for SECONDS or until SIGTERM. Prints "started" once the first answer is in,
then at the end one JSON line: answers by status, how many 429s came with a Retry-After, the
Retry-After values seen, sample messages.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter

import httpx
import trio


async def guess(url: str, seconds: float, concurrency: int, users: list[str],
                sources: int = 1) -> dict:
    statuses: Counter = Counter()
    retry_after: Counter = Counter()
    samples: dict[str, set[str]] = {}  # status -> the messages seen
    started = trio.Event()
    per = max(1, concurrency // sources)
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    # sources > 1: connections from 127.0.0.1, 127.0.0.2, ... (all loopback on Linux), as a
    # guesser with many addresses would come
    clients = [httpx.AsyncClient(
        base_url=url, verify=False, timeout=60, limits=limits,
        transport=httpx.AsyncHTTPTransport(verify=False, limits=limits,
                                           local_address=f"127.0.0.{1 + i}") if sources > 1
        else None) for i in range(sources)]

    async def one(worker: int) -> None:
        client = clients[worker % sources]
        n = 0
        while True:
            n += 1
            user = users[(worker + n) % len(users)]
            try:
                resp = await client.get("/api/v3/info", auth=(user, f"guess-{worker}-{n}"))
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1
                await trio.sleep(0.01)
                continue
            statuses[str(resp.status_code)] += 1
            if resp.status_code >= 400:
                samples.setdefault(str(resp.status_code), set()).add(
                    resp.json()["Messages"][0][:200])
            if resp.status_code == 429 and resp.headers.get("Retry-After", "").isdigit():
                retry_after[resp.headers["Retry-After"]] += 1
            started.set()

    async def announce() -> None:
        await started.wait()
        print("started", flush=True)

    async def stop_on_sigterm(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                scope.cancel()

    try:
        with trio.move_on_after(seconds) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(announce)
                nursery.start_soon(stop_on_sigterm, scope)
                for worker in range(concurrency):
                    nursery.start_soon(one, worker)
    finally:
        for client in clients:
            await client.aclose()
    return {"statuses": dict(statuses), "retry_after_429s": sum(retry_after.values()),
            "retry_after_values": sorted(retry_after, key=int),
            "messages": {status: sorted(m)[:5] for status, m in samples.items()}}


def token_client(url: str, token: str, rounds: int, profile: str = "guess-watch",
                 seconds: float = 0.0) -> dict:
    """A client holding a valid token: `rounds` x (GET a profile, PUT it back changed), one at a
    time, and more until `seconds` have passed. Returns each kind's latencies in seconds."""
    got: dict[str, list[float]] = {"get": [], "write": []}
    with httpx.Client(base_url=url + "/api/v3", verify=False, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        if c.get(f"/profiles/{profile}").status_code == 404:
            assert c.post("/profiles", json={"Name": profile}).status_code == 201
        deadline = time.perf_counter() + seconds
        i = 0
        while i < rounds or time.perf_counter() < deadline:
            i += 1
            t = time.perf_counter()
            r = c.get(f"/profiles/{profile}")
            got["get"].append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            t = time.perf_counter()
            r = c.put(f"/profiles/{profile}", json={**r.json(), "Description": f"round {i}"})
            got["write"].append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    return got


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.guessing")
    p.add_argument("url")
    p.add_argument("seconds", type=float)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--users", default="rocketskates",
                   help="names to guess for, comma-separated; a number N: N made-up names")
    p.add_argument("--sources", type=int, default=1, help="source addresses 127.0.0.1...")
    args = p.parse_args(argv)
    users = ([f"user-{i}" for i in range(int(args.users))] if args.users.isdigit()
             else args.users.split(","))
    result = trio.run(guess, args.url, args.seconds, args.concurrency, users, args.sources)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
