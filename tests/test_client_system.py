"""RackN's Python client (drppy-client) against a real drp: Info, user tokens, prefs and the
system actions (issue 16 items 1, 5, 6), and drpcli's `prefs` and `system action(s)` verbs."""
from __future__ import annotations

import json
import uuid

import trio
from drppy_client import InfoApi, PrefsApi, SystemApi, UsersApi
from drppy_client.models import HaPassiveState, Info, Stat, UserToken

from drp.store.store import Store
from tests.drppy import client_for, drppy, error_body, refused  # noqa: F401  (the fixture)
from tests.hacluster import in_sync_pair
from tests.storeutil import promote, put


def refusal(call, code: int) -> dict:
    """The dr-provision error body of a call the server must refuse with `code`."""
    e = refused(call)
    assert e.status == code, e.body
    return error_body(e)


# ---- /info ------------------------------------------------------------------------------------
def test_info_parses_as_dr_provisions_info(drppy):
    info = drppy.api(InfoApi).get_info()  # the client's model refuses a missing required field
    assert isinstance(info, Info)
    assert (info.dhcp_enabled, info.tftp_enabled, info.binl_enabled, info.dns_enabled) == (
        False, False, False, False)  # drp serves none of them yet
    assert (info.dhcp_port, info.tftp_port, info.binl_port, info.dns_port) == (67, 69, 4011, 53)
    assert info.prov_enabled is True and info.file_port == drppy.server.static_port
    assert info.secure_prov_enabled is False and info.secure_file_port == 8090
    assert info.api_port == drppy.server.api_port and info.manager is False
    assert info.id and info.local_id == info.id and info.ha_active_id == info.id
    assert uuid.UUID(info.uuid) and info.ha_consensus_id == ""  # not in an HA cluster
    assert info.ha_enabled is False and info.ha_is_active is True and info.ha_status == "Up"
    assert info.ha_passive_state == [] and info.errors == []
    assert all(isinstance(s, Stat) for s in info.stats)
    counts = {s.name: s.count for s in info.stats}
    assert counts["machines.count"] == 0 and counts["subnets.count"] == 0
    assert counts["users.count"] >= 1 and "prefs.count" not in counts
    assert drppy.api(InfoApi).get_info().uuid == info.uuid  # the same node, the same uuid


def test_info_of_an_ha_pair_and_its_prefs(tmp_path):
    """A loopback active + passive: each Info parses (ha_passive_state as HaPassiveState), each
    node has its own uuid, and a pref set on the active is on the passive when POST returns."""
    with in_sync_pair(tmp_path) as (a, b, token):
        ia, ib = InfoApi(client_for(a)).get_info(), InfoApi(client_for(b)).get_info()
        assert ia.ha_enabled and ia.ha_is_active and not ib.ha_is_active
        assert ia.ha_consensus_id == ia.uuid and ib.ha_consensus_id == ib.uuid != ia.uuid
        [passive] = ia.ha_passive_state
        assert isinstance(passive, HaPassiveState)
        assert (passive.id, passive.state, passive.electable) == ("node-b", "In-Sync", True)
        PrefsApi(client_for(a)).set_prefs(body={"logLevel": "debug"})
        assert PrefsApi(client_for(b)).list_prefs()["logLevel"] == "debug"
        body = refusal(lambda: PrefsApi(client_for(b)).set_prefs(body={"logLevel": "info"}), 503)
        assert body["Type"] == "HA_PASSIVE"


def test_user_token_embeds_info(drppy):
    # The client is wrong here: get_user_token puts the user name in the query string
    # (?name=...) and leaves {name} in the path unfilled, so it asks for a user literally
    # named "{name}". Shown, then the call made through the client's own call_api.
    refusal(lambda: drppy.api(UsersApi).get_user_token("rocketskates"), 404)
    got = drppy.client.call_api(
        "/users/{name}/token", "GET", {"name": "rocketskates"}, [("ttl", "600")], {},
        response_type="UserToken", auth_settings=["basicAuth"], _return_http_data_only=True)
    assert isinstance(got, UserToken) and got.token
    assert isinstance(got.info, Info) and uuid.UUID(got.info.uuid)
    assert got.info.uuid == drppy.api(InfoApi).get_info().uuid


# ---- /prefs -----------------------------------------------------------------------------------
def test_prefs_list_and_set(drppy):
    prefs = drppy.api(PrefsApi)
    listed = prefs.list_prefs()
    assert listed["defaultBootEnv"] == "local" and listed["unknownBootEnv"] == "ignore"
    assert listed["knownTokenTimeout"] == "3600" and listed["logLevel"] == "warn"
    assert all(isinstance(v, str) for v in listed.values())
    assert "baseTokenSecret" not in listed  # the token secret never leaves the store

    merged = prefs.set_prefs(body={"knownTokenTimeout": "7200", "logLevel": "info"})
    assert merged == {**listed, "knownTokenTimeout": "7200", "logLevel": "info"}
    assert prefs.list_prefs() == merged
    assert prefs.set_prefs(body={}) == merged  # nothing to merge: the map as it is


def test_prefs_refuse_unknown_names_and_bad_values_whole(drppy):
    prefs = drppy.api(PrefsApi)
    before = prefs.list_prefs()
    body = refusal(lambda: prefs.set_prefs(body={"unknownTokenTimeout": "900", "greg": "x"}),
                   422)
    assert body["Model"] == "prefs" and body["Messages"] == ["Unknown preference greg"]
    for bad, words in [({"knownTokenTimeout": "soon"}, "not an integer"),
                       ({"logLevel": "loud"}, "not a log level"),
                       ({"defaultBootEnv": "nosuch"}, "Bootenv nosuch does not exist"),
                       ({"baseTokenSecret": "x" * 32}, "does not take it")]:
        msgs = refusal(lambda: prefs.set_prefs(body=bad), 422)["Messages"]
        assert len(msgs) == 1 and words in msgs[0], msgs
    assert prefs.list_prefs() == before  # one bad name stores none of the others
    # not a map of strings: dr-provision's map[string]string does not decode it
    r = drppy.http.post("/prefs", json={"knownTokenTimeout": 7200})
    assert r.status_code == 400 and r.json()["Model"] == "prefs"


def test_prefs_bootenvs_must_exist_and_fit(drppy):
    prefs = drppy.api(PrefsApi)
    for name, only_unknown in (("known-be", False), ("discover-be", True)):
        r = drppy.http.post("/bootenvs", json={"Name": name, "OnlyUnknown": only_unknown})
        assert r.status_code == 201, r.text
    msgs = refusal(lambda: prefs.set_prefs(body={"unknownBootEnv": "known-be"}), 422)
    assert msgs["Messages"] == ["unknownBootEnv: bootenv known-be must have OnlyUnknown true"]
    refusal(lambda: prefs.set_prefs(body={"defaultBootEnv": "discover-be"}), 422)
    got = prefs.set_prefs(body={"defaultBootEnv": "known-be", "unknownBootEnv": "discover-be"})
    assert (got["defaultBootEnv"], got["unknownBootEnv"]) == ("known-be", "discover-be")
    # /prefs is not a kind any more: no /prefs/<name> object route
    assert drppy.http.get("/prefs/defaultBootEnv").status_code == 404


def test_prefs_from_an_older_store_keep_their_values(drp_factory):
    """A store from when prefs was a kind of {Name, Val} objects: the values read back."""
    server = drp_factory("old-prefs")
    server.stop()

    async def write_old_pref():
        store = Store(server.base_root / "drp.db")
        try:
            await store.write(put("prefs", "knownTokenTimeout", {
                "Name": "knownTokenTimeout", "Val": "5000", "Meta": {}, "Params": {},
                "Validated": True, "Available": True, "Errors": [], "ReadOnly": False}))
        finally:
            store.close()
    trio.run(write_old_pref)
    server.start()
    client = client_for(server)
    prefs = PrefsApi(client).list_prefs()
    assert prefs["knownTokenTimeout"] == "5000" and prefs["unknownTokenTimeout"] == "600"
    first = InfoApi(client).get_info().uuid
    server.stop()
    server.start()
    assert InfoApi(client_for(server)).get_info().uuid == first  # kept across a restart


def test_a_pref_change_replays_on_a_passive(tmp_path):
    """prefs is no kind any more, yet its changes ride the change log: a replica's replay of
    one stores it (before, the replay refused it as an unknown change kind)."""
    async def main():
        active, passive = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
        try:
            await active.write(promote(1))
            await active.write(put("prefs", "logLevel", {"Name": "logLevel", "Val": "info"}))
            await passive.apply_replicated(await active.entries_after(0))
            assert await passive.list("prefs") == [{"Name": "logLevel", "Val": "info"}]
        finally:
            active.close()
            passive.close()
    trio.run(main)


def test_prefs_claims(drppy):
    """dr-provision's claims: prefs/list reads the map, prefs/post sets it."""
    http = drppy.http
    assert http.post("/roles", json={"Name": "prefs-reader", "Claims": [
        {"Scope": "prefs", "Action": "list", "Specific": "*"}]}).status_code == 201
    assert http.post("/users", json={"Name": "pref-reader", "Password": "pw-reader",
                                     "Roles": ["prefs-reader"]}).status_code == 201
    reader = PrefsApi(client_for(drppy.server, "pref-reader", "pw-reader"))
    assert reader.list_prefs()["defaultStage"] == "none"
    body = refusal(lambda: reader.set_prefs(body={"logLevel": "error"}), 403)
    assert body["Model"] == "prefs" and "prefs/post" in body["Messages"][0]


# ---- /system/actions, /system/upgrade ------------------------------------------------------------
def test_system_actions(drppy):
    system = drppy.api(SystemApi)
    assert system.get_system_actions() == [] == system.get_system_actions(plugin="fred")
    body = refusal(lambda: system.get_system_action("reboot"), 404)
    assert (body["Model"], body["Key"]) == ("system", "reboot")
    assert "Action reboot on system" in body["Messages"][0] and "no plugins" in body["Messages"][0]
    body = refusal(lambda: system.post_system_action("reboot", {"x": "1"}), 404)
    assert body["Key"] == "reboot"
    # upgrading through the API is dr-provision's binary swap: drp answers why not
    for call in (system.system_status, system.system_update_exec, system.system_update_unstage):
        body = refusal(call, 501)
        assert body["Model"] == "system" and "install.sh" in body["Messages"][0]


# ---- drpcli -----------------------------------------------------------------------------------
def test_drpcli_prefs_and_system_actions(drppy):
    server = drppy.server
    listed = json.loads(server.drpcli("prefs", "list").stdout)
    assert listed["unknownTokenTimeout"] in ("600", "900") and "defaultStage" in listed
    got = json.loads(server.drpcli("prefs", "set", "unknownTokenTimeout", "1200",
                                   "debugDhcp", "debug").stdout)
    assert got["unknownTokenTimeout"] == "1200" and got["debugDhcp"] == "debug"
    got = json.loads(server.drpcli("prefs", "set", '{"debugDhcp": "error"}').stdout)
    assert got["debugDhcp"] == "error" and got["unknownTokenTimeout"] == "1200"
    got = json.loads(server.drpcli("prefs", "set", "-", input='{"debugDhcp": "info"}').stdout)
    assert got["debugDhcp"] == "info"

    bad = server.drpcli("prefs", "set", "greg", "ignore", check=False)
    assert bad.returncode == 1 and "Unknown preference greg" in bad.stderr
    odd = server.drpcli("prefs", "set", "logLevel", check=False)
    assert odd.returncode == 1 and "NAME VALUE pairs" in odd.stderr

    assert json.loads(server.drpcli("system", "actions").stdout) == []
    missing = server.drpcli("system", "action", "reboot", check=False)
    assert missing.returncode == 1 and "Action reboot on system" in missing.stderr
    ran = server.drpcli("system", "runaction", "reboot", "force", "true", check=False)
    assert ran.returncode == 1 and "Not Found" in ran.stderr
