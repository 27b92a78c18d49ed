"""Roles and claims (issue 18 item 2): every route is authorized against the caller's claims.

A claim-less user (Roles: []) is refused on every route family, yet may still read itself,
change its own password and get its own token; no claim short of */*/* lets a user create
users, change Roles, mint tokens for others or write a role that grants more than it holds.
"""
from __future__ import annotations

import base64
import json
import ssl
import uuid

import httpx
import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from drp import claims as c
from drp.api import rbac
from drp.api.app import create_app
from drp.api.errors import ApiError
from drp.config import load

PW = "pw-roles-1"


# ---- pure parts -------------------------------------------------------------------------------
def test_allowed_follows_scope_action_specific():
    got = c.compile_claims([{"Scope": "machines,profiles", "Action": "get, list",
                             "Specific": "*"},
                            {"Scope": "jobs", "Action": "*", "Specific": "a,b"}])
    assert c.allowed(got, "machines", "get", "x") and c.allowed(got, "profiles", "list")
    assert not c.allowed(got, "machines", "update", "x")
    assert not c.allowed(got, "users", "get", "x")
    assert c.allowed(got, "jobs", "delete", "b") and not c.allowed(got, "jobs", "delete", "c")
    assert c.allowed(got, "jobs", "list", "")  # a list: granted by a claim on some jobs
    assert not c.is_superuser(got)
    assert c.is_superuser(c.compile_claims([c.SUPERUSER_CLAIM]))
    assert not c.allowed(c.compile_claims([{"Scope": "", "Action": "*", "Specific": "*"}]),
                         "machines", "get", "x")


def test_user_claims_are_the_union_of_roles_plus_self():
    roles = [{"Claims": [{"Scope": "machines", "Action": "get", "Specific": "*"}]},
             {"Claims": [{"Scope": "profiles", "Action": "*", "Specific": "p1"}]}, None]
    got = c.user_claims("bob", roles)
    assert c.allowed(got, "machines", "get", "m") and c.allowed(got, "profiles", "delete", "p1")
    assert not c.allowed(got, "profiles", "delete", "p2")
    for action in ("get", "password", "token"):  # dr-provision's implicit self claim
        assert c.allowed(got, "users", action, "bob")
        assert not c.allowed(got, "users", action, "alice")
    assert not c.allowed(got, "users", "update", "bob")
    assert c.user_claims("nobody", []) == c.user_claims("nobody", [None])


def test_containment_needs_stars_held_as_stars():
    holder = c.compile_claims([{"Scope": "machines", "Action": "*", "Specific": "*"},
                               {"Scope": "roles", "Action": "get", "Specific": "*"}])
    assert c.contains(holder, [{"Scope": "machines", "Action": "get,update", "Specific": "u1"}])
    assert c.contains(holder, [{"Scope": "machines", "Action": "*", "Specific": "*"}])
    assert not c.contains(holder, [{"Scope": "*", "Action": "get", "Specific": "*"}])
    assert not c.contains(holder, [c.SUPERUSER_CLAIM])
    assert not c.contains(holder, [{"Scope": "roles", "Action": "*", "Specific": "*"}])


def test_every_route_has_an_authorization_rule(tmp_path):
    """Walks the real app's url_map: a route added without a rule fails here (and is refused
    to everyone at run time)."""
    from types import SimpleNamespace
    app = create_app(SimpleNamespace(store=None, cfg=load(["--base-root", str(tmp_path)], {})))
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints, "no routes?"
    assert endpoints - set(rbac.ROUTES) == set(), "routes without a rule in drp.api.rbac"
    superuser = c.user_claims("root", [c.BUILTIN_ROLES["superuser"]])
    nobody = c.user_claims("nobody", [])
    for rule in app.url_map.iter_rules():
        args = {name: "x" for name in rule.arguments}
        for method in rule.methods - {"OPTIONS"}:
            need = rbac.need_for(rule.endpoint, args, method, "nobody")
            rbac.check(superuser, need)  # a superuser may do everything
            if not need.anyone and not need.self_checked:
                with pytest.raises(ApiError) as e:
                    rbac.check(nobody, need)
                assert e.value.code == 403 and e.value.type == "AUTH_ERROR"
    with pytest.raises(ApiError) as e:  # an unmapped endpoint is refused, even to a superuser
        rbac.need_for("new_blueprint.new_route", {}, "GET", "root")
    assert e.value.code == 403


# ---- against a real server --------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(module_drp):
    return module_drp


@pytest.fixture(scope="module")
def api(server):
    with server.client() as cl:
        yield cl


def _user(api, name: str, roles: list[str]) -> None:
    r = api.post("/users", json={"Name": name, "Password": PW, "Roles": roles})
    assert r.status_code == 201, r.text


def _role(api, name: str, *claims: tuple[str, str, str]) -> None:
    body = {"Name": name, "Claims": [{"Scope": s, "Action": a, "Specific": sp}
                                     for s, a, sp in claims]}
    r = api.post("/roles", json=body)
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def users(server, api):
    """nobody: Roles []; machinist: machines/*/*; one: get,list,update on one machine;
    useradmin: users/*/*; roleadmin: roles/*/*; packer: contents/*/*."""
    m1 = api.post("/machines", json={"Name": "roles-m1"}).json()["Uuid"]
    m2 = api.post("/machines", json={"Name": "roles-m2"}).json()["Uuid"]
    _role(api, "machinist", ("machines", "*", "*"))
    _role(api, "one-machine", ("machines", "get,list,update", m1))
    _role(api, "useradmin", ("users", "*", "*"))
    _role(api, "roleadmin", ("roles", "*", "*"))
    _role(api, "packer", ("contents", "*", "*"))
    _user(api, "nobody", [])
    _user(api, "victim", [])
    for name in ("machinist", "useradmin", "roleadmin", "packer"):
        _user(api, name, [name])
    _user(api, "one", ["one-machine"])
    return {"m1": m1, "m2": m2}


def _as(server, name: str) -> httpx.Client:
    return server.client(auth=(name, PW))


def assert_forbidden(r: httpx.Response, scope: str | None = None) -> dict:
    assert r.status_code == 403, (r.request.method, r.request.url, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"Model", "Key", "Type", "Messages", "Code"}, body
    assert body["Code"] == 403 and body["Type"] == "AUTH_ERROR" and body["Messages"], body
    if scope is not None:
        assert body["Model"] == scope and scope in body["Messages"][0], body
    return body


def _object_routes(kind: str, key: str) -> list[tuple[str, str, object]]:
    return [("GET", f"/{kind}", None), ("HEAD", f"/{kind}", None),
            ("GET", f"/{kind}/{key}", None), ("HEAD", f"/{kind}/{key}", None),
            ("POST", f"/{kind}", {}), ("PUT", f"/{kind}/{key}", {}),
            ("PATCH", f"/{kind}/{key}", []), ("DELETE", f"/{kind}/{key}", None)]


def _every_route_family(m1: str) -> list[tuple[str, str, object, str]]:
    from drp.models import KINDS
    routes = []
    for kind in sorted(KINDS):
        key = {"machines": m1, "users": "victim", "roles": "superuser"}.get(
            kind, str(uuid.uuid4()) if KINDS[kind].generated_key else "k")
        routes += [(m, p, b, kind) for m, p, b in _object_routes(kind, key)]
    routes += [
        ("GET", "/users/victim/token", None, "users"),
        ("PUT", "/users/victim/password", {"password": "x"}, "users"),
        ("GET", "/files", None, "files"), ("GET", "/files/a.txt", None, "files"),
        ("POST", "/files/a.txt", b"x", "files"), ("DELETE", "/files/a.txt", None, "files"),
        ("GET", "/isos", None, "isos"), ("GET", "/isos/a.iso", None, "isos"),
        ("POST", "/isos/a.iso", b"x", "isos"), ("DELETE", "/isos/a.iso", None, "isos"),
        ("GET", "/plugin_providers", None, "plugin_providers"),
        ("GET", "/plugin_providers/p", None, "plugin_providers"),
        ("GET", "/plugin_providers/p/binary", None, "plugin_providers"),
        ("POST", "/plugin_providers/p", b"x", "plugin_providers"),
        ("DELETE", "/plugin_providers/p", None, "plugin_providers"),
        ("GET", f"/jobs/{uuid.uuid4()}/log", None, "jobs"),
        ("PUT", f"/jobs/{uuid.uuid4()}/log", b"x", "jobs"),
        ("GET", "/contents", None, "contents"), ("GET", "/contents/b", None, "contents"),
        ("POST", "/contents", {"meta": {"Name": "b"}}, "contents"),
        ("PUT", "/contents/b", {"meta": {"Name": "b"}}, "contents"),
        ("DELETE", "/contents/b", None, "contents"),
        ("POST", "/system/active", None, "system"), ("POST", "/system/passive", None, "system"),
        ("GET", "/ha/snapshot/s1", None, "ha"), ("GET", "/ha/blobs/files/a.txt", None, "ha"),
    ]
    return routes


def _send(cl: httpx.Client, method: str, path: str, body):
    if isinstance(body, bytes):
        return cl.request(method, path, content=body,
                          headers={"Content-Type": "application/octet-stream"})
    return cl.request(method, path, json=body) if body is not None else cl.request(method, path)


def test_a_claimless_user_is_refused_on_every_route_family(server, users):
    with _as(server, "nobody") as cl:
        for method, path, body, scope in _every_route_family(users["m1"]):
            r = _send(cl, method, path, body)
            if method == "HEAD":
                assert r.status_code == 403, (method, path, r.status_code)
            else:
                assert_forbidden(r, scope)


async def test_a_claimless_user_gets_no_event_stream(server, users):
    url = server.url.replace("https://", "wss://") + "/api/v3/ws"
    cred = base64.b64encode(f"nobody:{PW}".encode())
    with trio.fail_after(20):
        with pytest.raises(HandshakeError) as e:
            async with open_websocket_url(url, ssl_context=_insecure(),
                                          extra_headers=[(b"Authorization", b"Basic " + cred)]):
                pass
    assert getattr(e.value, "status_code", None) == 403


def test_a_claimless_user_may_manage_itself(server, users, api):
    with server.client(auth=("nobody", PW)) as cl:
        assert cl.get("/info").status_code == 200  # any authenticated user may read /info
        me = cl.get("/users/nobody")
        assert me.status_code == 200 and me.json()["Roles"] == []
        token = cl.get("/users/nobody/token").json()["Token"]
        with server.client(token=token) as tc:
            assert tc.get("/users/nobody").status_code == 200
            assert_forbidden(tc.get("/machines"), "machines")
        assert cl.put("/users/nobody/password", json={"password": "pw-new"}).status_code == 200
    with server.client(auth=("nobody", "pw-new")) as cl:
        assert cl.get("/users/nobody").status_code == 200
        assert cl.put("/users/nobody/password", json={"password": PW}).status_code == 200


@pytest.mark.parametrize("who", ["nobody", "useradmin"])
def test_escalations_are_refused_whatever_the_user_claims(server, users, api, who):
    """Issue 18 item 2, as an attacker without the superuser claim (useradmin holds
    users/*/*: still no new users, no Roles changes, no tokens or passwords for others)."""
    with _as(server, who) as cl:
        assert_forbidden(cl.post("/users", json={"Name": "evil", "Password": "x",
                                                 "Roles": ["superuser"]}), "users")
        assert_forbidden(cl.patch(f"/users/{who}", json=[
            {"op": "replace", "path": "/Roles", "value": ["superuser"]}]), "users")
        assert_forbidden(cl.put(f"/users/{who}", json={"Name": who, "Roles": ["superuser"]}),
                         "users")
        assert_forbidden(cl.patch("/users/victim", json=[
            {"op": "add", "path": "/Roles", "value": ["superuser"]}]), "users")
        assert_forbidden(cl.get("/users/rocketskates/token"), "users")
        assert_forbidden(cl.put("/users/rocketskates/password", json={"password": "x"}),
                         "users")
    assert api.get("/users/evil").status_code == 404
    assert api.get(f"/users/{who}").json()["Roles"] == ([] if who == "nobody" else [who])
    assert api.get("/users/victim").json()["Roles"] == []
    assert server.client().get("/users/rocketskates").status_code == 200  # password unchanged


def test_deleting_other_users_needs_a_claim(server, users, api):
    _user(api, "doomed", [])
    with _as(server, "nobody") as cl:
        assert_forbidden(cl.delete("/users/doomed"), "users")
        assert_forbidden(cl.delete("/users/rocketskates"), "users")
    assert api.get("/users/doomed").status_code == 200
    with _as(server, "useradmin") as cl:  # users/*/* grants delete (and plain updates)
        r = cl.put("/users/doomed", json={"Name": "doomed", "Description": "d"})
        assert r.status_code == 200 and r.json()["Roles"] == [], r.text
        assert cl.delete("/users/doomed").status_code == 200


def test_a_machines_role_grants_machines_only(server, users):
    with _as(server, "machinist") as cl:
        r = cl.post("/machines", json={"Name": "by-machinist"})
        assert r.status_code == 201, r.text
        key = r.json()["Uuid"]
        assert cl.get(f"/machines/{key}").status_code == 200
        assert cl.patch(f"/machines/{key}", json=[
            {"op": "add", "path": "/Description", "value": "d"}]).status_code == 200
        names = {m["Name"] for m in cl.get("/machines").json()}
        assert {"roles-m1", "roles-m2", "by-machinist"} <= names
        assert cl.delete(f"/machines/{key}").status_code == 200
        assert_forbidden(cl.get("/profiles"), "profiles")
        assert_forbidden(cl.post("/profiles", json={"Name": "p"}), "profiles")
        assert_forbidden(cl.get("/users"), "users")
        assert_forbidden(cl.get("/files"), "files")
        assert_forbidden(cl.get(f"/jobs/{uuid.uuid4()}/log"), "jobs")


def test_a_specific_claim_grants_that_object_only(server, users):
    m1, m2 = users["m1"], users["m2"]
    with _as(server, "one") as cl:
        assert cl.get(f"/machines/{m1}").status_code == 200
        assert_forbidden(cl.get(f"/machines/{m2}"), "machines")
        listed = cl.get("/machines")
        assert [m["Uuid"] for m in listed.json()] == [m1]
        assert listed.headers["X-DRP-List-Count"] == "1"
        assert cl.put(f"/machines/{m1}", json={"Name": "roles-m1", "Description": "mine"}
                      ).status_code == 200
        assert_forbidden(cl.put(f"/machines/{m2}", json={"Name": "roles-m2"}), "machines")
        assert_forbidden(cl.delete(f"/machines/{m1}"), "machines")  # no delete action
        assert_forbidden(cl.post("/machines", json={"Name": "x"}), "machines")


def test_roles_cannot_grant_more_than_their_writer_holds(server, users, api):
    with _as(server, "roleadmin") as cl:
        assert cl.get("/roles/superuser").status_code == 200
        r = cl.post("/roles", json={"Name": "sneaky", "Claims": [c.SUPERUSER_CLAIM]})
        assert_forbidden(r, "roles")
        r = cl.post("/roles", json={"Name": "sneaky", "Claims": [
            {"Scope": "machines", "Action": "get", "Specific": "*"}]})
        assert_forbidden(r, "roles")
        r = cl.post("/roles", json={"Name": "sneaky", "Claims": [
            {"Scope": "roles", "Action": "get,list", "Specific": "*"}]})
        assert r.status_code == 201, r.text
        assert_forbidden(cl.patch("/roles/roleadmin", json=[
            {"op": "add", "path": "/Claims/-", "value": c.SUPERUSER_CLAIM}]), "roles")
        assert cl.delete("/roles/sneaky").status_code == 200
    with _as(server, "packer") as cl:  # a content bundle is no way round it
        bundle = {"meta": {"Name": "evil-pack"},
                  "sections": {"roles": {"packer-plus": {"Claims": [c.SUPERUSER_CLAIM]}}}}
        assert_forbidden(cl.post("/contents", json=bundle), "contents")
        ok = {"meta": {"Name": "good-pack"}, "sections": {"roles": {"pack-reader": {
            "Claims": [{"Scope": "contents", "Action": "get", "Specific": "*"}]}}}}
        assert cl.post("/contents", json=ok).status_code == 201
        assert cl.delete("/contents/good-pack").status_code == 200
    assert api.get("/roles/packer-plus").status_code == 404


def test_the_superuser_role_is_built_in(server, users, api):
    role = api.get("/roles/superuser").json()
    assert role["Claims"] == [c.SUPERUSER_CLAIM]
    for r in (api.delete("/roles/superuser"),
              api.put("/roles/superuser", json={"Name": "superuser", "Claims": []}),
              api.patch("/roles/superuser", json=[{"op": "replace", "path": "/Claims",
                                                   "value": []}])):
        assert r.status_code == 403, r.text
        assert r.json()["Model"] == "roles" and "built in" in r.json()["Messages"][0]
    assert api.get("/roles/superuser").json()["Claims"] == [c.SUPERUSER_CLAIM]
    assert api.get("/users/rocketskates").json()["Roles"] == ["superuser"]


def test_roles_and_claims_are_validated(server, users, api):
    for bad in ({"Name": "r1", "Claims": "*"}, {"Name": "r1", "Claims": [{"Scope": 1}]},
                {"Name": "r1", "Claims": ["machines"]},
                {"Name": "r1", "Claims": [{"Scope": "*", "Verb": "*"}]}):
        r = api.post("/roles", json=bad)
        assert r.status_code == 422 and r.json()["Type"] == "ValidationError", r.text
    for roles in (["no-such-role"], [1], "superuser"):
        r = api.post("/users", json={"Name": "u-bad", "Roles": roles})
        assert r.status_code == 422, r.text
    assert "Role no-such-role does not exist" in api.post(
        "/users", json={"Name": "u-bad", "Roles": ["no-such-role"]}).json()["Messages"]
    # an update without Roles keeps them (it does not make the user a superuser)
    r = api.put("/users/victim", json={"Name": "victim", "Description": "v"})
    assert r.status_code == 200 and r.json()["Roles"] == []


def test_a_user_whose_role_is_removed_loses_its_claims(server, users, api):
    _role(api, "temp", ("profiles", "*", "*"))
    _user(api, "temper", ["temp"])
    with _as(server, "temper") as cl:
        assert cl.get("/profiles").status_code == 200
        assert api.delete("/roles/temp").status_code == 200
        assert_forbidden(cl.get("/profiles"), "profiles")  # no stale cache
        _role(api, "temp", ("profiles", "*", "*"))
        assert cl.get("/profiles").status_code == 200


async def test_events_are_filtered_by_claims(server, users):
    url = server.url.replace("https://", "wss://") + "/api/v3/ws"
    cred = base64.b64encode(f"machinist:{PW}".encode())

    async def call(method, path, body=None):
        def go():
            with server.client() as cl:
                return cl.request(method, path, json=body)
        return await trio.to_thread.run_sync(go)
    # machinist holds no events claim yet: give it one
    assert (await call("PUT", "/roles/machinist", {"Name": "machinist", "Claims": [
        {"Scope": "machines", "Action": "*", "Specific": "*"},
        {"Scope": "events", "Action": "get", "Specific": "*"}]})).status_code == 200
    with trio.fail_after(20):
        async with open_websocket_url(url, ssl_context=_insecure(),
                                      extra_headers=[(b"Authorization", b"Basic " + cred)]) as ws:
            await ws.send_message("register *.*.*")
            await ws.send_message("ping")
            assert "Error" in json.loads(await ws.get_message())
            assert (await call("POST", "/profiles", {"Name": "ws-hidden"})).status_code == 201
            r = await call("POST", "/machines", {"Name": "ws-seen"})
            event = json.loads(await ws.get_message())
            assert (event["Type"], event["Key"]) == ("machines", r.json()["Uuid"]), event


def test_drpcli_roles(server, users):
    out = server.drpcli("roles", "create", json.dumps(
        {"Name": "cli-role", "Claims": [{"Scope": "machines", "Action": "get", "Specific": "*"}]}))
    assert json.loads(out.stdout)["Name"] == "cli-role"
    assert "cli-role" in {r["Name"] for r in json.loads(server.drpcli("roles", "list").stdout)}
    server.drpcli("roles", "update", "cli-role", json.dumps({"Description": "d"}))
    assert json.loads(server.drpcli("roles", "show", "cli-role").stdout)["Description"] == "d"
    server.drpcli("roles", "destroy", "cli-role")
    assert server.drpcli("roles", "show", "cli-role", check=False).returncode != 0
    bad = server.drpcli("roles", "destroy", "superuser", check=False)
    assert bad.returncode != 0 and "built in" in bad.stderr + bad.stdout


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
