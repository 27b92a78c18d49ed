"""The HTTPS object API: CRUD for every kind, validation, errors, auth, /info and /ws."""
from __future__ import annotations

import base64
import json
import ssl
import time
import uuid
import zlib

import httpx
import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from drp.models import KINDS
from tests.drpserver import AUTH

ERROR_KEYS = {"Model", "Key", "Type", "Messages", "Code"}


def assert_error(resp: httpx.Response, code: int, model: str | None = None,
                 key: str | None = None) -> dict:
    assert resp.status_code == code, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == ERROR_KEYS, body
    assert body["Code"] == code
    assert isinstance(body["Messages"], list) and body["Messages"], body
    assert all(isinstance(m, str) and m for m in body["Messages"])
    if model is not None:
        assert body["Model"] == model, body
    if key is not None:
        assert body["Key"] == key, body
    return body


@pytest.fixture(scope="module")
def server(module_drp):
    return module_drp


@pytest.fixture(scope="module")
def api(server):
    with server.client() as c:
        yield c


def sample(kind: str, n: str) -> dict:
    """A valid new object of `kind`, unique by `n`."""
    return {
        "machines": {"Name": f"m-{n}", "Address": "10.0.0.7"},
        "jobs": {"Machine": str(uuid.uuid4()), "State": "created"},
        "profiles": {"Name": f"p-{n}", "Params": {"a": 1}},
        "params": {"Name": f"param-{n}", "Schema": {"type": "string"}},
        "subnets": {"Name": f"s-{n}", "Subnet": "10.9.0.0/24", "ActiveStart": "10.9.0.10",
                    "ActiveEnd": "10.9.0.20", "ActiveLeaseTime": 60},
        "reservations": {"Addr": f"10.8.{zlib.crc32(n.encode()) % 250}.{len(n) % 250 + 1}",
                         "Token": "aa:bb:cc:dd:ee:ff"},
        "leases": {"Addr": f"10.7.{zlib.crc32(n.encode()) % 250}.{len(n) % 250 + 1}",
                   "Token": "aa:bb:cc:dd:ee:01", "State": "ACK",
                   "ExpireTime": "2030-01-01T00:00:00Z"},
        "bootenvs": {"Name": f"be-{n}", "Kernel": "vmlinuz", "Initrds": []},
        "stages": {"Name": f"st-{n}", "Tasks": []},
        "tasks": {"Name": f"t-{n}", "Templates": []},
        "templates": {"ID": f"tmpl-{n}", "Contents": "hello {{.Machine.Name}}"},
        "workflows": {"Name": f"wf-{n}", "Stages": []},
        "users": {"Name": f"u-{n}", "Password": "pw-" + n},
        "roles": {"Name": f"r-{n}", "Claims": [{"scope": "machines", "action": "get",
                                                "specific": "*"}]},  # dr-provision's Claim
    }[kind]


def test_every_kind_has_a_sample():
    assert set(KINDS) == {"machines", "jobs", "profiles", "params", "subnets", "reservations",
                          "leases", "bootenvs", "stages", "tasks", "templates", "workflows", "users",
                          "roles"}  # prefs is no kind: /prefs is a flat map (drp.api.prefs)


# ---- CRUD -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crud(api, kind):
    k = KINDS[kind]
    new = sample(kind, f"crud-{kind}")
    r = api.post(f"/{kind}", json=new)
    assert r.status_code == 201, r.text
    created = r.json()
    key = created[k.key]
    assert isinstance(key, str) and key
    for field in ("Validated", "Available", "Errors", "ReadOnly", "Meta"):
        assert field in created, (field, created)
    assert created["Validated"] is True and created["Available"] is True
    assert created["Errors"] == [] and created["ReadOnly"] is False
    for name, value in new.items():
        if name != "Password":
            assert created[name] == value
    assert "PasswordHash" not in created and "Password" not in created
    # a machine's Secret is a field of dr-provision's Machine (token revocation); a user's is hidden
    assert ("Secret" in created) == (kind == "machines")

    # duplicate
    dup = {**new, k.key: key}
    assert_error(api.post(f"/{kind}", json=dup), 409, kind, key)

    # GET / HEAD
    assert api.get(f"/{kind}/{key}").json() == created
    r = api.head(f"/{kind}/{key}")
    assert r.status_code == 200 and r.content == b""

    # list with a filter on the key field, and HEAD with X-DRP-List-Count
    r = api.get(f"/{kind}", params={k.key: key})
    assert r.status_code == 200 and r.json() == [created]
    assert r.headers["X-DRP-List-Count"] == "1"
    r = api.head(f"/{kind}", params={k.key: key})
    assert r.status_code == 200 and r.content == b"" and r.headers["X-DRP-List-Count"] == "1"
    assert api.get(f"/{kind}", params={k.key: key + "-nope"}).json() == []
    assert api.head(f"/{kind}", params={k.key: key + "-nope"}).headers["X-DRP-List-Count"] == "0"

    # PUT replaces the object (a text field of the model: a Job has no Description, a Lease
    # neither; a field outside the model would be dropped, as dr-provision's decoding does)
    txt = next(f for f in ("Description", "Context", "Via") if f in k.fields)
    replaced = {**{n: v for n, v in new.items() if n != "Password"}, k.key: key,
                txt: "replaced"}
    r = api.put(f"/{kind}/{key}", json=replaced)
    assert r.status_code == 200, r.text
    assert r.json()[txt] == "replaced"
    assert api.get(f"/{kind}/{key}").json()[txt] == "replaced"
    r = api.put(f"/{kind}/{key}", json={n: v for n, v in replaced.items() if n != txt})
    # a field left out of a PUT is back to its zero value (every field of the model is served)
    assert r.status_code == 200
    assert r.json()[txt] == ""
    assert api.get(f"/{kind}/{key}").json() == r.json()

    # PATCH (RFC 6902), including a passing test op
    r = api.patch(f"/{kind}/{key}", json=[
        {"op": "test", "path": f"/{k.key}", "value": key},
        {"op": "add", "path": f"/{txt}", "value": "patched"},
        {"op": "add", "path": "/Meta/color", "value": "blue"}])
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched[txt] == "patched" and patched["Meta"]["color"] == "blue"
    assert api.get(f"/{kind}/{key}").json() == patched

    # a failing test op refuses the whole patch with 409 and changes nothing
    r = api.patch(f"/{kind}/{key}", json=[
        {"op": "replace", "path": f"/{txt}", "value": "must not stick"},
        {"op": "test", "path": "/Meta/color", "value": "red"}])
    assert_error(r, 409, kind, key)
    assert api.get(f"/{kind}/{key}").json() == patched

    # DELETE returns the object; afterwards everything is 404
    r = api.delete(f"/{kind}/{key}")
    assert r.status_code == 200 and r.json() == patched
    assert_error(api.get(f"/{kind}/{key}"), 404, kind, key)
    assert api.head(f"/{kind}/{key}").status_code == 404
    assert_error(api.delete(f"/{kind}/{key}"), 404, kind, key)
    assert_error(api.put(f"/{kind}/{key}", json=replaced), 404, kind, key)
    assert_error(api.patch(f"/{kind}/{key}", json=[]), 404, kind, key)
    assert api.get(f"/{kind}", params={k.key: key}).json() == []
    # the key is free again
    assert api.post(f"/{kind}", json=dup).status_code == 201
    assert api.delete(f"/{kind}/{key}").status_code == 200


def test_unknown_kind_is_404(api):
    assert_error(api.get("/gizmos"), 404, "gizmos")
    assert_error(api.get("/gizmos/x"), 404, "gizmos")
    assert_error(api.post("/gizmos", json={"Name": "x"}), 404, "gizmos")


def test_list_filters_and_count(api):
    made = []
    for i, (runnable, task) in enumerate([(True, 1), (True, 2), (False, 2)]):
        r = api.post("/machines", json={"Name": f"filt-{i}", "Runnable": runnable,
                                        "CurrentTask": task, "Context": "filt",
                                        "Meta": {"rack": f"r{i % 2}"}})
        assert r.status_code == 201
        made.append(r.json()["Uuid"])
    try:
        def names(**params):
            r = api.get("/machines", params=params)
            assert r.headers["X-DRP-List-Count"] == str(len(r.json()))
            assert api.head("/machines", params=params).headers["X-DRP-List-Count"] == \
                str(len(r.json()))
            return sorted(m["Name"] for m in r.json())
        assert names(Context="filt") == ["filt-0", "filt-1", "filt-2"]
        assert names(Context="filt", Runnable="true") == ["filt-0", "filt-1"]
        assert names(Context="filt", Runnable="false") == ["filt-2"]
        assert names(Context="filt", CurrentTask="2") == ["filt-1", "filt-2"]
        assert names(Context="filt", CurrentTask="2", Runnable="true") == ["filt-1"]
        assert names(Name="filt-2") == ["filt-2"]
        assert names(Context="nothing-like-this") == []
        assert len(api.get("/machines", params={"Context": "filt", "limit": 2}).json()) == 2
        assert names(Context="filt", **{"Meta.rack": "r0"}) == ["filt-0", "filt-2"]
        # dr-provision answers a list query it cannot use 406 (was 400 here before issue 16)
        assert_error(api.get("/machines", params={"limit": "lots"}), 406)
        for bad in ("", ".Name", "Name[0", 'Na"me', "Meta..rack"):  # not a 500
            assert_error(api.get("/machines", params={bad: "x"}), 406, "machines")
    finally:
        for key in made:
            api.delete(f"/machines/{key}")


# ---- validation -------------------------------------------------------------------------------
def test_machine_uuid_generated_or_kept(api):
    r = api.post("/machines", json={"Name": "gen-uuid"})
    assert r.status_code == 201
    key = r.json()["Uuid"]
    assert uuid.UUID(key).version == 4
    mine = str(uuid.uuid4())
    r = api.post("/machines", json={"Name": "own-uuid", "Uuid": mine})
    assert r.status_code == 201 and r.json()["Uuid"] == mine
    assert api.get(f"/machines/{mine}").json()["Name"] == "own-uuid"
    # another machine may not take the same Name
    assert_error(api.post("/machines", json={"Name": "own-uuid"}), 409, "machines")
    assert_error(api.post("/machines", json={"Name": "bad", "Uuid": "not-a-uuid"}), 422)
    api.delete(f"/machines/{key}")
    api.delete(f"/machines/{mine}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_required_field_is_422(api, kind):
    k = KINDS[kind]
    required = k.required[0]
    obj = {n: v for n, v in sample(kind, "req").items() if n != required}
    count = int(api.head(f"/{kind}").headers["X-DRP-List-Count"])
    body = assert_error(api.post(f"/{kind}", json=obj), 422, kind)
    assert body["Type"] == "ValidationError"
    assert any(required in m for m in body["Messages"]), body
    assert int(api.head(f"/{kind}").headers["X-DRP-List-Count"]) == count  # nothing stored


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_wrong_types_are_422_and_all_listed(api, kind):
    obj = {**sample(kind, "types"), "Params": "not-an-object", "Meta": ["no"]}
    body = assert_error(api.post(f"/{kind}", json=obj), 422, kind)
    text = " ".join(body["Messages"])
    assert "Meta" in text, body
    assert ("Params" in text) == ("Params" in KINDS[kind].fields), body  # a field of its model?
    key = obj.get(KINDS[kind].key)
    if key:
        assert api.head(f"/{kind}/{key}").status_code == 404


@pytest.mark.parametrize("kind, obj, field", [
    ("machines", {"Name": 7}, "Name"),
    ("machines", {"Name": "x", "Runnable": "yes"}, "Runnable"),
    ("machines", {"Name": "x", "CurrentTask": True}, "CurrentTask"),
    ("machines", {"Name": "x", "Address": "not-an-ip"}, "Address"),
    ("subnets", {"Name": "x", "Subnet": "10.0.0.0/99"}, "Subnet"),
    ("subnets", {"Name": "x", "Subnet": "10.0.0.0/24", "ActiveLeaseTime": "60"},
     "ActiveLeaseTime"),
    ("workflows", {"Name": "x", "Stages": "discover"}, "Stages"),
    ("templates", {"ID": "x", "Contents": 5}, "Contents"),
    ("jobs", {"Machine": "m", "State": "sleeping"}, "State"),
    ("profiles", {"Name": "a/b"}, "Name"),
    ("users", {"Name": "x", "Password": 1234}, "Password"),
    ("users", {"Name": "x", "Roles": "superuser"}, "Roles"),
])
def test_field_validation(api, kind, obj, field):
    body = assert_error(api.post(f"/{kind}", json=obj), 422, kind)
    assert any(field in m for m in body["Messages"]), body


def test_bodies_that_are_not_objects(api):
    api.post("/profiles", json={"Name": "shape"})
    try:
        assert_error(api.post("/profiles", json=["Name"]), 422, "profiles")
        assert_error(api.post("/profiles", content=b"{nope"), 400, "profiles")
        assert_error(api.put("/profiles/shape", json=[1]), 422, "profiles")
        assert_error(api.put("/profiles/shape", json={"Name": "other"}), 422, "profiles")
        assert_error(api.put("/users/rocketskates", json="abc"), 422, "users")
        assert_error(api.patch("/profiles/shape", json={"op": "add"}), 400, "profiles")
        assert_error(api.patch("/profiles/shape", json=[{"op": "remove", "path": "/nope"}]),
                     422, "profiles")
        assert_error(api.patch("/profiles/shape",
                               json=[{"op": "replace", "path": "/Name", "value": "x"}]),
                     422, "profiles")
        assert_error(api.patch("/profiles/shape",
                               json=[{"op": "replace", "path": "/Params", "value": 1}]),
                     422, "profiles")
        assert api.get("/profiles/shape").json()["Params"] == {}
    finally:
        api.delete("/profiles/shape")


def test_server_owned_fields_are_refused(api):
    # dr-provision refuses a client's value for a field the server keeps (this test asserted,
    # before issue 16, that they were silently recomputed)
    body = assert_error(api.post("/profiles", json={"Name": "owned", "ReadOnly": True,
                                                    "Errors": ["x"], "Bundle": "b"}), 422)
    assert body["Type"] == "ValidationError"
    for name in ("ReadOnly", "Errors", "Bundle"):
        assert any(m.startswith(f"{name} is read-only") for m in body["Messages"]), body
    r = api.post("/profiles", json={"Name": "owned", "ReadOnly": False, "Validated": False,
                                    "Available": False})
    assert r.status_code == 201  # zero values are what a fresh client model sends
    obj = r.json()
    assert (obj["ReadOnly"], obj["Validated"], obj["Available"], obj["Errors"]) == \
        (False, True, True, [])
    # ... so the client cannot lock it either: it can still be changed and deleted
    assert_error(api.patch("/profiles/owned", json=[
        {"op": "replace", "path": "/ReadOnly", "value": True}]), 422, "profiles", "owned")
    assert api.put("/profiles/owned", json=obj).status_code == 200  # the values it has: fine
    assert api.delete("/profiles/owned").status_code == 200


# ---- users and passwords ----------------------------------------------------------------------
def test_password_hashes_are_never_returned(server, api):
    r = api.post("/users", json={"Name": "hidden", "Password": "s3cret", "Roles": ["superuser"]})
    assert r.status_code == 201
    responses = [r, api.get("/users/hidden"), api.get("/users"),
                 api.put("/users/hidden", json={"Name": "hidden", "Description": "d"}),
                 api.patch("/users/hidden", json=[{"op": "add", "path": "/Description",
                                                   "value": "e"}]),
                 api.put("/users/hidden/password", json={"password": "n3w"}),
                 api.get("/users/hidden/token"),
                 api.get("/users", params={"Name": "hidden"})]
    for resp in responses:
        assert resp.status_code == 200 or resp.status_code == 201, resp.text
        text = resp.text
        assert "PasswordHash" not in text and "Secret" not in text and "scrypt" not in text, text
    # a client cannot set a hash: the field is dropped and the password still works
    evil = api.patch("/users/hidden", json=[{"op": "add", "path": "/PasswordHash",
                                             "value": "scrypt$1$1$1$00$00"}])
    assert evil.status_code == 200 and "PasswordHash" not in evil.json()
    api.put("/users/hidden", json={"Name": "hidden", "PasswordHash": "x", "Secret": "y"})
    with server.client(auth=("hidden", "n3w")) as c:
        assert c.get("/info").status_code == 200
    gone = api.delete("/users/hidden")
    assert gone.status_code == 200 and "PasswordHash" not in gone.text


def test_change_password(server, api):
    assert api.post("/users", json={"Name": "bob", "Password": "old-pw"}).status_code == 201
    with server.client(auth=("bob", "old-pw")) as bob:
        assert bob.get("/info").status_code == 200
        old_token = bob.get("/users/bob/token").json()["Token"]
    with server.client(token=old_token) as c:
        assert c.get("/machines").status_code == 200
        # bob changes his own password with his token
        r = c.put("/users/bob/password", json={"password": "new-pw"})
        assert r.status_code == 200, r.text
        assert_error(c.get("/machines"), 401)  # tokens made before the change are revoked
    with server.client(auth=("bob", "old-pw")) as c:
        assert_error(c.get("/info"), 401)
    with server.client(auth=("bob", "new-pw")) as c:
        assert c.get("/info").status_code == 200
        new_token = c.get("/users/bob/token").json()["Token"]
    with server.client(token=new_token) as c:
        assert c.get("/info").status_code == 200
    assert_error(api.put("/users/bob/password", json={"password": ""}), 422, "users")
    assert_error(api.put("/users/nobody/password", json={"password": "x"}), 404, "users")
    api.delete("/users/bob")
    with server.client(token=new_token) as c:
        assert_error(c.get("/info"), 401)  # a deleted user's token dies with the user


def test_default_user_cannot_delete_itself(api):
    assert_error(api.delete("/users/rocketskates"), 409, "users", "rocketskates")
    assert api.get("/users/rocketskates").status_code == 200


# ---- authentication ---------------------------------------------------------------------------
def raw_get(server, headers=None, auth=None) -> httpx.Response:
    return httpx.get(server.url + "/api/v3/machines", headers=headers or {}, auth=auth,
                     verify=False, timeout=10)


def test_401_without_auth(server):
    for path in ("/api/v3/info", "/api/v3/machines", "/api/v3/users/rocketskates/token",
                 "/api/v3/nosuchkind"):
        r = httpx.get(server.url + path, verify=False, timeout=10)
        assert_error(r, 401)
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert_error(httpx.post(server.url + "/api/v3/machines", json={"Name": "sneaky"},
                            verify=False, timeout=10), 401)
    with server.client() as c:
        assert c.get("/machines", params={"Name": "sneaky"}).json() == []


@pytest.mark.parametrize("auth", [("rocketskates", "wrong"), ("nobody", "r0cketsk8ts"),
                                  ("rocketskates", ""), ("", "")])
def test_401_bad_password(server, auth):
    assert_error(raw_get(server, auth=auth), 401)


@pytest.mark.parametrize("header", ["Bearer garbage", "Bearer a.b", "Bearer ...",
                                    "Bearer eyJ1IjoiYm9iIn0.xx", "Basic !!!notbase64",
                                    "Digest abc", "Bearer"])
def test_401_garbled_credentials(server, header):
    assert_error(raw_get(server, headers={"Authorization": header}), 401)


def test_401_tampered_token(server, api):
    token = api.get("/users/rocketskates/token").json()["Token"]
    payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 10**6
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert raw_get(server, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert_error(raw_get(server, headers={"Authorization": f"Bearer {forged}.{sig}"}), 401)
    assert_error(raw_get(server, headers={"Authorization": f"Bearer {token[:-2]}"}), 401)


def test_token_expires(server, api):
    r = api.get("/users/rocketskates/token", params={"ttl": "1s"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"Token", "Info"} and body["Info"]["id"]
    token = body["Token"]
    assert raw_get(server, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert body["Expires"] - time.time() <= 2  # 1s, rounded up to a whole second at most
    time.sleep(max(0.0, body["Expires"] - time.time()) + 0.1)
    err = assert_error(raw_get(server, headers={"Authorization": f"Bearer {token}"}), 401)
    assert "expired" in " ".join(err["Messages"])


def test_token_ttl_forms(server, api):
    for ttl in ("30", "30s", "10m", "3h", "7d", "3y"):
        r = api.get("/users/rocketskates/token", params={"ttl": ttl})
        assert r.status_code == 200, (ttl, r.text)
        assert raw_get(server, headers={"Authorization": f"Bearer {r.json()['Token']}"}) \
            .status_code == 200
    assert_error(api.get("/users/rocketskates/token", params={"ttl": "forever"}), 400, "users")
    assert_error(api.get("/users/nobody/token"), 404, "users")


def test_foreign_token_is_refused(server, api, drp_factory):
    other = drp_factory("foreign")
    with other.client() as c:
        foreign = c.get("/users/rocketskates/token", params={"ttl": "1h"}).json()["Token"]
        assert c.get("/info", headers={"Authorization": f"Bearer {foreign}"}).status_code == 200
    err = assert_error(raw_get(server, headers={"Authorization": f"Bearer {foreign}"}), 401)
    assert err["Type"] == "AUTH_ERROR"
    other.stop()


def test_non_superuser_cannot_mint_others_tokens(server, api):
    api.post("/users", json={"Name": "limited", "Password": "pw", "Roles": []})
    try:
        with server.client(auth=("limited", "pw")) as c:
            assert c.get("/users/limited/token").status_code == 200
            assert_error(c.get("/users/rocketskates/token"), 403, "users")
            assert_error(c.put("/users/rocketskates/password", json={"password": "x"}), 403)
    finally:
        api.delete("/users/limited")


# ---- /info ------------------------------------------------------------------------------------
def test_info(server, api):
    info = api.get("/info").json()
    expected = {"arch", "os", "version", "id", "local_id", "ha_id", "api_port", "file_port",
                "address", "ha_enabled", "ha_is_active", "ha_status", "ha_virtual_address",
                "ha_active_id", "ha_passive_state", "stats"}
    assert expected <= set(info), expected - set(info)
    assert info["os"] == "linux" and info["arch"] in ("amd64", "arm64", "arm", "386",
                                                       "ppc64le", "s390x")
    assert info["version"].startswith("v")
    assert info["id"] and info["local_id"] == info["id"]
    assert info["ha_active_id"] == info["id"]
    assert info["api_port"] == server.api_port and info["file_port"] == server.static_port
    assert info["ha_enabled"] is False and info["ha_is_active"] is True
    assert info["ha_id"] == "" and info["ha_virtual_address"] == ""
    assert isinstance(info["ha_status"], str) and isinstance(info["ha_passive_state"], list)
    # dr-provision's stats are a list of {name, count} (Stat.md), not a map
    def counts(info):
        return {s["name"]: s["count"] for s in info["stats"]}
    before = counts(info)["machines.count"]
    r = api.post("/machines", json={"Name": "counted"})
    assert counts(api.get("/info").json())["machines.count"] == before + 1
    api.delete(f"/machines/{r.json()['Uuid']}")
    assert counts(api.get("/info").json())["machines.count"] == before
    assert counts(info)["users.count"] >= 1


# ---- /api/v3/ws -------------------------------------------------------------------------------
def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _basic_header() -> tuple[bytes, bytes]:
    return (b"Authorization", b"Basic " + base64.b64encode(":".join(AUTH).encode()))


async def _sync(ws) -> None:
    """The server answers an unknown command in order, so its reply means every earlier
    message (the registrations) has been handled."""
    await ws.send_message("ping")
    reply = json.loads(await ws.get_message())
    assert "Error" in reply, reply


async def _call(server, method: str, path: str, body=None) -> httpx.Response:
    def go():
        with server.client() as c:
            return c.request(method, path, json=body)
    return await trio.to_thread.run_sync(go)


async def test_event_stream(server):
    url = server.url.replace("https://", "wss://") + "/api/v3/ws"
    with trio.fail_after(20):
        async with open_websocket_url(url, ssl_context=_insecure(),
                                      extra_headers=[_basic_header()]) as ws:
            await ws.send_message("register machines.*.*")
            await _sync(ws)
            # a profile is not a machine: no event for it
            assert (await _call(server, "POST", "/profiles", {"Name": "ws-p"})).status_code == 201
            r = await _call(server, "POST", "/machines", {"Name": "ws-m"})
            assert r.status_code == 201
            key = r.json()["Uuid"]
            event = json.loads(await ws.get_message())
            assert set(event) == {"Time", "Type", "Action", "Key", "Object"}, event
            assert (event["Type"], event["Action"], event["Key"]) == ("machines", "create", key)
            assert event["Object"]["Name"] == "ws-m" and event["Object"]["Uuid"] == key
            assert abs(event["Time"] - time.time()) < 60

            r = await _call(server, "PATCH", f"/machines/{key}",
                            [{"op": "add", "path": "/Description", "value": "d"}])
            assert r.status_code == 200
            event = json.loads(await ws.get_message())
            assert (event["Type"], event["Action"], event["Key"]) == ("machines", "update", key)
            assert event["Object"]["Description"] == "d"

            # a narrower pattern: only deletes of profiles, and only ws-p
            await ws.send_message("deregister machines.*.*")
            await ws.send_message("register profiles.delete.ws-p")
            await _sync(ws)
            await _call(server, "DELETE", f"/machines/{key}")
            await _call(server, "POST", "/profiles", {"Name": "ws-q"})
            await _call(server, "DELETE", "/profiles/ws-q")
            await _call(server, "DELETE", "/profiles/ws-p")
            event = json.loads(await ws.get_message())
            assert (event["Type"], event["Action"], event["Key"]) == ("profiles", "delete", "ws-p")


async def test_event_stream_hides_user_secrets(server):
    url = server.url.replace("https://", "wss://") + "/api/v3/ws"
    with trio.fail_after(20):
        async with open_websocket_url(url, ssl_context=_insecure(),
                                      extra_headers=[_basic_header()]) as ws:
            await ws.send_message("register users.*.*")
            await _sync(ws)
            await _call(server, "POST", "/users", {"Name": "ws-user", "Password": "pw"})
            raw = await ws.get_message()
            event = json.loads(raw)
            assert (event["Type"], event["Key"]) == ("users", "ws-user")
            assert "PasswordHash" not in raw and "Secret" not in raw and "scrypt" not in raw
            await _call(server, "DELETE", "/users/ws-user")


async def test_event_stream_needs_auth(server):
    url = server.url.replace("https://", "wss://") + "/api/v3/ws"
    with trio.fail_after(20):
        with pytest.raises(HandshakeError):
            async with open_websocket_url(url, ssl_context=_insecure()) as ws:
                await ws.send_message("register machines.*.*")
                await ws.get_message()
