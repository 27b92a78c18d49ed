"""The operator's view of automatic failover (issue 14 rule 5): /api/v3/system/ha/state|peers|
leader|pause|resume and `drpcli system ha ...`, against a real dr-provision node and a real
3-member loopback etcd (no root: the VIP script only records its calls); and the etcd flags'
bad values, refused at start with exit 2 and one line."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.drpserver import BIN, DrpServer, clean_environ
from tests.etcdlab import etcd3, get  # noqa: F401  (etcd3 is a fixture)
from tests.hacluster import HA_ID, VIP, drpcli, make_token, recorder

NODE = "node-e"
PREFIX = f"/drp/{HA_ID}/"


def ha_node(tmp: Path, seed_root: Path, token: str, *extra: str) -> DrpServer:
    """One HA node over a copy of the seed's data (so `token` logs in), started and up."""
    server = DrpServer(tmp / NODE)
    subprocess.run(["cp", "-a", str(seed_root), str(server.base_root)], check=True)
    server.args = ["--drp-id", NODE, "--ha-enabled", "true", "--ha-id", HA_ID,
                   "--ha-address", VIP, "--ha-interface", "lo",
                   "--ha-interface-script", str(recorder(tmp)), "--ha-token", token,
                   "--ha-passive", "false", *extra]
    return server.start()


def state(server: DrpServer, token: str) -> dict:
    with server.client(token=token) as c:
        r = c.get("/system/ha/state")
        assert r.status_code == 200, r.text
        return r.json()


def wait_state(server: DrpServer, token: str, ok, what: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = state(server, token)
        if ok(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen after {timeout}s: {seen}\n{server.logs()[-3000:]}")


def led_by_node(s: dict) -> bool:
    """The node holds the key, and its own record in etcd says it is active."""
    mine = [m for m in s["Members"] if m["Id"] == NODE]
    return s["Leader"] == NODE and mine and mine[0]["Role"] == "active"


@pytest.fixture
def seed(tmp_path):
    return make_token(tmp_path)  # (base root, superuser token)


@pytest.fixture
def auto_node(tmp_path, seed, etcd3):  # noqa: F811
    """A single node with automatic failover: it takes the leader key by itself (the cluster
    never had an active)."""
    seed_root, token = seed
    server = ha_node(tmp_path, seed_root, token, "--ha-etcd-endpoints", etcd3.endpoints_arg)
    try:
        wait_state(server, token, led_by_node, f"{NODE} active and leader")
        yield server, token, etcd3
    finally:
        server.kill()


def test_state_peers_leader_pause_resume(auto_node):
    server, token, ec = auto_node
    s = state(server, token)
    assert s["Mode"] == "etcd" and s["Endpoints"] == ec.endpoints and s["Prefix"] == PREFIX
    assert s["Leader"] == NODE and s["Sync"] == [] and s["Epoch"] >= 1
    assert s["Paused"] is False and s["PausedBy"] == "" and s["Switchover"] is None
    assert [m["Id"] for m in s["Members"]] == [NODE]
    assert s["ThisNode"]["Id"] == NODE and s["ThisNode"]["Role"] == "active"
    assert s["ThisNode"]["ApiPort"] == server.api_port
    with server.client(token=token) as c:
        peers = c.get("/system/ha/peers")
        assert peers.status_code == 200 and [m["Id"] for m in peers.json()] == [NODE]
        assert peers.json()[0]["Role"] == "active"
        leader = c.get("/system/ha/leader")
        assert leader.status_code == 200
        mine = peers.json()[0]  # the leader's address is the one its record publishes
        assert leader.json() == {"Leader": NODE, "Address": mine["Address"],
                                 "ApiPort": server.api_port}

        paused = c.post("/system/ha/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["Paused"] is True and paused.json()["PausedBy"] == "rocketskates"
        assert json.loads(get(ec.endpoints[0], PREFIX + "paused"))["By"] == "rocketskates"
        assert state(server, token)["Paused"] is True
        resumed = c.post("/system/ha/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["Paused"] is False and resumed.json()["PausedBy"] == ""
        assert get(ec.endpoints[0], PREFIX + "paused") is None
        assert c.post("/system/ha/resume").status_code == 200  # resuming twice is no error

    # drpcli prints the same answers
    def cli(*verb: str):
        return json.loads(drpcli(server, token, "system", "ha", *verb).stdout)
    s = cli("state")
    assert (s["Mode"], s["Leader"], s["Sync"], s["Paused"]) == ("etcd", NODE, [], False)
    assert [m["Id"] for m in cli("peers")] == [NODE]
    assert cli("leader")["Leader"] == NODE
    assert cli("pause")["Paused"] is True
    assert get(ec.endpoints[1], PREFIX + "paused") is not None
    assert cli("resume")["Paused"] is False
    assert get(ec.endpoints[2], PREFIX + "paused") is None


def test_etcd_down_answers_503_with_the_reason(auto_node):
    server, token, ec = auto_node
    for i in range(3):
        ec.kill(i)
    for path, method in (("/system/ha/state", "GET"), ("/system/ha/peers", "GET"),
                         ("/system/ha/leader", "GET"), ("/system/ha/pause", "POST")):
        with server.client(token=token) as c:
            r = c.request(method, path)
        assert r.status_code == 503, r.text
        body = r.json()
        assert set(body) == {"Model", "Key", "Type", "Messages", "Code"}
        assert body["Code"] == 503 and body["Model"] == "ha"
        assert len(body["Messages"]) == 1 and "no etcd member answered" in body["Messages"][0]
    res = drpcli(server, token, "system", "ha", "state", check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("Error: 503 ha state: cannot reach the cluster's etcd")


def test_manual_mode_answers_its_own_view_and_refuses_pause(tmp_path, seed):
    seed_root, token = seed
    server = ha_node(tmp_path, seed_root, token)  # no --ha-etcd-endpoints: manual HA
    try:
        s = wait_state(server, token, lambda s: s["Leader"] == NODE, "the manual active")
        assert s["Mode"] == "manual" and s["Sync"] == [] and s["Paused"] is False
        assert [m["Id"] for m in s["Members"]] == [NODE] and s["ThisNode"]["Role"] == "active"
        with server.client(token=token) as c:
            assert c.get("/system/ha/leader").json()["Leader"] == NODE
            assert [m["Id"] for m in c.get("/system/ha/peers").json()] == [NODE]
            for verb in ("pause", "resume"):
                r = c.post(f"/system/ha/{verb}")
                assert r.status_code == 409, r.text
                assert r.json()["Messages"] == [
                    "automatic failover is not configured: start the nodes with "
                    "--ha-etcd-endpoints"]
            # only a superuser may look (as for the certificate pins)
            assert c.post("/users", json={"Name": "op", "Roles": []}).status_code == 201
            assert c.put("/users/op/password", json={"password": "pw"}).status_code == 200
        with server.client(auth=("op", "pw")) as c:
            r = c.get("/system/ha/state")
            assert r.status_code == 403 and r.json()["Type"] == "AUTH_ERROR"
        res = drpcli(server, token, "system", "ha", "pause", check=False)
        assert res.returncode == 1 and "409 ha pause: automatic failover is not configured" \
            in res.stderr
        assert json.loads(drpcli(server, token, "system", "ha", "state").stdout)["Mode"] \
            == "manual"
    finally:
        server.kill()


def test_without_ha_the_node_is_its_own_leader(tmp_path, seed):
    seed_root, token = seed
    server = DrpServer(seed_root, ["--drp-id", "solo"]).start()  # --ha-enabled false
    try:
        s = state(server, token)
        assert (s["Mode"], s["Leader"], s["Paused"]) == ("manual", "solo", False)
        assert s["ThisNode"]["Role"] == "standalone" and s["Members"][0]["Id"] == "solo"
        with server.client(token=token) as c:
            assert c.post("/system/ha/pause").status_code == 409
    finally:
        server.kill()


def test_drpcli_help_for_each_subverb():
    for verb in ("state", "peers", "leader", "pause", "resume"):
        for flag in ("--help", "-h"):
            res = subprocess.run([str(BIN / "drpcli"), "system", "ha", verb, flag],
                                 env=clean_environ(), text=True, capture_output=True,
                                 timeout=60)
            assert res.returncode == 0 and res.stderr == "", res
            lines = res.stdout.splitlines()
            assert lines[0] == f"usage: drpcli system ha {verb}"
            assert f"  drpcli system ha {verb}" in lines
    res = subprocess.run([str(BIN / "drpcli"), "system", "ha", "--help"], env=clean_environ(),
                         text=True, capture_output=True, timeout=60)
    assert res.stdout.startswith("usage: drpcli system ha SUBVERB\n")
    assert "state, peers, leader, pause, resume" in res.stdout
    res = subprocess.run([str(BIN / "drpcli"), "system", "ha", "frob"], env=clean_environ(),
                         text=True, capture_output=True, timeout=60)
    assert res.returncode == 1 and "unknown verb 'frob' for system ha" in res.stderr


# ---- the etcd flags' bad values: exit 2, one line, nothing created ---------------------------
HA_OK = ["--ha-enabled", "true", "--ha-id", "c1", "--ha-address", "192.168.124.200/24",
         "--ha-token", "tok", "--ha-interface", "lo"]
BAD = {
    "endpoint-not-http": (["--ha-etcd-endpoints", "ftp://x"], "ftp://x"),
    "endpoints-empty": (["--ha-etcd-endpoints", ""], "--ha-etcd-endpoints"),
    "lease-ttl-below-2s": (["--ha-lease-ttl", "1s"], "2s to 60s"),
    "lease-ttl-not-whole": (["--ha-lease-ttl", "2.5s"], "whole number of seconds"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_etcd_flags_exit_2_with_one_line(tmp_path, case):
    args, needle = BAD[case]
    base = tmp_path / "never-created"
    res = subprocess.run([str(BIN / "dr-provision"), "--base-root", str(base), *HA_OK, *args],
                         env=clean_environ(), text=True, capture_output=True, timeout=60)
    assert res.returncode == 2, res
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and res.stdout == "", res
    assert lines[0].startswith("dr-provision: ") and args[0] in lines[0], lines[0]
    assert needle in lines[0], lines[0]
    assert not base.exists()
