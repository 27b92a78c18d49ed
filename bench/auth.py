"""Auth benchmark: a client holding a valid token, alone and beside a password-guessing loop.

    python -m bench auth [--quick] [--seconds S] [--concurrency N] [--users a,b|N] [--sources N]
                         [-- dr-provision flags]

One standalone drp. The token client does rounds of (GET a profile, PUT it back changed), one
request at a time, for SECONDS per phase: first alone, then while tests/guessing.py (its own
process) sends wrong Basic passwords from N concurrent keep-alive connections, ignoring
Retry-After, then alone again. `-- --auth-user-failures 100000 --auth-source-failures 100000`
takes the backoff out of the way: every guess is hashed (a guesser with many addresses).
Printed side by side: the token client's p50/p99 for GETs and writes in each phase, and what
the guesser got (401 = a password was hashed, 429 = refused by the backoff). The last line
of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.drpserver import REPO, DrpServer, clean_environ
from tests.guessing import token_client


def _ms(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 2)


def summary(latencies: dict[str, list[float]]) -> dict:
    return {f"{kind}_{name}_ms": _ms(values, q) for kind, values in latencies.items()
            for name, q in (("p50", 50), ("p99", 99))}


def run(workdir: Path, rounds: int, seconds: float, concurrency: int, users: str,
        sources: int, server_args: list[str]) -> dict:
    server = DrpServer(workdir / "drp", ["--log-level", "warn", *server_args]).start()
    try:
        with server.client() as c:
            token = c.get("/users/rocketskates/token").json()["Token"]
        token_client(server.url, token, 10)  # warm up
        phases = {"alone": token_client(server.url, token, rounds, seconds=seconds)}
        guesser = subprocess.Popen(
            [sys.executable, "-m", "tests.guessing", server.url, "3600", "--concurrency",
             str(concurrency), "--users", users, "--sources", str(sources)],
            cwd=REPO, env=clean_environ(), stdout=subprocess.PIPE, text=True)
        try:
            if guesser.stdout.readline().strip() != "started":
                raise RuntimeError("the guesser did not start")
            phases["guessing"] = token_client(server.url, token, rounds, seconds=seconds)
            guesser.terminate()
            out, _ = guesser.communicate(timeout=60)
        finally:
            guesser.kill()
        phases["alone_after"] = token_client(server.url, token, rounds, seconds=seconds)
        failed_lines = sum("failed login for user" in line for line in server.logs().splitlines())
    finally:
        server.stop()
    guessed = json.loads(out.strip().splitlines()[-1])
    rows = {name: summary(lat) for name, lat in phases.items()}
    print(f"{'token client':14s} {'GET p50':>9s} {'GET p99':>9s} {'PUT p50':>9s} {'PUT p99':>9s}")
    for name, row in rows.items():
        print(f"{name:14s} {row['get_p50_ms']:7.2f}ms {row['get_p99_ms']:7.2f}ms "
              f"{row['write_p50_ms']:7.2f}ms {row['write_p99_ms']:7.2f}ms", flush=True)
    print(f"guesser ({concurrency} connections from {sources} addresses): {guessed['statuses']}; "
          f"failed-login log lines: {failed_lines}", flush=True)
    return {"bench": "auth", "seconds_per_phase": seconds, "concurrency": concurrency,
            "sources": sources, "users": users, "server_args": server_args, **{
        f"{phase}_{k}": v for phase, row in rows.items() for k, v in row.items()},
        "guesser_statuses": guessed["statuses"], "failed_login_log_lines": failed_lines,
        "target": "guessing p50 < 2 x alone p50 + 10 ms"}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench auth")
    ap.add_argument("--quick", action="store_true", help="8 s per phase")
    ap.add_argument("--seconds", type=float, default=None, help="per phase (default 40)")
    ap.add_argument("--rounds", type=int, default=50, help="at least, per phase")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--users", default="rocketskates,alice,bob",
                    help="names guessed, comma-separated, or a number N of made-up names")
    ap.add_argument("--sources", type=int, default=1,
                    help="guess from 127.0.0.1..N (a guesser with many addresses)")
    ap.add_argument("server_args", nargs="*", help="extra dr-provision flags (after --)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (8.0 if args.quick else 40.0)
    workdir = Path(tempfile.mkdtemp(prefix="drp-bench-auth-"))
    try:
        result = run(workdir, args.rounds, seconds, args.concurrency, args.users, args.sources,
                     args.server_args)
    finally:
        if not os.environ.get("DRP_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0
