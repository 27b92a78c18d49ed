"""Secure params (issue 16): a param whose definition says `Secure: true` is stored encrypted
and served as dr-provision's SecureData {Key, Nonce, Payload}, on the params routes and in an
object's Params, unless the caller asks decode=true and holds the kind's getSecure claim.
Driven by RackN's client against real drp processes; the sqlite files never hold the plain
value; a passive opens what the active sealed (the key lives in the replicated `secrets`)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from drppy_client import MachinesApi, ParamsApi, ProfilesApi
from drppy_client.models import Param

from tests.blobutil import changes
from tests.drppy import (client_for, drppy, error_body, refused,  # noqa: F401  (drppy: a fixture)
                         user_with_claims)
from tests.hacluster import in_sync_pair
from tests.hacluster import http as ha_http

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

PLAIN = "correct-horse-battery-staple"  # a value to look for in the store's files


def _machine(http, **fields) -> str:
    resp = http.post("/machines", json={"Name": f"m-{uuid.uuid4().hex[:8]}", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["Uuid"]


def _is_secure_data(value) -> bool:
    return isinstance(value, dict) and set(value) == {"Key", "Nonce", "Payload"} and all(
        isinstance(v, str) and v for v in value.values())


def _store_bytes(base_root: Path) -> bytes:
    """Every byte of the store's sqlite files (the database and its WAL)."""
    return b"".join(p.read_bytes() for p in sorted(base_root.glob("drp.db*")) if p.is_file())


@pytest.fixture(scope="module")
def secure(drppy):
    ParamsApi(drppy.client).create_param(Param(name="sec-password", secure=True,
                                               schema={"type": "string", "minLength": 8}))
    ParamsApi(drppy.client).create_param(Param(name="sec-any", secure=True))
    return drppy


def test_the_store_secret_is_made_at_first_start_and_never_again(drp):
    """Made with the token secret when a node first owns its data (so a passive answering
    GET .../pubkey never has to write it); secure values never add another."""
    [made] = changes(drp, "secrets", "secure-params")
    assert made["action"] == "create"
    with drp.client() as c:
        c.post("/params", json={"Name": "sec-first", "Secure": True,
                                "Schema": {"type": "string", "minLength": 5}}
               ).raise_for_status()
        key = _machine(c, Params={"plain": 1})
        head = changes(drp)[-1]["seq"]
        # a refused secure value changes nothing: it is rolled back with the write
        assert c.post(f"/machines/{key}/params/sec-first", json="abc").status_code == 422
        assert changes(drp)[-1]["seq"] == head
        c.post(f"/machines/{key}/params/sec-first", json=PLAIN).raise_for_status()
        [update] = [r for r in changes(drp, "machines", key) if r["seq"] > head]
        assert _is_secure_data(update["body"]["Params"]["sec-first"])
        c.post(f"/machines/{key}/params/sec-first", json="again").raise_for_status()
        assert len(changes(drp, "secrets")) == 2  # the token secret and the store secret
    assert PLAIN.encode() not in _store_bytes(drp.base_root)


def test_a_content_bundle_s_secure_values_are_sealed_and_checked(drp):
    """A bundle's param values get the checks an API write gets: its own definitions count,
    a secure value is stored sealed, a value its Schema refuses fails the whole bundle."""
    bundle = {"meta": {"Name": "sec-bundle", "Version": "1.0"}, "sections": {
        "params": {"bundle-secret": {"Name": "bundle-secret", "Secure": True,
                                     "Schema": {"type": "string", "minLength": 8}}},
        "profiles": {"with-secret": {"Name": "with-secret",
                                     "Params": {"bundle-secret": PLAIN}}}}}
    with drp.client() as c:
        c.post("/contents", json=bundle).raise_for_status()
        served = c.get("/profiles/with-secret").json()["Params"]["bundle-secret"]
        assert _is_secure_data(served)
        opened = c.get("/profiles/with-secret/params/bundle-secret", params={"decode": "true"})
        assert opened.json() == PLAIN
        bad = {**bundle, "meta": {"Name": "bad-bundle", "Version": "1.0"}, "sections": {
            "profiles": {"short": {"Name": "short", "Params": {"bundle-secret": "abc"}}}}}
        refused = c.post("/contents", json=bad)
        assert refused.status_code == 422, refused.text
        assert "profiles/short: Key 'bundle-secret': invalid val (secure, not shown)" in \
            refused.json()["Messages"][0]
        assert c.get("/profiles/short").status_code == 404  # nothing of it was stored
    assert PLAIN.encode() not in _store_bytes(drp.base_root)


def test_served_sealed_and_decoded(secure):
    machines = secure.api(MachinesApi)
    key = _machine(secure.http)
    # RackN's client's own post_machine_param seals a secure value with NaCl box to the
    # object's key from GET /machines/<id>/pubkey (it returns nothing); the value opens here
    assert machines.post_machine_param(PLAIN, key, "sec-password") is None
    assert _is_secure_data(machines.get_machine_param(key, "sec-password"))
    assert machines.get_machine_param(key, "sec-password", decode=True) == PLAIN
    # the generated call sends the plain value: drp seals it (to the same key)
    answer, status, _ = machines.post_machine_param_with_http_info(PLAIN, key, "sec-password")
    assert status == 200 and _is_secure_data(answer)  # the answer is the stored SecureData
    sealed = machines.get_machine_param(key, "sec-password")
    assert sealed == answer
    assert machines.get_machine_param(key, "sec-password", decode=True) == PLAIN
    assert machines.get_machine_params(key) == {"sec-password": sealed}
    assert machines.get_machine_params(key, decode=True) == {"sec-password": PLAIN}
    # the whole object: its Params carry the SecureData too, decoded on request
    assert secure.http.get(f"/machines/{key}").json()["Params"] == {"sec-password": sealed}
    assert machines.get_machine(key).params == {"sec-password": sealed}
    assert secure.http.get(f"/machines/{key}", params={"decode": "true"}).json()["Params"] \
        == {"sec-password": PLAIN}
    listed = secure.http.get("/machines", params={"decode": "true", "Uuid": key}).json()
    assert [m["Params"] for m in listed] == [{"sec-password": PLAIN}]
    listed = secure.http.get("/machines", params={"Uuid": key}).json()
    assert [m["Params"] for m in listed] == [{"sec-password": sealed}]
    # each value is sealed afresh (a new ephemeral key and nonce)
    again, _, _ = machines.post_machine_param_with_http_info(PLAIN, key, "sec-password")
    assert again["Key"] != sealed["Key"] and again["Nonce"] != sealed["Nonce"]
    # every route that sets a value seals it: the whole map, a patch, create, PUT
    assert _is_secure_data(machines.post_machine_params({"sec-any": [1, 2]}, key)["sec-any"])
    patched = machines.patch_machine_params(
        [{"op": "add", "path": "/sec-password", "value": "patched-value"}], key)
    assert _is_secure_data(patched["sec-password"])
    other = _machine(secure.http, Params={"sec-any": {"deep": True}, "open": 1})
    stored = secure.http.get(f"/machines/{other}").json()["Params"]
    assert _is_secure_data(stored["sec-any"]) and stored["open"] == 1
    assert machines.get_machine_params(other, decode=True) == {"sec-any": {"deep": True},
                                                               "open": 1}
    assert machines.get_machine_params(key, decode=True) == {"sec-any": [1, 2],
                                                             "sec-password": "patched-value"}
    assert PLAIN.encode() not in _store_bytes(secure.server.base_root)
    assert b"patched-value" not in _store_bytes(secure.server.base_root)


def test_round_trip_keeps_and_tampering_is_refused(secure):
    machines = secure.api(MachinesApi)
    key = _machine(secure.http, Params={"sec-password": PLAIN})
    current = secure.http.get(f"/machines/{key}").json()
    sealed = current["Params"]["sec-password"]
    # GET, edit, PUT back: the SecureData it got is taken as it is
    resp = secure.http.put(f"/machines/{key}", json={**current, "Description": "edited"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["Params"]["sec-password"] == sealed
    # a SecureData sent for another param opens with this server's key: taken, and checked
    moved = machines.post_machine_param_with_http_info(sealed, key, "sec-any")[0]
    assert moved == sealed
    assert machines.get_machine_param(key, "sec-any", decode=True) == PLAIN
    # one changed by a bit, or malformed, does not open: 422, nothing changed
    flipped = dict(sealed, Payload=("B" if sealed["Payload"][0] == "A" else "A")
                   + sealed["Payload"][1:])
    for bad, why in ((flipped, "does not open with this server's key"),
                     (dict(sealed, Nonce="AAAA"), "Nonce must be 24 bytes"),
                     (dict(sealed, Key="!!"), "Key is not base64")):
        exc = refused(lambda: machines.post_machine_param_with_http_info(bad, key,
                                                                         "sec-password"))
        assert exc.status == 422
        body = error_body(exc)
        assert (body["Model"], body["Key"], body["Type"]) == ("machines", key,
                                                              "ValidationError")
        [message] = body["Messages"]
        assert message.startswith("Key 'sec-password': invalid val: ") and why in message
    assert machines.get_machine_param(key, "sec-password") == sealed


def test_schema_checks_the_plain_value_and_never_shows_it(secure):
    machines = secure.api(MachinesApi)
    key = _machine(secure.http)
    exc = refused(lambda: machines.post_machine_param_with_http_info("short", key,
                                                                     "sec-password"))
    assert exc.status == 422
    assert error_body(exc)["Messages"] == [
        "Key 'sec-password': invalid val (secure, not shown): (root): the value fails the "
        "schema's 'minLength' keyword"]
    assert "short" not in exc.body
    assert machines.get_machine_params(key) == {}


def test_aggregate_decodes_what_profiles_hold(secure):
    profiles, machines = secure.api(ProfilesApi), secure.api(MachinesApi)
    secure.http.post("/profiles", json={"Name": "sec-prof"}).raise_for_status()
    assert _is_secure_data(profiles.post_profile_param(PLAIN, "sec-prof", "sec-password"))
    key = _machine(secure.http, Profiles=["sec-prof"])
    assert _is_secure_data(machines.get_machine_param(key, "sec-password", aggregate=True))
    assert machines.get_machine_param(key, "sec-password", aggregate=True, decode=True) \
        == PLAIN
    assert profiles.get_profile_params("sec-prof", decode=True) == {"sec-password": PLAIN}


def test_decode_needs_get_secure(secure):
    http = secure.http
    user_with_claims(http, "sec-r", "get,list")
    user_with_claims(http, "sec-o", "get,list,getSecure")
    key = _machine(http, Params={"sec-password": PLAIN})
    reader = MachinesApi(client_for(secure.server, "sec-r", "pw"))
    opener = MachinesApi(client_for(secure.server, "sec-o", "pw"))
    assert _is_secure_data(reader.get_machine_param(key, "sec-password"))
    for call in (lambda: reader.get_machine_param(key, "sec-password", decode=True),
                 lambda: reader.get_machine_params(key, decode=True),
                 lambda: reader.get_machine(key, decode=True)):
        exc = refused(call)
        assert exc.status == 403
        assert error_body(exc)["Messages"] == [
            f"forbidden: your roles do not grant machines/getSecure/{key}"]
    exc = refused(lambda: reader.list_machines(decode=True))
    assert exc.status == 403
    assert opener.get_machine_param(key, "sec-password", decode=True) == PLAIN
    assert opener.get_machine(key, decode=True).params == {"sec-password": PLAIN}


def test_a_passive_decodes_what_the_active_sealed(tmp_path):
    with in_sync_pair(tmp_path) as (a, b, token):
        with ha_http(a, token) as ca, ha_http(b, token) as cb:
            ca.post("/params", json={"Name": "sec-ha", "Secure": True}).raise_for_status()
            key = _machine(ca)
            path = f"/machines/{key}/params/sec-ha"
            sealed = ca.post(path, json=PLAIN).json()
            assert _is_secure_data(sealed)
            assert cb.get(path).json() == sealed
            assert cb.get(f"/machines/{key}").content == ca.get(f"/machines/{key}").content
            assert cb.get(path, params={"decode": "true"}).json() == PLAIN
            assert cb.get(f"/machines/{key}", params={"decode": "true"}).json()["Params"] == \
                {"sec-ha": PLAIN}
        for node in (a, b):
            assert PLAIN.encode() not in _store_bytes(node.base_root)
