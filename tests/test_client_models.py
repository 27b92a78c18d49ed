"""Every kind's full dr-provision model, driven with RackN's own client (drppy-client): create,
get, list, put, patch (with a `test` op), delete; every field of the model in the raw JSON with
its zero value; the server's fields kept by the server and a client's change to one refused;
objects stored before full models completed at open; a passive serving the active's bytes."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from drppy_client import api as rackn
from drppy_client import models as rm
from drppy_client.rest import ApiException

from drp.modeldefs import DEFAULTS, MODELS, NESTED, SERVER_FIELDS, zero
from drp.modelvalues import complete
from drp.store.store import Store
from tests.drppy import drppy, error_body  # noqa: F401  (drppy: the fixture)
from tests.drpserver import AUTH
from tests.hacluster import Cluster, http, make_token, wait_in_sync

HIDDEN = {"users": {"PasswordHash", "Secret"}}


def _new(kind: str, tag: str, machine_uuid: str = ""):
    """(API class, method stem, key attribute, a new object as RackN's model) per kind."""
    return {
        "machines": (rackn.MachinesApi, "machine", "uuid", rm.Machine(name=f"m-{tag}")),
        "jobs": (rackn.JobsApi, "job", "uuid", rm.Job(machine=machine_uuid)),
        "profiles": (rackn.ProfilesApi, "profile", "name", rm.Profile(name=f"p-{tag}")),
        "params": (rackn.ParamsApi, "param", "name", rm.Param(name=f"pa-{tag}", secure=False)),
        "subnets": (rackn.SubnetsApi, "subnet", "name", rm.Subnet(
            name=f"s-{tag}", subnet="10.9.0.0/24", active_start="10.9.0.10",
            active_end="10.9.0.20", active_lease_time=60, reserved_lease_time=7200,
            enabled=False, next_server="", only_reservations=False, pickers=["hint"],
            proxy=False, strategy="MAC", unmanaged=False)),
        "reservations": (rackn.ReservationsApi, "reservation", "addr", rm.Reservation(
            addr="10.9.0.5", scoped=False, strategy="MAC", token="52:54:00:00:00:01")),
        "leases": (rackn.LeasesApi, "lease", "addr", rm.Lease(
            addr="10.9.0.6", expire_time=datetime(2030, 1, 1, tzinfo=timezone.utc), state="ACK",
            strategy="MAC", token="52:54:00:00:00:02")),
        "bootenvs": (rackn.BootEnvsApi, "boot_env", "name", rm.BootEnv(
            name=f"be-{tag}", boot_params="", initrds=[], kernel="", loaders={},
            only_unknown=False, required_params=[], templates=[])),
        "stages": (rackn.StagesApi, "stage", "name", rm.Stage(
            name=f"st-{tag}", boot_env="", required_params=[], templates=[])),
        "tasks": (rackn.TasksApi, "task", "name", rm.Task(
            name=f"t-{tag}", optional_params=[], required_params=[], templates=[])),
        "templates": (rackn.TemplatesApi, "template", "id", rm.Template(
            id=f"tm-{tag}", contents="hello")),
        "workflows": (rackn.WorkflowsApi, "workflow", "name", rm.Workflow(name=f"w-{tag}")),
        "users": (rackn.UsersApi, "user", "name", rm.User(name=f"u-{tag}")),
        "roles": (rackn.RolesApi, "role", "name", rm.Role(name=f"r-{tag}", claims=[])),
    }[kind]


def _model_class(kind: str):
    return type(_new(kind, "x")[3])


def _text_field(kind: str) -> str:
    # a Job has no Description, a Lease neither (nor a Context)
    return next(f for f in ("Description", "Context", "NextServer") if f in MODELS[kind])


def test_our_models_are_rackn_models():
    """Each kind's field list is exactly the client's (attribute_map: the JSON names)."""
    for kind in MODELS:
        cls = _model_class(kind)
        assert set(MODELS[kind]) == set(cls.attribute_map.values()), kind
    for name, spec in NESTED.items():
        if name != "ContentMetaData":
            assert set(spec) == set(getattr(rm, name).attribute_map.values()), name


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_kind_through_rackn_client(drppy, kind):
    machine_uuid = ""
    if kind == "jobs":
        machine_uuid = drppy.api(rackn.MachinesApi).create_machine(
            rm.Machine(name="job-host")).uuid
    api_cls, stem, key_attr, new = _new(kind, "c", machine_uuid)
    api, cls = drppy.api(api_cls), type(new)  # cls: RackN's model class
    call = lambda verb, *a: getattr(api, f"{verb}_{stem}")(*a)  # noqa: E731
    before = datetime.now(timezone.utc) - timedelta(seconds=1)

    created = call("create", new)  # the reply parses as RackN's model (required fields there)
    key = getattr(created, key_attr)
    assert key
    raw = drppy.http.get(f"/{kind}/{key}").json()
    # every field of the model, with its zero value unless the client set it or the server keeps it
    assert set(raw) == set(MODELS[kind]) - HIDDEN.get(kind, set()), kind
    sent = {cls.attribute_map[a] for a in cls.swagger_types if getattr(new, a) is not None}
    for name, code in MODELS[kind].items():
        if (kind, name) == ("machines", "Secret"):  # generated, as dr-provision does
            assert isinstance(raw[name], str) and len(raw[name]) >= 16, raw[name]
        elif name in raw and name not in sent and name not in SERVER_FIELDS and \
                name not in (created.attribute_map[key_attr], "Roles"):
            assert raw[name] == DEFAULTS.get(kind, {}).get(name, zero(code)), (kind, name)
    assert (raw["Validated"], raw["Available"], raw["Errors"], raw["ReadOnly"]) == \
        (True, True, [], False)
    assert (raw["Bundle"], raw["Endpoint"]) == ("", "")
    assert raw["CreatedBy"] == raw["LastModifiedBy"] == AUTH[0]
    assert raw["CreatedAt"] == raw["LastModifiedAt"] and raw["CreatedAt"].endswith("Z")
    assert datetime.fromisoformat(raw["CreatedAt"]) >= before

    got = call("get", key)
    assert got == created
    assert key in [getattr(o, key_attr) for o in getattr(api, f"list_{stem}s")()]

    # JSON Patch on the new object: `test` then `replace` of a field it never sent (dr-provision
    # answers 200: the field is there, with its zero value)
    text = _text_field(kind)
    patched = call("patch", [rm.Operation(op="test", path=f"/{text}", value=""),
                             rm.Operation(op="replace", path=f"/{text}", value="patched")], key)
    assert getattr(patched, _attr(cls, text)) == "patched"
    with pytest.raises(ApiException) as failed:  # a failing test op: 409, nothing changed
        call("patch", [rm.Operation(op="test", path=f"/{text}", value="other"),
                       rm.Operation(op="replace", path=f"/{text}", value="no")], key)
    assert failed.value.status == 409
    assert getattr(call("get", key), _attr(cls, text)) == "patched"

    # PUT what GET gave, edited (the client re-encodes CreatedAt: the same instant is accepted)
    edited = call("get", key)
    setattr(edited, _attr(cls, text), "put")
    updated = call("put", edited, key)
    assert getattr(updated, _attr(cls, text)) == "put"
    assert updated.created_at == created.created_at
    assert updated.last_modified_at >= patched.last_modified_at > created.created_at

    # a server-kept field: another value is refused (422 ValidationError naming it)
    for op_path, value in (("/CreatedBy", "mallory"), ("/ReadOnly", True),
                           ("/CreatedAt", "2001-01-01T00:00:00Z"), ("/Errors", ["x"])):
        with pytest.raises(ApiException) as refused:
            call("patch", [rm.Operation(op="replace", path=op_path, value=value)], key)
        body = error_body(refused.value)
        assert refused.value.status == 422 and body["Type"] == "ValidationError", body
        assert any(m.startswith(f"{op_path[1:]} is read-only") for m in body["Messages"]), body
    edited = call("get", key)
    edited.bundle = "someone-else"
    with pytest.raises(ApiException) as refused:
        call("put", edited, key)
    assert "Bundle is read-only" in error_body(refused.value)["Messages"][0]

    if kind == "users":  # the password hash and secret are never served
        for reply in (drppy.http.get("/users").json(), [drppy.http.get(f"/users/{key}").json()]):
            assert all("PasswordHash" not in u and "Secret" not in u for u in reply)

    deleted = call("delete", key)
    assert getattr(deleted, key_attr) == key
    with pytest.raises(ApiException) as gone:
        call("get", key)
    assert gone.value.status == 404 and error_body(gone.value)["Type"] == "NotFound"


def _attr(cls, json_name: str) -> str:
    return {v: k for k, v in cls.attribute_map.items()}[json_name]


def test_wrong_type_in_a_nested_model_is_422(drppy):
    r = drppy.http.post("/machines", json={"Name": "nested", "Fingerprint": {"MemoryIds": 7}})
    assert r.status_code == 422, r.text
    assert r.json()["Messages"] == ["Fingerprint.MemoryIds must be a list of strings, not integer"]
    r = drppy.http.post("/bootenvs", json={"Name": "be-os", "OS": {"Name": "centos"}})
    assert r.status_code == 201, r.text
    assert r.json()["OS"] == {**zero("OsInfo"), "Name": "centos"}  # completed to its model
    drppy.http.delete("/bootenvs/be-os")
    # nested models in lists: each checked, and completed to its model
    r = drppy.http.post("/subnets", json={"Name": "opts", "Subnet": "10.8.0.0/24",
                                          "Options": [{"Code": 3}, {"Code": "x"}, 5]})
    assert r.status_code == 422, r.text
    assert r.json()["Messages"] == ["Options[1].Code must be an integer, not string",
                                    "Options[2] must be a DhcpOption object, not integer"]
    subnet = drppy.api(rackn.SubnetsApi).create_subnet(rm.Subnet(
        name="opts", subnet="10.8.0.0/24", active_start="10.8.0.10", active_end="10.8.0.20",
        active_lease_time=60, reserved_lease_time=7200, enabled=False, next_server="",
        only_reservations=False, pickers=[], proxy=False, strategy="MAC", unmanaged=False,
        options=[rm.DhcpOption(code=3, value="10.8.0.1")]))
    assert (subnet.options[0].code, subnet.options[0].value) == (3, "10.8.0.1")
    r = drppy.http.patch("/subnets/opts", json=[{"op": "add", "path": "/Options/-",
                                                  "value": {"Code": 6}}])
    assert r.status_code == 200 and r.json()["Options"][1] == {"Code": 6, "Value": ""}, r.text
    drppy.http.delete("/subnets/opts")


OLD_MACHINE = '{"Name": "old", "Uuid": "3f1c0a52-8d1e-4a55-9f77-5f1e7d0f3a11", ' \
              '"Runnable": true, "Params": {}, "Meta": {}, "Validated": true}'


def test_objects_stored_before_full_models_are_completed_at_open(tmp_path):
    Store(tmp_path / "drp.db").close()
    conn = sqlite3.connect(str(tmp_path / "drp.db"))
    key = json.loads(OLD_MACHINE)["Uuid"]
    conn.execute("INSERT INTO objects (kind, key, body, name) VALUES ('machines', ?, ?, 'old')",
                 (key, OLD_MACHINE))
    conn.execute("INSERT INTO changes VALUES (1, 1, 0.0, 'machines', ?, 'create', ?, NULL)",
                 (key, OLD_MACHINE))
    conn.commit()
    conn.close()

    def stored():
        db = sqlite3.connect(str(tmp_path / "drp.db"))
        try:
            return (db.execute("SELECT body FROM objects WHERE key=?", (key,)).fetchone()[0],
                    db.execute("SELECT body FROM changes WHERE seq=1").fetchone()[0])
        finally:
            db.close()
    Store(tmp_path / "drp.db").close()
    once = stored()
    body = json.loads(once[0])
    assert list(body) == list(MODELS["machines"])  # every field, in the model's order
    assert body == complete("machines", json.loads(OLD_MACHINE))
    assert (body["Runnable"], body["Available"], body["Description"], body["Profiles"]) == \
        (True, True, "", [])
    assert body["CreatedAt"] == "0001-01-01T00:00:00Z"  # unknown: Go's zero time
    assert once[1] == once[0]  # the change log replays to the same bytes
    Store(tmp_path / "drp.db").close()
    assert stored() == once  # opened twice: the same bytes


@pytest.fixture
def cluster(tmp_path):
    seed_root, token = make_token(tmp_path)
    c = Cluster(tmp_path, token, seed_root)
    yield c
    c.stop_all()


def test_a_passive_serves_the_active_bytes(cluster):
    a = cluster.node("a", passive=False)
    b = cluster.node("b", passive=True)
    wait_in_sync(a, cluster.token, 1)
    with http(a, cluster.token) as ca, http(b, cluster.token) as cb:
        made = ca.post("/machines", json={"Name": "both", "Tasks": ["t1"]})
        assert made.status_code == 201, made.text
        key = made.json()["Uuid"]
        ca.patch(f"/machines/{key}", json=[{"op": "replace", "path": "/Description",
                                             "value": "d"}]).raise_for_status()
        for path in (f"/machines/{key}", "/users/rocketskates", "/roles/superuser"):
            ra, rb = ca.get(path), cb.get(path)
            assert ra.status_code == rb.status_code == 200
            assert ra.content == rb.content, path
        assert set(ca.get("/roles/superuser").json()) == set(MODELS["roles"])


def test_content_bundle_record_and_objects_are_full_models(drppy):
    bundle = {"meta": {"Name": "cm", "Version": "v1"},
              "sections": {"profiles": {"cp": {"Description": "from a bundle",
                                               "CreatedBy": "whoever", "ReadOnly": False}}}}
    r = drppy.http.post("/contents", json=bundle)
    assert r.status_code == 201, r.text
    try:
        summaries = drppy.api(rackn.ContentsApi).list_contents()  # parses as ContentSummary
        [mine] = [s for s in summaries if s.meta.name == "cm"]
        assert (mine.meta.version, mine.meta.writable, mine.meta.author) == ("v1", False, "")
        [raw] = [s for s in drppy.http.get("/contents").json() if s["meta"]["Name"] == "cm"]
        assert set(raw["meta"]) == set(rm.ContentMetaData.attribute_map.values())
        # a bundle's objects: full models; the server's fields are the server's (bundle-owned)
        profile = drppy.api(rackn.ProfilesApi).get_profile("cp")
        assert (profile.read_only, profile.bundle, profile.created_by) == (True, "cm", AUTH[0])
        assert set(drppy.http.get("/profiles/cp").json()) == set(MODELS["profiles"])
    finally:
        drppy.http.delete("/contents/cm")


def test_role_claims_are_rackn_claims(drppy):
    roles = drppy.api(rackn.RolesApi)
    made = roles.create_role(rm.Role(name="readers", claims=[
        rm.Claim(scope="machines", action="get,list", specific="*")]))
    assert (made.claims[0].scope, made.claims[0].action) == ("machines", "get,list")
    raw = drppy.http.get("/roles/readers").json()
    assert raw["Claims"] == [{"action": "get,list", "scope": "machines", "specific": "*"}]
    # drp's old spelling is still accepted, and stored as dr-provision's
    r = drppy.http.post("/roles", json={"Name": "old-spelling", "Claims": [
        {"Scope": "profiles", "Action": "get", "Specific": "p1"}]})
    assert r.status_code == 201, r.text
    assert r.json()["Claims"] == [{"action": "get", "scope": "profiles", "specific": "p1"}]
    # and the claims are in force: a user holding the role reads machines, not profiles
    users = drppy.api(rackn.UsersApi)
    users.create_user(rm.User(name="reader", roles=["readers"]))
    drppy.http.put("/users/reader/password", json={"password": "pw"}).raise_for_status()
    with drppy.server.client(auth=("reader", "pw")) as reader:
        assert reader.get("/machines").status_code == 200
        assert reader.get("/profiles").status_code == 403
    for path in ("/users/reader", "/roles/readers", "/roles/old-spelling"):
        drppy.http.delete(path)


OLD_ROLE = '{"Name": "old-role", "Claims": [{"Scope": "machines", "Action": "*", ' \
           '"Specific": "*"}], "Validated": true}'


def test_old_role_claims_are_migrated_at_open(tmp_path):
    Store(tmp_path / "drp.db").close()
    conn = sqlite3.connect(str(tmp_path / "drp.db"))
    conn.execute("INSERT INTO objects (kind, key, body) VALUES ('roles', 'old-role', ?)",
                 (OLD_ROLE,))
    conn.commit()
    conn.close()
    Store(tmp_path / "drp.db").close()
    conn = sqlite3.connect(str(tmp_path / "drp.db"))
    body = json.loads(conn.execute("SELECT body FROM objects WHERE key='old-role'").fetchone()[0])
    conn.close()
    assert body["Claims"] == [{"action": "*", "scope": "machines", "specific": "*"}]
    assert list(body) == list(MODELS["roles"])
