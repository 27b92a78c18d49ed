"""The authenticator's caches (issue 16, "Speed"): a checked Bearer token and a user's compiled
claims are remembered, and forgotten the moment what they were derived from changes: the user
(a new password, other Roles, deleted), a role's Claims, the cluster's token secret; a token's
expiry is checked on every use. Against a real store, and end to end against a real drp.
"""
from __future__ import annotations

import time

import pytest
import trio

from drp import auth, claims
from drp.api import rbac, throttle
from drp.api.authn import Authenticator
from drp.api.errors import ApiError
from drp.config import load
from tests.storeutil import put

SECRET = "cluster-secret-1"


@pytest.fixture
async def authn(store, tmp_path):
    await store.write(put("secrets", "token", {"Name": "token", "Secret": SECRET}))
    await store.write(put("users", "alice", {"Name": "alice", "Secret": "alice-1",
                                             "Roles": ["reader"]}))
    await store.write(put("roles", "reader", {"Name": "reader", "Claims": [
        {"scope": "profiles", "action": "get", "specific": "*"}]}))
    return Authenticator(store, None, load(["--base-root", str(tmp_path)], {}))


def _token(user: str = "alice", user_secret: str = "alice-1", ttl: float = 3600,
           secret: str = SECRET) -> str:
    return auth.make_token(secret, user, ttl, user_secret)[0]


async def _refused(authn: Authenticator, token: str) -> ApiError:
    with pytest.raises(ApiError) as err:
        await authn.check_token(token, "127.0.0.1")
    assert err.value.code == 401, err.value.body()
    return err.value


async def test_a_good_token_is_checked_once_then_remembered(authn):
    token = _token()
    user = await authn.check_token(token)
    assert user["Name"] == "alice" and token in authn._tokens
    assert await authn.check_token(token) is user  # the remembered answer, same user object


async def test_forged_tokens_are_not_remembered(authn):
    forged = _token(secret="not-the-cluster-secret")
    for _ in range(2):
        await _refused(authn, forged)
    assert forged not in authn._tokens


async def test_a_new_user_secret_revokes_a_remembered_token(authn, store):
    token = _token()
    await authn.check_token(token)
    await store.write(put("users", "alice", {"Name": "alice", "Secret": "alice-2",
                                             "Roles": ["reader"]}, "update"))
    await _refused(authn, token)
    assert (await authn.check_token(_token(user_secret="alice-2")))["Secret"] == "alice-2"


async def test_a_deleted_user_revokes_a_remembered_token(authn, store):
    token = _token()
    await authn.check_token(token)
    await store.write(put("users", "alice", None, "delete"))
    await _refused(authn, token)


async def test_a_new_cluster_secret_revokes_a_remembered_token(authn, store):
    token = _token()
    await authn.check_token(token)
    await store.write(put("secrets", "token", {"Name": "token", "Secret": "cluster-secret-2"},
                          "update"))
    await _refused(authn, token)
    await authn.check_token(_token(secret="cluster-secret-2"))


async def test_a_remembered_token_still_expires(authn):
    token, issued = auth.make_token(SECRET, "alice", 0.2, "alice-1")
    await authn.check_token(token)
    assert token in authn._tokens
    await trio.sleep(max(0.0, issued["exp"] - time.time()) + 0.05)
    err = await _refused(authn, token)
    assert "expired" in err.body()["Messages"][0]


async def test_claims_follow_the_users_roles_and_the_roles_claims(authn, store):
    user = await authn.check_token(_token())
    got = await authn.claims(user)
    assert await authn.claims(user) is got  # remembered for this very user object
    assert claims.allowed(got, "profiles", "get", "p1")
    assert not claims.allowed(got, "machines", "get", "m1")
    # the role's Claims change: the same user object gets the new claims
    await store.write(put("roles", "reader", {"Name": "reader", "Claims": [
        {"scope": "machines", "action": "get", "specific": "*"}]}, "update"))
    got = await authn.claims(user)
    assert claims.allowed(got, "machines", "get", "m1")
    assert not claims.allowed(got, "profiles", "get", "p1")
    # the user's Roles change: its new object has the new roles' claims
    await store.write(put("users", "alice", {"Name": "alice", "Secret": "alice-1",
                                             "Roles": ["superuser"]}, "update"))
    user = await authn.check_token(_token())
    assert user["Roles"] == ["superuser"]
    assert claims.is_superuser(await authn.claims(user))
    # the old object, still held by a request that started before: never the new claims
    await store.write(put("users", "alice", {"Name": "alice", "Secret": "alice-1",
                                             "Roles": []}, "update"))
    user = await authn.check_token(_token())
    assert not claims.allowed(await authn.claims(user), "machines", "get", "m1")


def test_remembered_needs_and_sources_are_the_same_values():
    need = rbac.need_for("objects.get_object", {"kind": "profiles", "key": "p1"}, "GET", "u")
    assert need == rbac.Need("profiles", "get", "p1")
    create = rbac.need_for("objects.create_object", {"kind": "users"}, "POST", "u")
    assert create == rbac.Need("users", "create", "", superuser=True)
    assert rbac.need_for("objects.create_object", {"kind": "users"}, "POST", "u") is create
    assert throttle.source_key("2001:db8::1") == throttle.source_key("2001:db8::2") \
        == "2001:db8::/64"
    assert throttle.source_key("::ffff:198.18.0.1") == "198.18.0.1"


# ---- end to end, against a real drp process ---------------------------------------------------
def test_a_real_server_revokes_and_reauthorizes_remembered_tokens(drp):
    with drp.client() as api:
        assert api.post("/profiles", json={"Name": "speed-p1"}).status_code == 201
        assert api.post("/roles", json={"Name": "speed-reader", "Claims": [
            {"Scope": "profiles", "Action": "get", "Specific": "*"}]}).status_code == 201
        assert api.post("/users", json={"Name": "speed-u", "Password": "pw-1",
                                        "Roles": ["speed-reader"]}).status_code == 201
        token = api.get("/users/speed-u/token").json()["Token"]
        with drp.client(token=token) as cl:
            for _ in range(3):  # the 2nd and 3rd answer come from the caches
                assert cl.get("/profiles/speed-p1").status_code == 200
            assert cl.get("/machines").status_code == 403
            # the role loses the claim: the same token is refused at once
            r = api.put("/roles/speed-reader", json={"Name": "speed-reader", "Claims": [
                {"Scope": "machines", "Action": "list", "Specific": "*"}]})
            assert r.status_code == 200, r.text
            assert cl.get("/profiles/speed-p1").status_code == 403
            assert cl.get("/machines").status_code == 200
            # the user's Roles change: refused and allowed as the new roles say
            r = api.patch("/users/speed-u", json=[
                {"op": "replace", "path": "/Roles", "value": []}])
            assert r.status_code == 200, r.text
            assert cl.get("/machines").status_code == 403
            assert cl.get("/users/speed-u").status_code == 200  # a user may read itself
            # a new password revokes the token
            r = api.put("/users/speed-u/password", json={"password": "pw-2"})
            assert r.status_code == 200, r.text
            assert cl.get("/users/speed-u").status_code == 401
