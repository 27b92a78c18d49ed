"""Issue 18 item 6, the store side: a kind's unique field lives in an indexed column
(objects.name), filled wherever object rows are written (the writer, a passive's replay, a
snapshot install, the migration of an older database), and filters never fail on a bad row."""
from __future__ import annotations

import json
import sqlite3

import pytest

from drp import models
from drp.api.errors import ApiError
from drp.api.objects import _check_unique_name
from drp.store import schema
from drp.store.store import Store
from tests.storeutil import promote, put

U1, U2, U3 = ("11111111-1111-4111-8111-11111111111%d" % i for i in (1, 2, 3))
MACHINES = models.KINDS["machines"]


def names(path) -> dict[str, str | None]:
    conn = sqlite3.connect(str(path))
    try:
        return dict(conn.execute("SELECT key, name FROM objects WHERE kind='machines'"))
    finally:
        conn.close()


def plan(store: Store, sql: str, params) -> str:
    return " ".join(r[3] for r in store._writer_conn.execute("EXPLAIN QUERY PLAN " + sql,
                                                              params))


def create_machine(uuid: str, name: str):
    """The API's create mutation for a machine, uniqueness check included."""
    def fn(tx):
        obj = {"Uuid": uuid, "Name": name}
        _check_unique_name(tx, MACHINES, uuid, obj)
        tx.record("machines", uuid, "create", obj)
    return fn


async def test_unique_name_is_an_indexed_lookup(store):
    await store.write(create_machine(U1, "m1"))
    with pytest.raises(ApiError) as e:
        await store.write(create_machine(U2, "m1"))
    assert e.value.code == 409
    assert e.value.messages == [f"machine name m1 is already used by {U1}"]
    await store.write(create_machine(U2, "m2"))
    assert names(store.path) == {U1: "m1", U2: "m2"}
    # renaming fills the column from the new body; a delete takes the row with it
    await store.write(put("machines", U1, {"Uuid": U1, "Name": "m1b"}, "update"))
    await store.write(lambda tx: tx.record("machines", U2, "delete"))
    assert names(store.path) == {U1: "m1b"}
    assert "USING COVERING INDEX objects_name" in plan(
        store, "SELECT key FROM objects WHERE kind=? AND name=? AND key != ? LIMIT 1",
        ("machines", "m1", U3))


async def test_filters_use_columns_and_survive_a_bad_row(store):
    await store.write(put("machines", U1, {"Uuid": U1, "Name": "m1", "Stage": "a"}))
    await store.write(put("machines", U2, {"Uuid": U2, "Name": "m2", "Stage": "b"}))
    # a row SQLite cannot parse (non-standard JSON, as stored before strict JSON at the door)
    store._writer_conn.execute("INSERT INTO objects (kind, key, body, name) VALUES "
                               "('machines', ?, '{\"Name\": \"m3\", \"x\": NaN}', 'm3')", (U3,))
    assert [m["Uuid"] for m in await store.list("machines", {"Stage": "b"})] == [U2]
    assert [m["Uuid"] for m in await store.list("machines", {"Name": "m1"})] == [U1]
    assert [m["Name"] for m in await store.list("machines", {"Uuid": U2})] == ["m2"]
    assert await store.list("machines", {"Name": "m3", "Stage": "a"}) == []
    terms = "SELECT body FROM objects WHERE kind=? AND name = ? ORDER BY key LIMIT -1"
    assert "USING INDEX objects_name" in plan(store, terms, ("machines", "m1"))


async def test_replica_and_snapshot_get_the_column(store, tmp_path):
    await store.write(put("machines", U1, {"Uuid": U1, "Name": "m1"}))
    replica = Store(tmp_path / "r.db")
    try:
        await replica.apply_replicated(await store.entries_after(0))
        assert names(replica.path) == {U1: "m1"}
    finally:
        replica.close()
    snap = tmp_path / "snap.db"
    await store.snapshot_into(snap)
    other = Store(tmp_path / "o.db")
    try:
        await other.install_snapshot(snap)
        assert names(other.path) == {U1: "m1"}
        # a snapshot from a node that predates objects.name: rebuilt from the bodies
        old = sqlite3.connect(str(snap))
        old.execute("DROP INDEX objects_name")
        old.execute("ALTER TABLE objects DROP COLUMN name")
        old.commit()
        old.close()
        await other.install_snapshot(snap)
        assert names(other.path) == {U1: "m1"}
    finally:
        other.close()


async def test_an_older_database_is_migrated_on_open(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE objects (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT "
                 "NULL, bundle TEXT, PRIMARY KEY (kind, key))")
    rows = [("machines", U1, json.dumps({"Uuid": U1, "Name": "m1"}), None),
            ("machines", U2, '{"Uuid": "x", "Name": ', None),  # not JSON at all: no name
            ("profiles", "p", json.dumps({"Name": "p"}), None)]
    conn.executemany("INSERT INTO objects VALUES (?,?,?,?)", rows)
    conn.commit()
    conn.close()
    for _ in range(2):  # and opening it again changes nothing
        store = Store(path)
        try:
            assert names(path).get(U1) == "m1" and names(path).get(U2) is None
            await store.write(promote(1))
            with pytest.raises(ApiError, match="machine name m1 is already used by"):
                await store.write(create_machine(U3, "m1"))
        finally:
            store.close()
    conn = sqlite3.connect(str(path))
    assert conn.execute("SELECT name FROM objects WHERE kind='profiles'").fetchone() == (None,)
    assert "objects_name" in {r[1] for r in conn.execute("PRAGMA index_list(objects)")}
    conn.close()


def test_unique_value():
    assert schema.unique_value("machines", {"Name": "a"}) == "a"
    assert schema.unique_value("machines", {"Name": 3}) is None
    assert schema.unique_value("profiles", {"Name": "a"}) is None


def test_api_refuses_a_taken_machine_name(drp):
    with drp.client() as api:
        first = api.post("/machines", json={"Name": "scale-m"})
        assert first.status_code == 201, first.text
        r = api.post("/machines", json={"Name": "scale-m"})
        assert r.status_code == 409, r.text
        assert r.json()["Messages"] == [
            f"machine name scale-m is already used by {first.json()['Uuid']}"]
        r = api.get("/machines", params={"Name": "scale-m"})
        assert [m["Uuid"] for m in r.json()] == [first.json()["Uuid"]]
