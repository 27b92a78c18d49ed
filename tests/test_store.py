"""The store: change log order under concurrent writers, persistence, and Store itself."""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from drp.api.errors import ApiError
from drp.modelvalues import complete
from drp.store.errors import WritesRefused
from drp.store import wire
from drp.store.store import Store
from tests.storeutil import promote, put

# ---- through the HTTP API ---------------------------------------------------------------------
THREADS = 16
PATCHES = 8  # per thread, on the thread's own profile
INCREMENTS = 1  # per thread, compare-and-set on the shared counter (16 contenders)


def read_changes(db: Path) -> list[dict]:
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT seq, epoch, time, kind, key, action, body FROM changes "
                            "ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [{"seq": s, "epoch": e, "time": t, "kind": k, "key": key, "action": a,
             "body": None if b is None else json.loads(b)} for s, e, t, k, key, a, b in rows]


def test_change_log_in_commit_order_under_concurrent_writers(drp):
    with drp.client() as c:
        assert c.post("/profiles", json={"Name": "counter", "Params": {"n": 0}}).status_code == 201
        token = c.get("/users/rocketskates/token").json()["Token"]

    acked: list[tuple[str, str, str, object]] = []  # (kind, key, action, marker)
    lock = threading.Lock()
    errors: list[BaseException] = []
    wins = [0] * THREADS

    def ack(*item):
        with lock:
            acked.append(item)

    def worker(t: int):
        try:
            with drp.client(token=token) as c:
                name = f"w{t}"
                r = c.post("/profiles", json={"Name": name, "Description": f"{name}-init"})
                assert r.status_code == 201, r.text
                ack("profiles", name, "create", f"{name}-init")
                # a refused duplicate must leave no trace in the log
                assert c.post("/profiles", json={"Name": name}).status_code == 409
                r = c.post("/machines", json={"Name": f"mach-{t}"})
                assert r.status_code == 201, r.text
                ack("machines", r.json()["Uuid"], "create", f"mach-{t}")
                for i in range(PATCHES):
                    marker = f"{name}-{i}"
                    r = c.patch(f"/profiles/{name}", json=[
                        {"op": "replace", "path": "/Description", "value": marker},
                        {"op": "add", "path": f"/Params/p{i}", "value": i}])
                    assert r.status_code == 200, r.text
                    ack("profiles", name, "update", marker)
                    # the shared counter: optimistic test-and-set, retried on 409
                    if i < INCREMENTS:
                        while True:
                            n = c.get("/profiles/counter").json()["Params"]["n"]
                            r = c.patch("/profiles/counter", json=[
                                {"op": "test", "path": "/Params/n", "value": n},
                                {"op": "replace", "path": "/Params/n", "value": n + 1}])
                            if r.status_code == 200:
                                wins[t] += 1
                                ack("profiles", "counter", "update", n + 1)
                                break
                            assert r.status_code == 409, r.text
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors[0]
    assert wins == [INCREMENTS] * THREADS

    changes = read_changes(drp.base_root / "drp.db")
    seqs = [c["seq"] for c in changes]
    assert seqs == list(range(1, len(changes) + 1)), "the change log has gaps"
    times = [c["time"] for c in changes]
    assert times == sorted(times), "change-log times go backwards: not in commit order"
    assert all(c["epoch"] == 1 for c in changes)

    # the bootstrap entries, the counter's create, then exactly one row per acknowledged write
    workload = [c for c in changes if c["kind"] in ("profiles", "machines")]
    assert len(workload) == 1 + len(acked)
    for kind, key, action, marker in acked:
        if key == "counter":
            rows = [c for c in workload if c["key"] == "counter" and c["action"] == action
                    and c["body"]["Params"]["n"] == marker]
        elif kind == "machines":
            rows = [c for c in workload if c["key"] == key and c["action"] == action]
            assert rows and rows[0]["body"]["Name"] == marker
        else:
            rows = [c for c in workload if c["key"] == key and c["action"] == action
                    and c["body"]["Description"] == marker]
        assert len(rows) == 1, (kind, key, action, marker, rows)

    # per key, rows appear in the order each client's acknowledged writes happened
    for t in range(THREADS):
        mine = [c["body"]["Description"] for c in workload if c["key"] == f"w{t}"]
        assert mine == [f"w{t}-init"] + [f"w{t}-{i}" for i in range(PATCHES)]
    counts = [c["body"]["Params"]["n"] for c in workload if c["key"] == "counter"]
    assert counts == list(range(THREADS * INCREMENTS + 1))  # serialized: no lost update

    # the last row of every key is the object as the API serves it now
    last: dict[tuple[str, str], dict] = {}
    for c in workload:
        last[(c["kind"], c["key"])] = c["body"]
    with drp.client() as c:
        for (kind, key), body in last.items():
            assert c.get(f"/{kind}/{key}").json() == body
        assert len(c.get("/profiles").json()) == THREADS + 1
        assert len(c.get("/machines").json()) == THREADS


def test_persistence_across_restart(drp):
    with drp.client() as c:
        p = c.post("/profiles", json={"Name": "keep", "Params": {"x": [1, 2]}}).json()
        m = c.post("/machines", json={"Name": "keep-m", "Runnable": True}).json()
        gone = c.post("/profiles", json={"Name": "gone"}).json()
        c.delete("/profiles/gone")
        p = c.patch("/profiles/keep", json=[{"op": "replace", "path": "/Description",
                                             "value": "kept"}]).json()
        assert p["Description"] == "kept"
        c.post("/users", json={"Name": "erin", "Password": "pw"})
        c.put("/users/erin/password", json={"password": "pw2"})
        token = c.get("/users/rocketskates/token").json()["Token"]
        info = c.get("/info").json()
    before = read_changes(drp.base_root / "drp.db")
    assert drp.stop() == 0
    drp.start()
    with drp.client() as c:
        assert c.get("/profiles/keep").json() == p
        assert c.get(f"/machines/{m['Uuid']}").json() == m
        assert c.get(f"/profiles/{gone['Name']}").status_code == 404
        assert c.get("/info").json()["id"] == info["id"]
        assert c.get("/users").status_code == 200
    with drp.client(auth=("erin", "pw2")) as c:
        assert c.get("/info").status_code == 200
    with drp.client(token=token) as c:  # the token secret is in the store, not in memory
        assert c.get("/info").status_code == 200
    with drp.client(auth=("rocketskates", "r0cketsk8ts")) as c:
        assert c.post("/profiles", json={"Name": "after"}).status_code == 201
    after = read_changes(drp.base_root / "drp.db")
    # a restart appends no bootstrap entries and keeps the numbering going
    assert after[:len(before)] == before
    assert [(c["seq"], c["kind"], c["key"]) for c in after[len(before):]] == \
        [(len(before) + 1, "profiles", "after")]


# ---- Store, directly --------------------------------------------------------------------------
def rows(db: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(str(db))
    try:
        order = {"objects": "kind, key", "changes": "seq", "epochs": "epoch", "blobs": "path",
                 "local": "name"}[table]
        return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    finally:
        conn.close()


async def test_write_appends_change_and_object(store):
    seen = []
    store.listeners.append(seen.append)
    assert await store.write(put("profiles", "p1", {"Name": "p1"})) == "p1"
    assert store.head == 2 and store.epoch == 1
    assert await store.get("profiles", "p1") == {"Name": "p1"}
    entries = await store.entries_after(0)
    assert [(e["seq"], e["epoch"], e["kind"], e["key"], e["action"]) for e in entries] == \
        [(1, 1, "ha", "n1", "promote"), (2, 1, "profiles", "p1", "create")]
    assert entries[1]["body"] == {"Name": "p1"}
    assert [[c["seq"] for c in batch] for batch in seen] == [[2]]
    await store.write(lambda tx: tx.record("profiles", "p1", "delete"))
    assert await store.get("profiles", "p1") is None
    assert (await store.entries_after(2))[0]["body"] is None  # a tombstone
    assert [e["seq"] for e in await store.entries_after(1, limit=1)] == [2]


async def test_failed_write_rolls_back_and_leaves_no_change_row(store):
    await store.write(put("profiles", "keep", {"Name": "keep"}))
    head = store.head
    seen = []
    store.listeners.append(seen.append)

    def failing(tx):
        tx.record("profiles", "ghost", "create", {"Name": "ghost"})
        tx.record("profiles", "keep", "delete")
        raise ApiError(409, "refused halfway")
    with pytest.raises(ApiError) as info:
        await store.write(failing)
    assert info.value.code == 409
    assert store.head == head
    assert await store.get("profiles", "ghost") is None
    assert await store.get("profiles", "keep") == {"Name": "keep"}
    assert [e["seq"] for e in await store.entries_after(0)] == list(range(1, head + 1))
    assert seen == []
    # the next write takes the next seq: no gap where the failed one was
    await store.write(put("profiles", "next", {"Name": "next"}))
    assert [e["seq"] for e in await store.entries_after(0)] == list(range(1, head + 2))


async def test_concurrent_trio_writers_are_serialized(store):
    async def writer(i):
        for j in range(10):
            await store.write(put("profiles", f"t{i}-{j}", {"Name": f"t{i}-{j}"}))
    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(writer, i)
    entries = await store.entries_after(0, limit=10_000)
    assert [e["seq"] for e in entries] == list(range(1, 162))
    assert store.head == 161
    for i in range(16):  # each task's writes are in its own order
        keys = [e["key"] for e in entries if e["key"].startswith(f"t{i}-")]
        assert keys == [f"t{i}-{j}" for j in range(10)]
    assert len(await store.list("profiles")) == 160


async def test_refused_writes(store):
    store.refuse_writes("passive")
    with pytest.raises(WritesRefused, match="^passive$"):
        await store.write(put("profiles", "x", {"Name": "x"}))
    await store.write(put("profiles", "y", {"Name": "y"}), internal=True)
    assert await store.get("profiles", "y") is not None
    assert await store.get("profiles", "x") is None


async def test_list_filters(store):
    for name, runnable, n in (("a", True, 1), ("b", False, 1), ("c", True, 2)):
        await store.write(put("machines", name, {"Name": name, "Runnable": runnable,
                                                 "CurrentTask": n}))
    assert [m["Name"] for m in await store.list("machines", {"Runnable": "true"})] == ["a", "c"]
    assert [m["Name"] for m in await store.list("machines", {"CurrentTask": "1"})] == ["a", "b"]
    assert [m["Name"] for m in await store.list("machines", offset=1, limit=1)] == ["b"]


async def test_apply_replicated_reproduces_the_primary(store, tmp_path):
    await store.write(put("profiles", "p", {"Name": "p"}))
    await store.write(put("machines", "m", {"Name": "m"}))
    await store.write(put("profiles", "p", {"Name": "p", "Description": "2"}, "update"))
    await store.write(lambda tx: tx.record("machines", "m", "delete"))
    replica = Store(tmp_path / "b.db")
    try:
        seen = []
        replica.listeners.append(seen.append)
        entries = await store.entries_after(0)
        await replica.apply_replicated(entries[:2])
        await replica.apply_replicated([])  # nothing new: a no-op
        await replica.apply_replicated(entries[2:])
        assert (replica.head, replica.epoch) == (store.head, store.epoch) == (5, 1)
        for table in ("objects", "changes", "epochs"):
            assert rows(replica.path, table) == rows(store.path, table), table
        assert [[e["seq"] for e in batch] for batch in seen] == [[1, 2], [3, 4, 5]]
        assert await replica.get("profiles", "p") == {"Name": "p", "Description": "2"}
        # a replica that is later promoted continues the same numbering
        await replica.write(put("profiles", "q", {"Name": "q"}))
        assert [e["seq"] for e in await replica.entries_after(4)] == [5, 6]
    finally:
        replica.close()


async def test_apply_replicated_failure_keeps_position_of_what_was_applied(store, tmp_path):
    await store.write(put("profiles", "p", {"Name": "p"}))
    entries = await store.entries_after(0)
    bad = {**entries[-1], "seq": entries[-1]["seq"] + 1, "kind": "bogus"}
    replica = Store(tmp_path / "b.db")
    try:
        with pytest.raises(ValueError):
            await replica.apply_replicated([*entries, bad])
        assert replica.head == entries[-1]["seq"]
        assert [e["seq"] for e in await replica.entries_after(0)] == [1, 2]
        await replica.write(put("profiles", "after", {"Name": "after"}))  # no seq clash
        assert replica.head == 3
    finally:
        replica.close()


async def test_apply_replicated_is_one_transaction_and_stops_at_a_failing_entry(store, tmp_path):
    """A batch is replayed in one transaction (one BEGIN, not one per entry). An entry that
    fails: the ones before it are committed (the position says so), it and the ones after it
    are not, and they apply once they arrive again."""
    for name in ("p", "q", "r", "s"):
        await store.write(put("profiles", name, {"Name": name}))
    entries = await store.entries_after(0)
    first = len(entries) - 4  # the four puts are the last entries
    replica = Store(tmp_path / "b.db")
    begins: list[str] = []
    try:
        await replica.apply_replicated(entries[:first])
        replica._writer_conn.set_trace_callback(
            lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
        await replica.apply_replicated(entries[first:first + 2])  # p and q: one transaction
        assert len(begins) == 1
        bad = {**entries[first + 2], "kind": "bogus"}  # r fails, s would apply
        with pytest.raises(ValueError):
            await replica.apply_replicated([bad, entries[first + 3]])
        assert replica.head == entries[first + 1]["seq"]
        assert len(await replica.entries_after(0)) == first + 2
        assert await replica.get("profiles", "s") is None  # after the failure: not applied
        await replica.apply_replicated(entries[first + 2:])  # the real r and s apply later
        assert replica.head == entries[-1]["seq"]
        for name in ("p", "q", "r", "s"):
            assert await replica.get("profiles", name) == await store.get("profiles", name)
    finally:
        replica.close()


async def test_snapshot_round_trip(store, tmp_path):
    store.local_set_sync("drp_id", "primary")
    for i in range(5):  # complete, as the API stores them (an install completes what is not)
        await store.write(put("profiles", f"p{i}", complete("profiles", {
            "Name": f"p{i}", "Params": {"i": i}})))
    await store.write(lambda tx: tx.record("profiles", "p0", "delete"))
    snap = tmp_path / "snap.db"
    seq = await store.snapshot_into(snap)
    assert seq == store.head == 7
    assert rows(snap, "local") == []  # this node's own rows do not travel

    other = Store(tmp_path / "c.db")
    try:
        other.local_set_sync("drp_id", "secondary")
        await other.write(put("profiles", "stale", {"Name": "stale"}))  # replaced wholesale
        await other.install_snapshot(snap)
        assert (other.head, other.epoch) == (7, 1)
        for table in ("objects", "changes", "epochs", "blobs"):
            assert rows(other.path, table) == rows(store.path, table), table
        assert await other.get("profiles", "stale") is None
        assert await other.get("profiles", "p3") == complete("profiles", {"Name": "p3",
                                                                         "Params": {"i": 3}})
        assert other.local_get_sync("drp_id") == "secondary"
        # and it carries on from the snapshot's position, in step with the primary
        entry_primary = await store.write(put("profiles", "n", {"Name": "n"}))
        assert entry_primary == "n"
        await other.apply_replicated(await store.entries_after(other.head))
        assert rows(other.path, "changes") == rows(store.path, "changes")
        assert other.head == 8
    finally:
        other.close()


async def test_reopen_keeps_position(tmp_path):
    s = Store(tmp_path / "r.db")
    await s.write(promote(3))
    await s.write(put("profiles", "p", {"Name": "p"}))
    s.close()
    s = Store(tmp_path / "r.db")
    try:
        assert (s.head, s.epoch) == (2, 3)
        await s.write(put("profiles", "q", {"Name": "q"}))
        assert [(e["seq"], e["epoch"]) for e in await s.entries_after(0)] == \
            [(1, 3), (2, 3), (3, 3)]
    finally:
        s.close()


async def test_group_commit_isolates_a_failing_write(store, monkeypatch):
    """Writes queued together commit as one group; one that fails is rolled back alone and
    leaves no gap in the change log."""
    groups = []
    run_group = store._run_group

    def spy(group, publish):
        groups.append(len(group))
        return run_group(group, publish)
    monkeypatch.setattr(store, "_run_group", spy)
    outcomes = {}

    async def writer(i):
        def fn(tx):
            tx.record("profiles", f"g{i}", "create", {"Name": f"g{i}"})
            if i == 5:
                raise ApiError(409, "refused")
            return i
        try:
            outcomes[i] = await store.write(fn)
        except ApiError as e:
            outcomes[i] = e.code
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(writer, i)
    assert outcomes == {i: 409 if i == 5 else i for i in range(10)}
    assert max(groups) > 1  # some writes did share a transaction
    entries = await store.entries_after(0)
    assert [e["seq"] for e in entries] == list(range(1, 11))
    assert sorted(e["key"] for e in entries[1:]) == sorted(f"g{i}" for i in range(10) if i != 5)
    assert await store.get("profiles", "g5") is None
    assert store.head == 10


class _CommitFailsOnce:
    """The writer connection, except that the next COMMIT fails the way an I/O error or a
    full disk makes it fail: SQLite has already rolled the transaction back when the error
    is raised. (A real disk error cannot be produced on demand here.)"""

    def __init__(self, conn: sqlite3.Connection):
        self.conn, self.armed = conn, True

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.armed:
            self.armed = False
            self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


async def test_group_whose_commit_fails_reports_every_write_failed(store):
    """No write of a group whose COMMIT failed may be reported as done."""
    head = store.head
    real = store._writer_conn
    store._writer_conn = _CommitFailsOnce(real)
    outcomes = {}

    async def writer(i):
        try:
            outcomes[i] = await store.write(put("profiles", f"f{i}", {"Name": f"f{i}"}))
        except sqlite3.OperationalError as e:
            outcomes[i] = str(e)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(writer, i)
    finally:
        store._writer_conn = real
    assert outcomes == {i: "disk I/O error" for i in range(3)}
    assert store.head == head and await store.entries_after(head) == []
    assert [await store.get("profiles", f"f{i}") for i in range(3)] == [None] * 3
    await store.write(put("profiles", "after", {"Name": "after"}))  # the writer goes on
    assert [e["seq"] for e in await store.entries_after(head)] == [head + 1]


async def test_cancelled_queued_write_never_happens(store):
    started = trio.Event()

    def slow(tx):
        trio.from_thread.run_sync(started.set)
        import time
        time.sleep(0.2)
        tx.record("profiles", "slow", "create", {"Name": "slow"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write, slow)
        await started.wait()
        with trio.move_on_after(0.05):  # queued behind the slow write, then given up
            await store.write(put("profiles", "gone", {"Name": "gone"}))
    assert await store.get("profiles", "slow") is not None
    assert await store.get("profiles", "gone") is None
    await store.write(put("profiles", "next", {"Name": "next"}))
    assert [e["key"] for e in await store.entries_after(0)][-2:] == ["slow", "next"]


async def test_versions_move_with_committed_changes(store, tmp_path):
    before = store.version("users")
    await store.write(put("profiles", "p", {"Name": "p"}))
    assert store.version("users") == before
    await store.write(put("users", "u", {"Name": "u"}))
    assert store.version("users") != before
    replica = Store(tmp_path / "v.db")
    try:
        v0 = replica.version("users")
        await replica.apply_replicated(await store.entries_after(0))
        v1 = replica.version("users")
        assert v1 != v0
        snap = tmp_path / "v-snap.db"
        await store.snapshot_into(snap)
        await replica.install_snapshot(snap)
        assert replica.version("users") != v1
    finally:
        replica.close()


async def test_wire_form_is_the_entry_as_json_both_ways(store):
    """What the sender puts on the wire, from memory or from the database, decodes to the
    entry the database holds (job-log bytes in base64)."""
    import base64
    await store.write(put("profiles", "p\"x", {"Name": "p\"x", "Params": {"ü": [1, 2.5]}}))
    await store.write(lambda tx: tx.record("joblog", "job-logs/j", "append",
                                           {"offset": 0, "length": 3}, data=b"\x00ab"))
    from_memory = await store.wire_after(0)
    store.recent.clear()
    from_db = await store.wire_after(0)
    assert from_memory == from_db
    want = await store.entries_after(0)
    for entry in want:
        if "data" in entry:
            entry["data"] = base64.b64encode(entry["data"]).decode()
    assert [json.loads(text) for _, text in from_db] == want
    assert [seq for seq, _ in from_db] == [e["seq"] for e in want]
    assert await store.wire_after(store.head) == []
    # and the passive's decoding of it gives back the entries as stored, bytes included
    assert [wire.entry_from_wire(wire.check_entry(json.loads(text))) for _, text in from_db] \
        == await store.entries_after(0)
    assert [s for s, _ in await store.wire_after(1, limit=1)] == [2]


async def test_object_cache_follows_every_commit(store, tmp_path):
    await store.write(put("profiles", "c", {"Name": "c", "Description": "1"}))
    assert await store.get("profiles", "c") == {"Name": "c", "Description": "1"}
    assert store.cache.get("profiles", "c") is not None  # served from memory next time
    await store.write(put("profiles", "c", {"Name": "c", "Description": "2"}, "update"))
    assert await store.get("profiles", "c") == {"Name": "c", "Description": "2"}
    await store.write(lambda tx: tx.record("profiles", "c", "delete"))
    assert await store.get("profiles", "c") is None
    # a replica: applied entries and an installed snapshot replace what it cached
    await store.write(put("profiles", "r", {"Name": "r", "Description": "1"}))
    replica = Store(tmp_path / "cache-replica.db")
    try:
        await replica.apply_replicated(await store.entries_after(0))
        assert (await replica.get("profiles", "r"))["Description"] == "1"
        await store.write(put("profiles", "r", {"Name": "r", "Description": "2"}, "update"))
        await replica.apply_replicated(await store.entries_after(replica.head))
        assert (await replica.get("profiles", "r"))["Description"] == "2"
        await store.write(put("profiles", "r", {"Name": "r", "Description": "3"}, "update"))
        snap = tmp_path / "cache-snap.db"
        await store.snapshot_into(snap)
        await replica.install_snapshot(snap)
        assert (await replica.get("profiles", "r"))["Description"] == "3"
    finally:
        replica.close()


async def test_object_cache_skips_reads_that_overlap_a_commit(store):
    await store.write(put("profiles", "o", {"Name": "o", "Description": "old"}))
    generation = store.cache.generation
    await store.write(put("profiles", "o", {"Name": "o", "Description": "new"}, "update"))
    store.cache.put("profiles", "o", '{"Name": "o", "Description": "old"}', generation)
    assert store.cache.get("profiles", "o") is None  # read before the commit: not kept
    assert (await store.get("profiles", "o"))["Description"] == "new"


def test_recent_log_holds_a_bounded_contiguous_tail():
    from drp.store.recent import RecentLog
    log = RecentLog(keep=4, keep_bytes=10, big=6)
    log.remember([(1, "a"), (2, "bb"), (3, "c")])
    assert log.after(0, 10) == [(1, "a"), (2, "bb"), (3, "c")]
    assert log.after(1, 1) == [(2, "bb")]
    assert log.after(3, 10) == []
    assert log.after(1, 10, oldest_kept=3) is None  # trimmed from the database: not from here
    log.remember([(4, "d"), (5, "e")])  # 5 entries > keep=4: the oldest goes
    assert log.after(0, 10) is None and log.after(1, 10) == [(2, "bb"), (3, "c"), (4, "d"), (5, "e")]
    log.remember([(6, "ffff"), (7, "gggg")])  # 13 bytes > keep_bytes=10: 2 and 3 go
    assert log.after(2, 10) is None
    assert log.after(3, 10) == [(4, "d"), (5, "e"), (6, "ffff"), (7, "gggg")]
    log.remember([(8, "h"), (9, "x" * 7), (10, "j")])  # 9 is too big to hold
    assert log.after(8, 10) is None and log.after(9, 10) == [(10, "j")]
    log.remember([(12, "l")])  # a gap: start over
    assert log.after(9, 10) is None and log.after(11, 10) == [(12, "l")]


def test_recent_log_reads_from_either_end():
    """A sender keeping up asks for the last entry or two: taken from the right, not by walking
    the whole tail; one far behind reads from the left. Both give the same answer."""
    from drp.store.recent import RecentLog
    log = RecentLog(keep=100, keep_bytes=1 << 20)
    log.remember([(seq, str(seq)) for seq in range(1, 101)])
    for seq in (0, 1, 30, 49, 50, 51, 70, 98, 99, 100, 101, 150):
        for limit in (1, 2, 10, 60, 500):
            want = [(s, str(s)) for s in range(seq + 1, min(100, seq + limit) + 1)]
            assert log.after(seq, limit) == want, (seq, limit)


async def test_change_log_is_trimmed_to_retention_when_the_head_passes_a_thousand(store, tmp_path):
    store.retention = 10

    def many(n):
        def fn(tx):
            for i in range(n):
                tx.record("profiles", f"t{tx.head}", "create", {"Name": f"t{tx.head}"})
        return fn
    await store.write(many(990))
    assert await store.oldest_seq() == 1  # not yet: the head is below 1000
    await store.write(many(20))  # the head passes 1000: the last 10 are kept
    assert await store.oldest_seq() == store.head - 9
    source = Store(tmp_path / "trim-source.db")  # keeps everything, to feed a passive
    replica = Store(tmp_path / "trim-replica.db")  # a passive trims the same way
    replica.retention = 10
    try:
        await source.write(promote(1))
        await source.write(many(1009))
        for start in range(0, source.head, 100):
            await replica.apply_replicated(await source.entries_after(start, limit=100))
        assert replica.head == source.head == 1010
        # trimmed when its head passed 1000 (to the 10 before it), not again since
        assert await replica.oldest_seq() == 1000 - 9
    finally:
        source.close()
        replica.close()

