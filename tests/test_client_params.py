"""The params routes (issue 16, item 4) driven by RackN's own client (drppy-client): for every
kind of ours whose API page lists them, GET/POST/PATCH /<kind>/<key>/params and
GET/POST/DELETE /<kind>/<key>/params/<name>; their error bodies, claims and limits; and
drpcli's param verbs. Objects are made over plain HTTP, so only the params calls are the
client's."""
from __future__ import annotations

import json
import uuid

import pytest
from drppy_client import MachinesApi, ProfilesApi, ReservationsApi, StagesApi, SubnetsApi
from drppy_client.rest import ApiException

from drp.models import PARAM_KINDS
from tests.drppy import client_for, drppy, error_body  # noqa: F401  (drppy: the fixture)
from tests.hacluster import in_sync_pair
from tests.hacluster import http as ha_http

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def _made(drppy, kind: str, obj: dict) -> dict:
    resp = drppy.http.post(f"/{kind}", json=obj)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _machine(drppy, **fields) -> str:
    return _made(drppy, "machines", {"Name": f"m-{uuid.uuid4().hex[:8]}", **fields})["Uuid"]


def test_machine_params_every_call(drppy):
    machines = drppy.api(MachinesApi)
    key = _machine(drppy)
    assert machines.get_machine_params(key) == {}
    # POST replaces the whole map and answers it; names may hold '/'
    whole = {"ipmi/username": "root", "count": 3, "tags": ["a", {"b": None}], "on": True}
    assert machines.post_machine_params(whole, key) == whole
    assert machines.get_machine_params(key) == whole
    assert machines.get_machine_param(key, "ipmi/username") == "root"
    assert machines.get_machine_param(key, "tags") == ["a", {"b": None}]
    # one param: the body is the JSON value, the answer the value set. RackN's client
    # replaces MachinesApi.post_machine_param (custom_overrides): it first reads the param's
    # definition (GET /params/<name>, to seal a secure one), so a name with no definition is
    # its 404, and it drops the server's answer (returns None). The generated call is
    # post_machine_param_with_http_info.
    _made(drppy, "params", {"Name": "kernel-console", "Schema": {"type": "string"}})
    assert machines.post_machine_param("ttyS1", key, "kernel-console") is None
    assert machines.get_machine_param(key, "kernel-console") == "ttyS1"
    value, status, _ = machines.post_machine_param_with_http_info({"deep": [1, 2]}, key,
                                                                  "ipmi/username")
    assert (value, status) == ({"deep": [1, 2]}, 200)
    # PATCH is a JSON Patch on the map (test ops included), answered with the map after it
    after = machines.patch_machine_params(
        [{"op": "test", "path": "/count", "value": 3},
         {"op": "replace", "path": "/count", "value": 4},
         {"op": "remove", "path": "/on"}], key)
    assert after == {"ipmi/username": {"deep": [1, 2]}, "count": 4, "tags": ["a", {"b": None}],
                     "kernel-console": "ttyS1"}
    # DELETE answers the value it removed; an unset param then reads as null, as in
    # dr-provision (its GetParam finds nothing: 200 and null)
    assert machines.delete_machine_param(key, "count") == 4
    assert machines.get_machine_param(key, "count") is None
    # every change is a write of the object itself
    stored = drppy.http.get(f"/machines/{key}").json()
    assert stored["Params"] == {"ipmi/username": {"deep": [1, 2]}, "tags": ["a", {"b": None}],
                                "kernel-console": "ttyS1"}
    # a null value is a value (the client cannot send one: for body None it sends {})
    resp = drppy.http.post(f"/machines/{key}/params/nothing", content="null",
                           headers={"Content-Type": "application/json"})
    assert (resp.status_code, resp.json()) == (200, None)
    assert "nothing" in machines.get_machine_params(key)
    assert machines.get_machine_params(key, params="tags,kernel-console") == \
        {"tags": ["a", {"b": None}], "kernel-console": "ttyS1"}


def test_profile_params_and_aggregate(drppy):
    profiles, machines = drppy.api(ProfilesApi), drppy.api(MachinesApi)
    _made(drppy, "profiles", {"Name": "global", "Params": {"g": "global", "shared": "global"}})
    _made(drppy, "profiles", {"Name": "inner", "Params": {"inner": 1, "shared": "inner"}})
    _made(drppy, "profiles", {"Name": "outer", "Profiles": ["inner"]})
    _made(drppy, "profiles", {"Name": "staged", "Params": {"staged": True}})
    _made(drppy, "stages", {"Name": "st-agg", "Profiles": ["staged"]})
    _made(drppy, "params", {"Name": "with-default", "Schema": {"type": "string",
                                                               "default": "dflt"}})
    assert profiles.post_profile_params({"shared": "outer"}, "outer") == {"shared": "outer"}
    assert profiles.post_profile_param(7, "outer", "seven") == 7
    assert profiles.get_profile_param("outer", "seven") == 7
    assert profiles.patch_profile_params([{"op": "add", "path": "/eight", "value": 8}],
                                         "outer") == {"shared": "outer", "seven": 7, "eight": 8}
    assert profiles.delete_profile_param("outer", "eight") == 8
    assert profiles.get_profile_params("outer") == {"shared": "outer", "seven": 7}
    # a profile aggregates the profiles it names, then the global profile
    assert profiles.get_profile_params("outer", aggregate=True) == \
        {"shared": "outer", "seven": 7, "inner": 1, "g": "global"}

    key = _machine(drppy, Profiles=["outer"], Stage="st-agg", Params={"own": "m"})
    # the client sends aggregate=True (Python's spelling): taken as Go's ParseBool takes it
    assert machines.get_machine_params(key, aggregate=True) == \
        {"own": "m", "shared": "outer", "seven": 7, "inner": 1, "staged": True, "g": "global"}
    assert machines.get_machine_params(key) == {"own": "m"}
    assert machines.get_machine_param(key, "inner", aggregate=True) == 1
    assert machines.get_machine_param(key, "inner") is None
    # a param's Schema default answers for an aggregate read of a param nobody set
    assert machines.get_machine_param(key, "with-default", aggregate=True) == "dflt"
    assert machines.get_machine_param(key, "with-default") is None
    # decode (secure params decrypted) is accepted: nothing here is ever encrypted
    assert machines.get_machine_param(key, "own", aggregate=True, decode=True) == "m"
    bad = drppy.http.get(f"/machines/{key}/params", params={"aggregate": "yes"})
    assert bad.status_code == 400 and "aggregate='yes' is not a boolean" in bad.json()["Messages"][0]


@pytest.mark.parametrize("kind", ["stages", "subnets", "reservations"])
def test_the_other_kinds(drppy, kind):
    api, model, obj = {
        "stages": (StagesApi, "stage", {"Name": "st-params"}),
        "subnets": (SubnetsApi, "subnet", {"Name": "sn-params", "Subnet": "192.0.2.0/24"}),
        "reservations": (ReservationsApi, "reservation", {"Addr": "192.0.2.10"}),
    }[kind]
    client = drppy.api(api)
    made = _made(drppy, kind, obj)
    key = made["Addr"] if kind == "reservations" else made["Name"]
    call = {verb: getattr(client, f"{verb}_{model}_{suffix}")
            for verb, suffix in (("get", "params"), ("post", "params"), ("patch", "params"))}
    one = {verb: getattr(client, f"{verb}_{model}_param") for verb in ("get", "post", "delete")}
    assert call["get"](key) == {}
    assert call["post"]({"a": 1}, key) == {"a": 1}
    assert one["post"]("two", key, "b/c") == "two"
    assert one["get"](key, "b/c") == "two"
    assert call["patch"]([{"op": "test", "path": "/a", "value": 1},
                          {"op": "remove", "path": "/a"}], key) == {"b/c": "two"}
    assert one["delete"](key, "b/c") == "two"
    assert call["get"](key) == {}
    assert drppy.http.get(f"/{kind}/{key}").json()["Params"] == {}


def test_kinds_without_params_routes(drppy):
    assert set(PARAM_KINDS) == {"machines", "profiles", "reservations", "stages", "subnets"}
    _made(drppy, "bootenvs", {"Name": "be-noparams"})
    resp = drppy.http.get("/bootenvs/be-noparams/params")
    assert resp.status_code == 404
    assert resp.json()["Messages"] == ["bootenvs have no params: only machines, profiles, "
                                       "reservations, stages, subnets do"]


def test_error_bodies(drppy):
    machines = drppy.api(MachinesApi)
    missing = str(uuid.uuid4())
    for call in (lambda: machines.get_machine_params(missing),
                 lambda: machines.get_machine_param(missing, "x"),
                 lambda: machines.post_machine_param_with_http_info(1, missing, "x"),
                 lambda: machines.delete_machine_param(missing, "x")):
        with pytest.raises(ApiException) as e:
            call()
        assert e.value.status == 404
        body = error_body(e.value)
        assert (body["Model"], body["Key"], body["Code"]) == ("machines", missing, 404)
        assert body["Messages"] == [f"machine {missing} not found"]

    key = _machine(drppy, Params={"a": 1})
    with pytest.raises(ApiException) as e:  # removing what is not set: dr-provision's 404
        machines.delete_machine_param(key, "unset")
    assert e.value.status == 404
    assert error_body(e.value) == {"Model": "params", "Key": "unset", "Type": "DELETE",
                               "Messages": [f"param unset is not set on machine {key}"],
                               "Code": 404}
    # a patch that does not apply (a failed test too) is dr-provision's 409; nothing changes
    for ops, why in (([{"op": "test", "path": "/a", "value": 2}], "not equal"),
                     ([{"op": "remove", "path": "/nope"}], "nope")):
        with pytest.raises(ApiException) as e:
            machines.patch_machine_params(ops, key)
        assert e.value.status == 409
        body = error_body(e.value)
        assert body["Type"] == "PATCH" and body["Key"] == key
        assert body["Messages"][0].startswith("patch failed to apply to the params: ")
        assert why in body["Messages"][0]
    assert machines.get_machine_params(key) == {"a": 1}
    # bodies: not a patch, not a map, not strict JSON -> 400 with the reason
    bad = [("PATCH", "", '{"op": "add"}', "not an RFC 6902 JSON Patch"),
           ("POST", "", "[1, 2]", "params must be a JSON object of name: value, not list"),
           ("POST", "/x", '{"v": NaN}', "body is not valid JSON: NaN is not a JSON number"),
           ("POST", "/x", "1e400", "body is not valid JSON: a number is out of range")]
    for method, sub, body, why in bad:
        resp = drppy.http.request(method, f"/machines/{key}/params{sub}", content=body,
                                  headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["Messages"][0].startswith(why), resp.json()
    # a value as deep as a body may be, two levels down in the machine: 422, as validation
    deep = "1"
    for _ in range(99):
        deep = f"[{deep}]"
    resp = drppy.http.post(f"/machines/{key}/params/deep", content=deep,
                           headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["Type"] == "ValidationError"
    assert "nested deeper than 100 levels" in resp.json()["Messages"][0]
    assert machines.get_machine_params(key) == {"a": 1}


def test_read_only_objects_refuse_param_changes(drppy):
    bundle = {"meta": {"Name": "params-bundle", "Version": "v1"},
              "sections": {"profiles": {"bundled": {"Params": {"a": 1}}}}}
    assert drppy.http.post("/contents", json=bundle).status_code == 201
    profiles = drppy.api(ProfilesApi)
    assert profiles.get_profile_params("bundled") == {"a": 1}  # reads are as for any object
    for call in (lambda: profiles.post_profile_param(2, "bundled", "a"),
                 lambda: profiles.post_profile_params({}, "bundled"),
                 lambda: profiles.patch_profile_params([{"op": "remove", "path": "/a"}],
                                                       "bundled"),
                 lambda: profiles.delete_profile_param("bundled", "a")):
        with pytest.raises(ApiException) as e:
            call()
        assert e.value.status == 403
        assert error_body(e.value)["Messages"] == [
            "profile bundled is read-only: it belongs to content bundle params-bundle; change "
            "the bundle instead"]
    assert profiles.get_profile_params("bundled") == {"a": 1}


def test_claims_get_and_update(drppy):
    _made(drppy, "roles", {"Name": "machine-reader",
                           "Claims": [{"Scope": "machines", "Action": "get", "Specific": "*"}]})
    _made(drppy, "users", {"Name": "reader", "Password": "pw", "Roles": ["machine-reader"]})
    key = _machine(drppy, Params={"a": 1})
    reader = MachinesApi(client_for(drppy.server, "reader", "pw"))
    assert reader.get_machine_params(key) == {"a": 1}
    assert reader.get_machine_param(key, "a") == 1
    for call in (lambda: reader.post_machine_param_with_http_info(2, key, "a"),
                 lambda: reader.post_machine_params({}, key),
                 lambda: reader.patch_machine_params([], key),
                 lambda: reader.delete_machine_param(key, "a")):
        with pytest.raises(ApiException) as e:
            call()
        assert e.value.status == 403
        assert error_body(e.value)["Messages"] == [
            f"forbidden: your roles do not grant machines/update/{key}"]
    with pytest.raises(ApiException) as e:  # decode needs getSecure, as in dr-provision
        reader.get_machine_params(key, decode=True)
    assert e.value.status == 403
    assert error_body(e.value)["Messages"] == [
        f"forbidden: your roles do not grant machines/getSecure/{key}"]
    with pytest.raises(ApiException) as e:
        ProfilesApi(reader.api_client).get_profile_params("global")
    assert e.value.status == 403
    assert drppy.api(MachinesApi).get_machine_params(key) == {"a": 1}


def test_object_size_limit(module_drp_factory):
    server = module_drp_factory("small", "--max-object-size", "4KiB")
    with server.client() as http:
        key = http.post("/machines", json={"Name": "big"}).json()["Uuid"]
        set_ = []
        while True:  # each body is small; the machine they make is not
            resp = http.post(f"/machines/{key}/params/p{len(set_)}", json="x" * 1000)
            if resp.status_code != 200:
                break
            set_.append(f"p{len(set_)}")
        assert len(set_) >= 1 and resp.status_code == 413
        assert resp.json()["Messages"] == [
            f"machine {key} with these params is larger than the limit of 4 KiB (the server's "
            "--max-object-size raises it)"]
        machine = http.get(f"/machines/{key}").json()
        assert sorted(machine["Params"]) == set_
        assert len(json.dumps(machine)) <= 4096 < len(json.dumps(machine)) + 1000


def test_drpcli_param_verbs(drppy):
    server = drppy.server
    key = _machine(drppy)

    def cli(*args, check=True):
        return server.drpcli("machines", *args, check=check)
    assert json.loads(cli("params", key).stdout) == {}
    assert json.loads(cli("params", key, '{"a": 1, "ipmi/username": "root"}').stdout) == \
        {"a": 1, "ipmi/username": "root"}
    # VALUE is JSON; a bare word that is not JSON is a string
    assert cli("set", key, "param", "console", "to", "ttyS1").stdout == '"ttyS1"\n'
    assert cli("set", key, "param", "n", "to", "3").stdout == "3\n"
    assert json.loads(cli("set", key, "param", "l", "to", '["x", 2]').stdout) == ["x", 2]
    assert cli("get", key, "param", "console").stdout == '"ttyS1"\n'
    assert cli("get", key, "param", "ipmi/username").stdout == '"root"\n'
    assert cli("get", key, "param", "unset").stdout == "null\n"
    assert cli("remove", key, "param", "n").stdout == "3\n"
    assert json.loads(cli("params", key).stdout) == \
        {"a": 1, "ipmi/username": "root", "console": "ttyS1", "l": ["x", 2]}
    gone = cli("remove", key, "param", "n", check=False)
    assert gone.returncode == 1
    assert gone.stderr == f"Error: 404 params n: param n is not set on machine {key}\n"
    wrong = cli("get", key, "params", "console", check=False)
    assert wrong.returncode == 1 and "expected 'param', not 'params'" in wrong.stderr
    # --aggregate reads through the machine's profiles
    _made(drppy, "profiles", {"Name": "cli-prof", "Params": {"from-profile": "yes"}})
    drppy.http.patch(f"/machines/{key}", json=[{"op": "add", "path": "/Profiles",
                                                "value": ["cli-prof"]}])
    assert cli("get", key, "param", "from-profile").stdout == "null\n"
    assert cli("get", key, "param", "from-profile", "--aggregate").stdout == '"yes"\n'
    assert cli("get", key, "param", "from-profile", "--aggregate", "--decode").stdout == '"yes"\n'
    assert json.loads(cli("params", key, "--aggregate").stdout)["from-profile"] == "yes"
    # the same verbs for the other kinds
    out = server.drpcli("profiles", "set", "cli-prof", "param", "x", "to", "true").stdout
    assert out == "true\n"
    assert json.loads(server.drpcli("profiles", "params", "cli-prof").stdout) == \
        {"from-profile": "yes", "x": True}


def test_param_changes_replicate(tmp_path):
    """Each param change is one replicated write: on the passive the moment it is answered,
    served there as on the active; the passive refuses param writes as any write."""
    with in_sync_pair(tmp_path) as (a, b, token):
        with ha_http(a, token) as ca, ha_http(b, token) as cb:
            key = ca.post("/machines", json={"Name": "replicated"}).json()["Uuid"]
            path = f"/machines/{key}/params"
            steps = [("POST", path, {"a": 1, "b": 2}), ("POST", f"{path}/ipmi/user", "root"),
                     ("PATCH", path, [{"op": "test", "path": "/a", "value": 1},
                                      {"op": "remove", "path": "/a"}]),
                     ("DELETE", f"{path}/b", None)]
            for method, url, body in steps:
                resp = ca.request(method, url, json=body)
                assert resp.status_code == 200, resp.text
                assert cb.get(path).content == ca.get(path).content
                assert cb.get(f"/machines/{key}").content == ca.get(f"/machines/{key}").content
            assert cb.get(path).json() == {"ipmi/user": "root"}
            refused = cb.post(f"{path}/x", json=1)
            assert refused.status_code == 503 and refused.json()["Type"] == "HA_PASSIVE"
