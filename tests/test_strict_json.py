"""Issue 18 items 1, 5 and 8: strict JSON at the door, a store already holding a poison row,
4xx (not 500) for bad numbers, paths and durations, and YAML bundles without alias blow-up."""
from __future__ import annotations

import json
import sqlite3
import time

from drp.modelvalues import complete
from drp.store.store import Store
from tests.test_api import assert_error

BAD_BODIES = {
    "NaN": b'{"Name": "nan", "Params": {"x": NaN}}',
    "Infinity": b'{"Name": "inf", "Params": {"x": Infinity}}',
    "-Infinity": b'{"Name": "ninf", "Params": {"x": [1, -Infinity]}}',
    "1e400": b'{"Name": "big", "Params": {"x": 1e400}}',
    "int beyond 64 bits": b'{"Name": "huge", "Params": {"x": 18446744073709551616}}',
    "lone surrogate value": b'{"Name": "s", "Params": {"x": "a\\ud800b"}}',
    "lone surrogate key": b'{"Name": "k", "Params": {"\\udfff": 1}}',
    "2000 deep": b'{"Name": "deep", "Params": {"x": ' + b"[" * 2000 + b"]" * 2000 + b"}}",
    "101 deep": b'{"Name": "deep101", "Params": {"x": ' + b"[" * 100 + b"]" * 100 + b"}}",
    # big enough to be parsed in a worker thread
    "200000 deep": b'{"Name": "deeper", "Params": {"x": ' + b"[" * 200_000 + b"}}",
}
REASONS = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "Infinity", "1e400": "range",
           "int beyond 64 bits": "64 bits", "lone surrogate value": "surrogate",
           "lone surrogate key": "surrogate", "2000 deep": "deeper than 100",
           "101 deep": "deeper than 100", "200000 deep": "deeper than 100"}


def _no_traceback(server) -> None:
    logs = server.logs()
    assert "Traceback" not in logs and "unexpected error" not in logs, logs[-3000:]


def test_non_standard_json_is_refused_at_the_door(drp):
    with drp.client() as c:
        for name, body in BAD_BODIES.items():
            r = c.post("/machines", content=body, headers={"Content-Type": "application/json"})
            err = assert_error(r, 400, "machines")
            assert REASONS[name] in err["Messages"][0], (name, err)
            assert "\n" not in err["Messages"][0]
        assert c.get("/machines").json() == []  # nothing stored
        ok = c.post("/machines", json={"Name": "fine", "Params": {"x": 18446744073709551615,
                                                                  "y": "\U0001F600", "z": 1.5}})
        assert ok.status_code == 201, ok.text
        uuid = ok.json()["Uuid"]
        # The other JSON doors: PUT, PATCH, a password, a JSON bundle.
        assert_error(c.put(f"/machines/{uuid}", content=BAD_BODIES["NaN"]), 400, "machines")
        assert_error(c.patch(f"/machines/{uuid}", content=b'[{"op": "add", "path": "/Params/n",'
                             b' "value": NaN}]'), 400, "machines")
        assert_error(c.put("/users/rocketskates/password", content=b'{"password": "\\ud800"}'),
                     400, "users")
        assert_error(c.post("/contents", content=b'{"meta": {"Name": "n"}, "sections": '
                            b'{"profiles": {"p": {"Name": "p", "Params": {"x": Infinity}}}}}',
                            headers={"Content-Type": "application/json"}), 400, "contents")
        # Filtered lists and creates keep working.
        assert len(c.get("/machines", params={"Name": "fine"}).json()) == 1
        assert c.post("/machines", json={"Name": "second"}).status_code == 201
        assert c.get(f"/machines/{uuid}").json()["Params"]["x"] == 18446744073709551615
    _no_traceback(drp)


def _inject(db, kind: str, key: str, body: str) -> None:
    """Overwrite a stored body (and its change-log entries) as a version without strict JSON
    would have stored it."""
    conn = sqlite3.connect(str(db))
    try:
        conn.execute("UPDATE objects SET body=? WHERE kind=? AND key=?", (body, kind, key))
        conn.execute("UPDATE changes SET body=? WHERE kind=? AND key=?", (body, kind, key))
        conn.commit()
    finally:
        conn.close()


def test_a_store_already_holding_a_poison_row_keeps_serving(drp_factory):
    server = drp_factory("poisoned")
    with server.client() as c:
        victim = c.post("/machines", json={"Name": "nan", "Address": "10.0.0.7"}).json()
        broken = c.post("/machines", json={"Name": "broken"}).json()["Uuid"]
        c.post("/machines", json={"Name": "other", "Address": "10.0.0.7"}).raise_for_status()
    server.stop()
    poison = json.dumps({**victim, "Params": {"x": float("nan"), "y": [float("inf")]},
                         "Meta": {"s": "\ud800"}})
    assert "NaN" in poison and "Infinity" in poison and "\\ud800" in poison
    _inject(server.base_root / "drp.db", "machines", victim["Uuid"], poison)
    _inject(server.base_root / "drp.db", "machines", broken, '{"Name": "broken", ')
    server.start()
    logs = server.logs()
    assert logs.count(f"machines {victim['Uuid']}: stored body was not standard JSON") == 1, logs
    assert f"machines {broken}: stored body is not JSON; moved to the quarantine table" in logs
    assert f"(machines {victim['Uuid']}): body was not standard JSON; repaired" in logs
    with server.client() as c:
        r = c.get(f"/machines/{victim['Uuid']}")
        assert r.status_code == 200 and "NaN" not in r.text and "Infinity" not in r.text
        got = r.json()
        assert got["Params"] == {"x": None, "y": [None]} and got["Meta"]["s"] == "\ufffd"
        # Creates (name uniqueness), updates and filtered lists over every machine work.
        assert c.post("/machines", json={"Name": "new"}).status_code == 201
        assert_error(c.post("/machines", json={"Name": "nan"}), 409)
        r = c.put(f"/machines/{victim['Uuid']}", json={**got, "Params": {"x": 1}})
        assert r.status_code == 200, r.text
        listed = c.get("/machines", params={"Address": "10.0.0.7"})
        assert listed.status_code == 200, listed.text
        assert sorted(m["Name"] for m in listed.json()) == ["nan", "other"]
        assert sorted(m["Name"] for m in c.get("/machines").json()) == ["nan", "new", "other"]
        assert c.get(f"/machines/{broken}").status_code == 404  # quarantined, out of queries
    conn = sqlite3.connect(str(server.base_root / "drp.db"))
    try:
        assert conn.execute("SELECT COUNT(*) FROM objects WHERE NOT json_valid(body)"
                            ).fetchone()[0] == 0
        # Change-log bodies are repaired too; one that is not JSON at all is left (and logged).
        assert conn.execute("SELECT DISTINCT key FROM changes WHERE body IS NOT NULL AND "
                            "NOT json_valid(body)").fetchall() == [(broken,)]
        assert conn.execute("SELECT key FROM quarantine").fetchall() == [(broken,)]
    finally:
        conn.close()
    server.stop()
    server.start()  # repaired once: a second open finds nothing to repair
    assert server.logs().count("stored body was not standard JSON") == 1
    _no_traceback(server)


def test_the_repair_is_the_same_on_every_node(tmp_path):
    """Two nodes holding the same rows (an active and its passive) repair them alike: the
    repair is local, at open, and must never make replicas differ."""
    nodes = [tmp_path / "a", tmp_path / "b"]
    for node in nodes:
        node.mkdir()
        Store(node / "drp.db").close()
        conn = sqlite3.connect(str(node / "drp.db"))
        conn.execute("INSERT INTO objects (kind, key, body) VALUES ('profiles', 'p', ?)",
                     ('{"Name": "p", "Params": {"x": NaN, "y": [Infinity, "\\udc00"]}}',))
        conn.execute("INSERT INTO changes VALUES (1, 1, 0.0, 'profiles', 'p', 'create', ?, NULL)",
                     ('{"Name": "p", "Params": {"x": -Infinity}}',))
        conn.commit()
        conn.close()
    tables = []
    for node in nodes:
        store = Store(node / "drp.db")
        conn = store._writer_conn
        tables.append([conn.execute("SELECT * FROM objects ORDER BY kind, key").fetchall(),
                       conn.execute("SELECT * FROM changes ORDER BY seq").fetchall()])
        assert store.head == 1  # positions untouched
        store.close()
    assert tables[0] == tables[1]
    objects, changes = tables[0]
    body = json.loads([row for row in objects if row[0] == "profiles"][0][2])
    assert body["Params"] == {"x": None, "y": [None, "\ufffd"]}
    # ... and completed to the full model (drp.store.complete runs after the repair)
    assert json.loads(changes[0][6]) == complete("profiles", {"Name": "p", "Params": {"x": None}})


def test_out_of_range_queries_durations_and_paths_are_4xx(drp):
    with drp.client() as c:
        for param in ("limit", "offset"):
            for value in (str(1 << 64), str(1 << 63), str(-(1 << 63) - 1)):
                err = assert_error(c.get("/machines", params={param: value}), 406,
                                   "machines")  # dr-provision's code for a bad list query
                assert "64-bit" in err["Messages"][0]
        assert c.get("/machines", params={"limit": str((1 << 63) - 1)}).status_code == 200
        for ttl in ("inf", "nan", "1e400", "-inf", "9" * 400 + "h"):
            err = assert_error(c.get("/users/rocketskates/token", params={"ttl": ttl}), 400,
                               "users")
            assert "finite" in err["Messages"][0], err
        long = "/".join(["d" * 200] * 30)  # each segment is fine; the whole is past PATH_MAX
        for method in ("POST", "GET", "DELETE"):
            r = c.request(method, "/files/" + long, content=b"x" if method == "POST" else None)
            err = assert_error(r, 400, "files")
            assert "longer than the operating system allows" in err["Messages"][0]
        r = c.get("/files", params={"path": long})
        assert_error(r, 400, "files")
    _no_traceback(drp)


def lol(levels: int) -> bytes:
    """The billion-laughs document: each level ten aliases of the one below."""
    lines = ["meta: {Name: lol}", 'a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append(f"sections: {{profiles: {{p: {{Name: p, Params: {{x: *a{levels}}}}}}}}}")
    return "\n".join(lines).encode()


YAML = {"Content-Type": "application/yaml"}


def test_yaml_alias_amplification_is_refused_before_expanding(drp_factory):
    server = drp_factory("yaml", env={"RS_MAX_YAML_ALIAS_NODES": "1000"})
    with server.client() as c:
        for levels in (6, 9):
            assert len(lol(levels)) < 700
            start = time.monotonic()
            err = assert_error(c.post("/contents", content=lol(levels), headers=YAML), 413,
                               "contents")
            assert time.monotonic() - start < 2
            assert "--max-yaml-alias-nodes" in err["Messages"][0] and "1000" in err["Messages"][0]
        assert c.get("/contents/lol").status_code == 404
        assert c.get("/profiles/p").status_code == 404
        err = assert_error(c.post("/contents", content=b"meta: &m {Name: r, x: *m}", headers=YAML),
                           400, "contents")
        assert "recursive" in err["Messages"][0]
        err = assert_error(c.post("/contents", content=b"meta: {Name: f}\nsections: {profiles: "
                                  b"{p: {Name: p, Params: {x: .nan}}}}", headers=YAML), 400)
        # A few aliases within the bound are fine, and expanded as YAML means.
        r = c.post("/contents", content=lol(2), headers=YAML)
        assert r.status_code == 201, r.text
        assert c.get("/profiles/p").json()["Params"]["x"] == [["lol"] * 10] * 10
    _no_traceback(server)
