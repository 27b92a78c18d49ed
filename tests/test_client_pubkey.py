"""Secure params in dr-provision's own format (issue 16): GET /<kind>/<key>/pubkey answers the
object's curve25519 public key, RackN's client seals a secure value to it with NaCl box (its
SecureData.seal) and posts the SecureData, which drp checks (it must open with the object's
key, else 422) and stores as it came. Driven by RackN's client against real drp processes;
values of drp's first scheme (AES-GCM to the store secret) still open; a passive derives the
same keys and opens what the active stored."""
from __future__ import annotations

import base64
import json
import os
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from drppy_client import MachinesApi, ParamsApi, ProfilesApi
from drppy_client.api.custom_overrides import SecureData
from drppy_client.api.raw_model_api import RawModelApi
from drppy_client.models import Param
from nacl.public import PrivateKey

from tests.blobutil import changes
from tests.drppy import (client_for, drppy, error_body, refused,  # noqa: F401  (drppy: a fixture)
                         user_with_claims)
from tests.hacluster import http as ha_http
from tests.hacluster import in_sync_pair

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

PLAIN = "tr0ub4dor-and-3-more-words"  # a value to look for in the store's files
NAME = "pk-secret"


def _machine(http, **fields) -> str:
    resp = http.post("/machines", json={"Name": f"m-{uuid.uuid4().hex[:8]}", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["Uuid"]


def _store_bytes(server) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(server.base_root.glob("drp.db*"))
                    if p.is_file())


def _sealed(public_b64: str, value) -> dict:
    """What RackN's client posts for a secure param: its own SecureData.seal."""
    sd = SecureData()
    sd.seal(base64.b64decode(public_b64), value)
    return {"Key": sd.Key, "Nonce": sd.Nonce, "Payload": sd.Payload}


def _first_scheme(secret_b64: str, value) -> dict:
    """A SecureData of drp's first scheme (before NaCl box), written here from its description
    (drp.secureparams): X25519 from an ephemeral key to the store secret, HKDF-SHA256 (info:
    label, sender's and store's public keys), AES-256-GCM under a 24-byte nonce."""
    store = X25519PrivateKey.from_private_bytes(base64.b64decode(secret_b64)).public_key()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ephemeral = X25519PrivateKey.generate()
    sender = ephemeral.public_key().public_bytes(*raw)
    key = HKDF(hashes.SHA256(), 32, salt=None,
               info=b"drp secure param v1" + sender + store.public_bytes(*raw)
               ).derive(ephemeral.exchange(store))
    nonce = os.urandom(24)
    payload = AESGCM(key).encrypt(nonce, json.dumps(value).encode(), None)
    return {k: base64.b64encode(v).decode()
            for k, v in (("Key", sender), ("Nonce", nonce), ("Payload", payload))}


@pytest.fixture(scope="module")
def secure(drppy):
    ParamsApi(drppy.client).create_param(Param(name=NAME, secure=True,
                                               schema={"type": "string", "minLength": 8}))
    return drppy


def test_pubkey_per_object(secure):
    machines, http = secure.api(MachinesApi), secure.http
    a, b = _machine(http), _machine(http)
    key_a = machines.get_machine_pub_key(a)
    assert isinstance(key_a, str) and len(base64.b64decode(key_a, validate=True)) == 32
    assert machines.get_machine_pub_key(a) == key_a  # stable
    assert machines.get_machine_pub_key(b) != key_a  # one key pair per object
    resp = http.get(f"/machines/{a}/pubkey")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.json() == key_a
    # every kind we serve whose API page lists the route
    http.post("/profiles", json={"Name": "pk-prof"}).raise_for_status()
    http.post("/stages", json={"Name": "pk-stage"}).raise_for_status()
    http.post("/subnets", json={"Name": "pk-net", "Subnet": "198.18.7.0/24"}
              ).raise_for_status()
    http.post("/reservations", json={"Addr": "198.18.7.9", "Token": "01:02:03:04:05:06"}
              ).raise_for_status()
    keys = {key_a, machines.get_machine_pub_key(b),
            secure.api(ProfilesApi).get_profile_pub_key("pk-prof")}
    for path in ("/stages/pk-stage", "/subnets/pk-net", "/reservations/198.18.7.9"):
        resp = http.get(path + "/pubkey")
        assert resp.status_code == 200, resp.text
        keys.add(resp.json())
    assert len(keys) == 6


def test_pubkey_unknown_object_or_kind(secure):
    missing = str(uuid.uuid4())
    exc = refused(lambda: secure.api(MachinesApi).get_machine_pub_key(missing))
    assert exc.status == 404
    body = error_body(exc)
    assert (body["Model"], body["Key"], body["Type"]) == ("machines", missing, "NotFound")
    assert len(body["Messages"]) == 1
    resp = secure.http.get("/tasks/whatever/pubkey")  # tasks have no (secure) params
    assert resp.status_code == 404 and resp.json()["Code"] == 404


def test_pubkey_needs_update_secure(secure):
    http = secure.http
    user_with_claims(http, "pk-g", "get,getSecure")
    user_with_claims(http, "pk-s", "get,updateSecure")
    key = _machine(http)
    exc = refused(lambda: MachinesApi(client_for(secure.server, "pk-g", "pw")
                                      ).get_machine_pub_key(key))
    assert exc.status == 403
    assert error_body(exc)["Messages"] == [
        f"forbidden: your roles do not grant machines/updateSecure/{key}"]
    setter = MachinesApi(client_for(secure.server, "pk-s", "pw"))
    assert setter.get_machine_pub_key(key) == secure.api(MachinesApi).get_machine_pub_key(key)


def test_rackn_client_posts_a_secure_param(secure):
    machines, http = secure.api(MachinesApi), secure.http
    key = _machine(http)
    # RackN's own post_machine_param: get_param says Secure, it fetches the pubkey and seals
    assert machines.post_machine_param(PLAIN, key, NAME) is None
    stored = machines.get_machine_param(key, NAME)
    assert set(stored) == {"Key", "Nonce", "Payload"}
    assert machines.get_machine_param(key, NAME, decode=True) == PLAIN
    assert machines.get_machine_params(key, decode=True) == {NAME: PLAIN}
    # a SecureData posted is stored exactly as it came, not re-sealed
    sd = _sealed(machines.get_machine_pub_key(key), "another-value")
    answer, status, _ = machines.post_machine_param_with_http_info(sd, key, NAME)
    assert status == 200 and answer == sd
    assert machines.get_machine_param(key, NAME) == sd
    assert http.get(f"/machines/{key}").json()["Params"][NAME] == sd
    assert machines.get_machine_param(key, NAME, decode=True) == "another-value"
    # in an object's Params too (create and PUT)
    other = _machine(http)
    sd = _sealed(machines.get_machine_pub_key(other), PLAIN)
    current = http.get(f"/machines/{other}").json()
    resp = http.put(f"/machines/{other}", json={**current, "Params": {NAME: sd}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["Params"][NAME] == sd
    assert machines.get_machine_param(other, NAME, decode=True) == PLAIN
    # the Schema is checked on the opened value
    short = _sealed(machines.get_machine_pub_key(key), "short")
    exc = refused(lambda: machines.post_machine_param_with_http_info(short, key, NAME))
    assert exc.status == 422 and "short" not in exc.body
    assert PLAIN.encode() not in _store_bytes(secure.server)
    assert b"another-value" not in _store_bytes(secure.server)


def test_rackn_client_on_another_kind(secure):
    http = secure.http
    http.post("/profiles", json={"Name": "pk-raw"}).raise_for_status()
    raw = RawModelApi(secure.client)  # RackN's generic set_param seals like post_machine_param
    answer = raw.set_param("profiles", "pk-raw", NAME, PLAIN)
    assert set(answer) == {"Key", "Nonce", "Payload"}
    profiles = secure.api(ProfilesApi)
    assert profiles.get_profile_param("pk-raw", NAME) == answer
    assert profiles.get_profile_param("pk-raw", NAME, decode=True) == PLAIN
    # a machine inheriting it decodes it with the profile's key (aggregate)
    key = _machine(http, Profiles=["pk-raw"])
    machines = secure.api(MachinesApi)
    assert machines.get_machine_param(key, NAME, aggregate=True) == answer
    assert machines.get_machine_param(key, NAME, aggregate=True, decode=True) == PLAIN
    assert machines.get_machine_params(key, aggregate=True, decode=True)[NAME] == PLAIN
    assert PLAIN.encode() not in _store_bytes(secure.server)


def test_sealed_to_another_key_is_refused(secure):
    machines = secure.api(MachinesApi)
    key, other = _machine(secure.http), _machine(secure.http)
    stranger = base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()
    for sd in (_sealed(stranger, PLAIN),  # a key this server never made
               _sealed(machines.get_machine_pub_key(other), PLAIN)):  # another object's
        exc = refused(lambda: machines.post_machine_param_with_http_info(sd, key, NAME))
        assert exc.status == 422
        body = error_body(exc)
        assert (body["Model"], body["Key"], body["Type"]) == ("machines", key,
                                                              "ValidationError")
        [message] = body["Messages"]
        assert message.startswith(f"Key '{NAME}': invalid val: ")
        assert "does not open with this server's key" in message
    assert machines.get_machine_params(key) == {}
    # one sealed for another object does not move with a copy either
    sealed = _sealed(machines.get_machine_pub_key(other), PLAIN)
    machines.post_machine_param_with_http_info(sealed, other, NAME)
    resp = secure.http.post(f"/machines/{key}/params", json={NAME: sealed})
    assert resp.status_code == 422 and len(resp.json()["Messages"]) == 1


def test_first_scheme_values_still_open(secure):
    machines = secure.api(MachinesApi)
    key = _machine(secure.http)
    machines.get_machine_pub_key(key)  # makes the store secret if nothing did yet
    [record] = [r["body"] for r in changes(secure.server, "secrets", "secure-params")]
    old = _first_scheme(record["Secret"], PLAIN)
    answer, status, _ = machines.post_machine_param_with_http_info(old, key, NAME)
    assert status == 200 and answer == old  # accepted (it opens), kept as it came
    assert machines.get_machine_param(key, NAME) == old
    assert machines.get_machine_param(key, NAME, decode=True) == PLAIN
    tampered = dict(old, Nonce=base64.b64encode(os.urandom(24)).decode())
    assert refused(lambda: machines.post_machine_param_with_http_info(
        tampered, key, NAME)).status == 422
    assert PLAIN.encode() not in _store_bytes(secure.server)


def test_a_passive_opens_what_the_active_stored(tmp_path):
    with in_sync_pair(tmp_path) as (a, b, token):
        with ha_http(a, token) as ca, ha_http(b, token) as cb:
            for name in ("pk-ha", "pk-ha-2"):
                ca.post("/params", json={"Name": name, "Secure": True}).raise_for_status()
            key = _machine(ca)
            public = ca.get(f"/machines/{key}/pubkey").json()
            assert cb.get(f"/machines/{key}/pubkey").json() == public  # derived, not written
            path = f"/machines/{key}/params/pk-ha"
            sd = _sealed(public, PLAIN)
            assert ca.post(path, json=sd).json() == sd
            # a plain value the active sealed (to the same derived key)
            ca.post(f"/machines/{key}/params/pk-ha-2", json=PLAIN).raise_for_status()
            assert cb.get(path).json() == sd
            assert cb.get(path, params={"decode": "true"}).json() == PLAIN
            assert cb.get(f"/machines/{key}/params", params={"decode": "true"}
                          ).json() == {"pk-ha": PLAIN, "pk-ha-2": PLAIN}
        for node in (a, b):
            assert PLAIN.encode() not in _store_bytes(node)
