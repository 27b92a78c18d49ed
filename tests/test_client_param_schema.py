"""A param definition's Schema (issue 16): a value set on an object is checked against the
Schema of the `params` object of its name, on every route that sets one (the params routes and
an object's Params on create, PUT and PATCH), driven by RackN's client against a real drp. A
value that fails is dr-provision's 422 naming the param and the reason; no definition or no
Schema accepts anything; a Schema that is not a JSON schema is refused when it is written."""
from __future__ import annotations

import uuid

import pytest
from drppy_client import MachinesApi, ParamsApi, ProfilesApi
from drppy_client.models import Param

from tests.drppy import drppy, error_body, refused  # noqa: F401  (drppy: the fixture)

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def _machine(drppy, **fields) -> str:
    resp = drppy.http.post("/machines", json={"Name": f"m-{uuid.uuid4().hex[:8]}", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["Uuid"]


def _define(drppy, name: str, schema, **fields) -> None:
    ParamsApi(drppy.client).create_param(Param(name=name, schema=schema, secure=False,
                                               **fields))


def _one_refusal(exc, kind: str, key: str) -> str:
    assert exc.status == 422, exc.body
    body = error_body(exc)
    assert (body["Model"], body["Key"], body["Type"]) == (kind, key, "ValidationError"), body
    [message] = body["Messages"]
    assert "\n" not in message
    return message


def test_every_route_that_sets_a_value_checks_it(drppy):
    _define(drppy, "sch-console", {"type": "string", "enum": ["ttyS0", "ttyS1"]})
    _define(drppy, "sch-count", {"type": "integer", "minimum": 1})
    machines = drppy.api(MachinesApi)
    key = _machine(drppy, Params={"sch-count": 2})
    want = ("Key 'sch-console': invalid val '\"tty9\"': (root): 'tty9' is not one of "
            "['ttyS0', 'ttyS1']")
    calls = [
        lambda: machines.post_machine_param_with_http_info("tty9", key, "sch-console"),
        lambda: machines.post_machine_params({"sch-count": 2, "sch-console": "tty9"}, key),
        lambda: machines.patch_machine_params(
            [{"op": "add", "path": "/sch-console", "value": "tty9"}], key),
        lambda: machines.patch_machine(
            [{"op": "add", "path": "/Params/sch-console", "value": "tty9"}], key),
    ]
    for call in calls:
        assert _one_refusal(refused(call), "machines", key) == want
    # an object's whole body: PUT, and create
    current = drppy.http.get(f"/machines/{key}").json()
    resp = drppy.http.put(f"/machines/{key}", json={
        **current, "Params": {"sch-count": 0}})
    assert resp.status_code == 422
    assert resp.json()["Messages"] == [
        "Key 'sch-count': invalid val '0': (root): 0 is less than the minimum of 1"]
    resp = drppy.http.post("/profiles", json={"Name": "sch-prof",
                                              "Params": {"sch-count": "three"}})
    assert (resp.status_code, resp.json()["Model"]) == (422, "profiles")
    assert resp.json()["Messages"] == [
        "Key 'sch-count': invalid val '\"three\"': (root): 'three' is not of type 'integer'"]
    assert drppy.http.get("/profiles/sch-prof").status_code == 404
    # nothing was changed by any of them
    assert machines.get_machine_params(key) == {"sch-count": 2}
    # values that match are taken by every route
    assert machines.post_machine_param_with_http_info("ttyS1", key, "sch-console")[:2] == \
        ("ttyS1", 200)
    assert machines.post_machine_param("ttyS0", key, "sch-console") is None  # RackN's override
    assert machines.patch_machine_params(
        [{"op": "replace", "path": "/sch-count", "value": 5}], key) == \
        {"sch-count": 5, "sch-console": "ttyS0"}
    assert machines.patch_machine(
        [{"op": "replace", "path": "/Params/sch-count", "value": 6}], key).params == \
        {"sch-count": 6, "sch-console": "ttyS0"}


def test_every_failing_value_is_named(drppy):
    _define(drppy, "sch-a", {"type": "boolean"})
    _define(drppy, "sch-b", {"type": "object", "properties": {"port": {"type": "integer"}},
                             "required": ["port"]})
    profiles = drppy.api(ProfilesApi)
    drppy.http.post("/profiles", json={"Name": "sch-many"}).raise_for_status()
    exc = refused(lambda: profiles.post_profile_params(
        {"sch-a": "yes", "sch-b": {"port": "80"}, "free": 1}, "sch-many"))
    assert exc.status == 422
    assert error_body(exc)["Messages"] == [
        "Key 'sch-a': invalid val '\"yes\"': (root): 'yes' is not of type 'boolean'",
        "Key 'sch-b': invalid val '{\"port\":\"80\"}': (root).port: '80' is not of type "
        "'integer'"]
    # a long value is quoted cut short
    exc = refused(lambda: profiles.post_profile_param("x" * 500, "sch-many", "sch-a"))
    message = _one_refusal(exc, "profiles", "sch-many")
    assert message.startswith("Key 'sch-a': invalid val '\"xxx") and "...'" in message
    assert len(message) < 300


def test_no_definition_or_no_schema_takes_anything(drppy):
    ParamsApi(drppy.client).create_param(Param(name="sch-free", secure=False))
    drppy.http.post("/params", json={"Name": "sch-empty", "Schema": {}}).raise_for_status()
    machines = drppy.api(MachinesApi)
    key = _machine(drppy)
    anything = {"sch-free": [1, {"a": None}], "sch-empty": 3.5, "sch-undefined": "x"}
    assert machines.post_machine_params(anything, key) == anything
    assert machines.get_machine_params(key) == anything


def test_formats_are_checked(drppy):
    _define(drppy, "sch-ip", {"type": "string", "format": "ipv4"})
    key = _machine(drppy)
    machines = drppy.api(MachinesApi)
    exc = refused(lambda: machines.post_machine_param_with_http_info("10.0.0.300", key,
                                                                     "sch-ip"))
    assert _one_refusal(exc, "machines", key) == \
        "Key 'sch-ip': invalid val '\"10.0.0.300\"': (root): '10.0.0.300' is not a 'ipv4'"
    assert machines.post_machine_param_with_http_info("10.0.0.3", key, "sch-ip")[1] == 200


def test_a_value_already_set_is_not_checked_again(drppy):
    """dr-provision does not re-check values when a Schema changes: an object written before
    keeps its value through other edits."""
    machines = drppy.api(MachinesApi)
    key = _machine(drppy)
    # set before the definition existed
    machines.post_machine_param_with_http_info("text", key, "sch-later")
    drppy.http.post("/params", json={"Name": "sch-later", "Schema": {"type": "integer"}}
                    ).raise_for_status()
    resp = drppy.http.patch(f"/machines/{key}",
                            json=[{"op": "replace", "path": "/Description", "value": "d"}])
    assert resp.status_code == 200, resp.text
    assert resp.json()["Params"]["sch-later"] == "text"
    # changing it is checked
    exc = refused(lambda: machines.post_machine_param_with_http_info("more", key, "sch-later"))
    assert exc.status == 422


@pytest.mark.parametrize("schema, why", [
    ({"type": "strin"}, "Schema is not a valid JSON schema: 'strin' is not valid under any of "
                        "the given schemas (at type)"),
    ({"minimum": "one"}, "Schema is not a valid JSON schema: 'one' is not of type 'number' "
                         "(at minimum)"),
    ({"properties": {"a": {"required": "a"}}}, "Schema is not a valid JSON schema:"),
])
def test_a_schema_that_is_not_one_is_refused(drppy, schema, why):
    params = drppy.api(ParamsApi)
    name = f"sch-bad-{uuid.uuid4().hex[:6]}"
    exc = refused(lambda: params.create_param(Param(name=name, schema=schema, secure=False)))
    assert _one_refusal(exc, "params", name).startswith(f"param {name}: {why}")
    assert drppy.http.get(f"/params/{name}").status_code == 404
    # nor by PUT or PATCH of a good one
    params.create_param(Param(name=name, schema={"type": "string"}, secure=False))
    exc = refused(lambda: params.put_param(Param(name=name, schema=schema, secure=False), name))
    assert exc.status == 422
    exc = refused(lambda: params.patch_param(
        [{"op": "replace", "path": "/Schema", "value": schema}], name))
    assert exc.status == 422
    assert params.get_param(name).schema == {"type": "string"}
    # nor in a content bundle
    resp = drppy.http.post("/contents", json={"meta": {"Name": f"b-{name}"}, "sections": {
        "params": {f"{name}-b": {"Schema": schema}}}})
    assert resp.status_code == 422
    assert resp.json()["Messages"][0].startswith(f"params/{name}-b: {why}")


def test_drafts(drppy):
    """No $schema: draft 4 when it is one, else draft 7 (as gojsonschema takes either)."""
    _define(drppy, "sch-d4", {"type": "number", "minimum": 1, "exclusiveMinimum": True})
    _define(drppy, "sch-d7", {"type": "number", "exclusiveMinimum": 1, "const": 2})
    key = _machine(drppy)
    machines = drppy.api(MachinesApi)
    for name, bad, good in (("sch-d4", 1, 1.5), ("sch-d7", 3, 2)):
        assert refused(lambda: machines.post_machine_param_with_http_info(
            bad, key, name)).status == 422
        assert machines.post_machine_param_with_http_info(good, key, name)[1] == 200
