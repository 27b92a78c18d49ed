"""Create latency against the number of stored machines, and what a filtered list costs.

    python -m bench create [--quick] [--sizes 100,10000] [--creates N] [--min-kb K] [--max-kb K]

For each size a fresh store is seeded with that many machines of realistic size (random Params
between --min-kb and --max-kb; one executemany with the columns the store's own _put_object
writes), then machine creates and profile creates are timed one after another through
Store.write (the real writer: group commit, fsync) with the API's create mutation: get, the
uniqueness check, record. Not through HTTP: the API adds the same ~ms to every create and the
point is what grows with the store. "before" runs the uniqueness check as it was (json_extract
over every machine's body, copied here), "after" the API's own check (objects.name, indexed).
Also timed: Store.list filtered on Name (indexed column) and on Stage (read out of each body).
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import trio

from drp import models
from drp.api.errors import ApiError
from drp.api.objects import _check_unique_name
from drp.store import schema
from drp.store.store import Store
from tests.storeutil import promote

MACHINES = models.KINDS["machines"]
PROFILES = models.KINDS["profiles"]


def check_before(tx, kind: models.Kind, key: str, obj: dict) -> None:
    """The uniqueness check before objects.name (drp/api/objects.py at 7bbd908)."""
    if kind.name != "machines":
        return
    clash = tx.conn.execute("SELECT key FROM objects WHERE kind='machines' AND key != ? AND "
                            "json_extract(body, '$.Name') = ?", (key, obj["Name"])).fetchall()
    if clash:
        raise ApiError(409, f"machine name {obj['Name']} is already used by {clash[0][0]}",
                       model=kind.name, key=key)


def machine(name: str, size: int, rng: random.Random) -> dict:
    # ~230 bytes of JSON per param: a 200-character value that does not compress
    params = {f"bench/param-{i}": rng.randbytes(100).hex() for i in range(max(1, size // 230))}
    return models.normalize(MACHINES, {"Name": name, "Address": "10.0.0.7", "Stage": "discover",
                                       "Runnable": True, "Params": params})


def seed(path: Path, count: int, min_kb: float, max_kb: float) -> None:
    rng = random.Random(count)
    conn = schema.connect(path)
    schema.create(conn)
    conn.execute("BEGIN")
    batch = []
    for i in range(count):
        obj = machine(f"seed-{i:07d}", int(rng.uniform(min_kb, max_kb) * 1024), rng)
        batch.append(("machines", obj["Uuid"], json.dumps(obj), None,
                      schema.unique_value("machines", obj)))
        if len(batch) == 1000:
            conn.executemany("INSERT INTO objects (kind, key, body, bundle, name) "
                             "VALUES (?,?,?,?,?)", batch)
            batch.clear()
    conn.executemany("INSERT INTO objects (kind, key, body, bundle, name) VALUES (?,?,?,?,?)",
                     batch)
    conn.execute("COMMIT")
    conn.close()


def create_fn(kind: models.Kind, obj: dict, check):
    """create_object's mutation (drp/api/objects.py), with the uniqueness check given."""
    key = obj[kind.key]

    def create(tx):
        if tx.get(kind.name, key) is not None:
            raise ApiError(409, f"{kind.model} {key} already exists", model=kind.name, key=key)
        check(tx, kind, key, obj)
        tx.record(kind.name, key, "create", obj)
        return obj
    return create


def stats_ms(lat: list[float]) -> dict:
    lat = sorted(lat)
    return {"n": len(lat), "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2)}


async def timed(store: Store, fns) -> dict:
    lat = []
    for fn in fns:
        t0 = time.perf_counter()
        await store.write(fn)
        lat.append(time.perf_counter() - t0)
    return stats_ms(lat)


async def timed_list(store: Store, filters: dict, rounds: int) -> dict:
    lat = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await store.list("machines", filters)
        lat.append(time.perf_counter() - t0)
    return stats_ms(lat)


async def measure(path: Path, creates: int, before_creates: int) -> dict:
    store = Store(path)
    rng = random.Random(1)
    try:
        await store.write(promote(1))
        tag = uuid.uuid4().hex[:6]

        def machines(n, label):
            return [machine(f"new-{label}-{tag}-{i}", 4096, rng) for i in range(n)]
        out = {}
        for label, check, n in (("after", _check_unique_name, creates),
                                ("before", check_before, before_creates)):
            out[f"machine_create_{label}"] = await timed(
                store, [create_fn(MACHINES, m, check) for m in machines(n, label)])
        out["profile_create"] = await timed(store, [create_fn(PROFILES, models.normalize(
            PROFILES, {"Name": f"p-{tag}-{i}", "Params": {"a": "b" * 4000}}), _check_unique_name)
            for i in range(creates)])
        out["list_by_name"] = await timed_list(store, {"Name": f"new-after-{tag}-0"}, 20)
        out["list_by_stage"] = await timed_list(store, {"Stage": "nowhere"}, 3)
        return out
    finally:
        store.close()


def run(workdir: Path, sizes: list[int], creates: int, min_kb: float, max_kb: float) -> dict:
    results = {}
    for size in sizes:
        path = workdir / f"s{size}.db"
        t0 = time.monotonic()
        seed(path, size, min_kb, max_kb)
        seeded = time.monotonic() - t0
        # the old check scans every machine per create: fewer of them on big stores
        before_creates = creates if size <= 10_000 else max(5, creates // 10)
        r = trio.run(measure, path, creates, before_creates)
        r["seed_s"] = round(seeded, 1)
        r["db_mb"] = round(path.stat().st_size / 2**20, 1)
        results[str(size)] = r
        print(f"{size:>7} machines ({r['db_mb']} MB): create p50/p99 after "
              f"{r['machine_create_after']['p50_ms']}/{r['machine_create_after']['p99_ms']} ms, "
              f"before {r['machine_create_before']['p50_ms']}/"
              f"{r['machine_create_before']['p99_ms']} ms, profile "
              f"{r['profile_create']['p50_ms']}/{r['profile_create']['p99_ms']} ms; list by "
              f"Name {r['list_by_name']['p50_ms']} ms, by Stage "
              f"{r['list_by_stage']['p50_ms']} ms", flush=True)
        path.unlink()
    return results


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench create")
    ap.add_argument("--quick", action="store_true",
                    help="50 creates, machines of 1-3 KB (under a minute)")
    ap.add_argument("--sizes", default="100,10000,100000")
    ap.add_argument("--creates", type=int, default=None, help="per variant (default 200)")
    ap.add_argument("--min-kb", type=float, default=None, help="default 2")
    ap.add_argument("--max-kb", type=float, default=None, help="default 20")
    args = ap.parse_args(argv)
    creates = args.creates or (50 if args.quick else 200)
    min_kb = args.min_kb if args.min_kb is not None else (1 if args.quick else 2)
    max_kb = args.max_kb if args.max_kb is not None else (3 if args.quick else 20)
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="drp-bench-create-"))
    try:
        results = run(workdir, sizes, creates, min_kb, max_kb)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"bench": "create", "via": "Store.write (API create mutation, no HTTP)",
                      "creates": creates, "machine_kb": [min_kb, max_kb], "sizes": results}))
    return 0
