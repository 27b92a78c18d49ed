"""HA replication between real dr-provision processes on loopback (issue 4)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import ssl
import sys
import time

import pytest

from tests.drpserver import DrpServer
from tests.hacluster import (cluster, data_digest, http, info,  # noqa: F401  (fixtures)
                             seed, wait_in_sync)

REALTIME = "Stream switch to realtime streaming"


def populate(server: DrpServer, token: str, tag: str, big: int = 0) -> dict:
    """Objects, files, an ISO, job logs, a content bundle and a plugin provider."""
    made = {"machines": [], "files": {}}
    with http(server, token) as c:
        for i in range(20):
            r = c.post("/machines", json={"Name": f"{tag}-m{i}", "Params": {"i": i}})
            assert r.status_code == 201, r.text
            made["machines"].append(r.json()["Uuid"])
        c.post("/profiles", json={"Name": f"{tag}-p", "Params": {"x": tag}}).raise_for_status()
        for i in range(3):
            data = os.urandom(1000 + i) + tag.encode()
            c.post(f"/files/{tag}/dir/f{i}.bin", content=data).raise_for_status()
            made["files"][f"{tag}/dir/f{i}.bin"] = data
        if big:
            c.post(f"/isos/{tag}.iso", content=os.urandom(big)).raise_for_status()
        job = c.post("/jobs", json={"Machine": made["machines"][0], "State": "running"})
        job.raise_for_status()
        made["job"] = job.json()["Uuid"]
        for line in range(5):
            c.put(f"/jobs/{made['job']}/log", content=f"{tag} line {line}\n".encode()
                  ).raise_for_status()
        bundle = {"meta": {"Name": f"{tag}-bundle", "Version": "1.0"},
                  "sections": {"tasks": {f"{tag}-task": {"Name": f"{tag}-task"}},
                               "params": {f"{tag}-param": {"Name": f"{tag}-param"}}}}
        c.post("/contents", json=bundle).raise_for_status()
        c.post(f"/plugin_providers/{tag}-plugin", content=b"#!/bin/sh\necho plugin\n"
               ).raise_for_status()
    return made


def assert_same_data(a: DrpServer, b: DrpServer, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        da, db = data_digest(a), data_digest(b)
        if da == db or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for part in ("objects", "blobs", "files", "head", "epochs"):
        assert da[part] == db[part], f"{part} differ between {a.base_root} and {b.base_root}"
    return da


def test_catchup_of_everything_then_realtime(cluster):
    a = cluster.node("a", passive=False)
    made = populate(a, cluster.token, "pre", big=1 << 20)
    b = cluster.node("b", passive=True)
    b.wait_log(REALTIME)
    wait_in_sync(a, cluster.token, 1)
    digest = assert_same_data(a, b)
    assert len(digest["objects"]) >= 27 and len(digest["files"]) == 6
    assert b.logs().count(REALTIME) == 1
    # the passive serves reads from its replica, with the replicated users
    with http(b, cluster.token) as c:
        assert c.get("/files/pre/dir/f1.bin").content == made["files"]["pre/dir/f1.bin"]
        assert c.get(f"/jobs/{made['job']}/log").text.count("pre line") == 5
        assert c.get("/tasks/pre-task").json()["ReadOnly"] is True
        refused = c.post("/machines", json={"Name": "nope"})
        assert refused.status_code == 503
        assert "passive" in refused.json()["Messages"][0] and refused.json()["Code"] == 503
    # and keeps following in real time: job-log appends replicate as appends
    populate(a, cluster.token, "post")
    assert_same_data(a, b)
    ia, ib = info(a, cluster.token), info(b, cluster.token)
    assert ia["ha_is_active"] and ia["ha_status"] == "Up"
    assert ia["ha_passive_state"][0]["id"] == "node-b"
    assert ia["ha_passive_state"][0]["state"] == "In-Sync"
    assert not ib["ha_is_active"] and ib["ha_status"] == "In-Sync"
    assert ib["ha_active_id"] == "node-a"


def test_full_catchup_behind_retention_and_resume(cluster):
    """A passive behind the retained log gets snapshot + blobs; killed midway, it resumes
    without fetching again the blobs it had finished."""
    a = cluster.node("a", passive=False, extra=["--ha-log-retention", "5"])
    with http(a, cluster.token) as c:
        for i in range(40):
            c.post(f"/isos/big{i}.iso", content=os.urandom(4 << 20)).raise_for_status()
        for i in range(1200):  # enough writes for the log to be trimmed
            c.post("/profiles", json={"Name": f"p{i}"}).raise_for_status()
    b = cluster.node("b", passive=True)
    b.wait_log("catch-up: snapshot at seq")
    isos = b.base_root / "tftpboot" / "isos"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(isos.glob("*.iso"))) < 5:
        time.sleep(0.01)
    b.kill()
    finished = len(list(isos.glob("*.iso")))
    assert 0 < finished < 40, f"kill landed at {finished} finished blobs; make them bigger"
    cluster.start(b)
    b.wait_log(REALTIME)
    kept = [int(m) for m in re.findall(r"keeping (\d+)", b.logs())]
    assert kept[-1] >= finished, b.logs()
    assert_same_data(a, b)
    # ISOs come from the active's static port (plain HTTP, checked against the sha256s)
    fetched, from_static = re.findall(r"blobs (\d+) bytes in .*\((\d+) blob bytes from the "
                                      r"static port\)", b.logs())[-1]
    assert 0 < int(from_static) <= int(fetched), b.logs()[-2000:]
    assert "static port" not in b.logs().replace("from the static port", ""), b.logs()[-2000:]



def test_full_catchup_replaces_changed_files_and_drops_deleted_ones(cluster):
    """A passive that was away while files changed, vanished and appeared takes a full
    catch-up: the changed file (same size, other bytes) is fetched again, the deleted one
    removed, the new one fetched; nothing is left in the partial directory."""
    a = cluster.node("a", passive=False, extra=["--ha-log-retention", "5"])
    b = cluster.node("b", passive=True)
    v1, v2 = os.urandom(3000), os.urandom(3000)
    with http(a, cluster.token) as c:
        for name, data in (("keep", os.urandom(2000)), ("change", v1), ("gone", b"bye")):
            c.post(f"/files/away/{name}.bin", content=data).raise_for_status()
    wait_in_sync(a, cluster.token, 1)
    assert_same_data(a, b)
    b.stop()
    with http(a, cluster.token) as c:
        c.post("/files/away/change.bin", content=v2).raise_for_status()
        c.delete("/files/away/gone.bin").raise_for_status()
        c.post("/files/away/new.bin", content=b"hello").raise_for_status()
        for i in range(1200):  # enough writes for the log to be trimmed past b's position
            c.post("/profiles", json={"Name": f"away{i}"}).raise_for_status()
    mark = len(b.logs())
    cluster.start(b)
    wait_in_sync(a, cluster.token, 1, timeout=60)
    assert_same_data(a, b)
    logs = b.logs()[mark:]
    assert "fetching 2 blobs" in logs and "keeping 1" in logs, logs[-3000:]
    assert "removed 1 files the active does not have" in logs, logs[-3000:]
    files = b.base_root / "tftpboot" / "files" / "away"
    assert (files / "change.bin").read_bytes() == v2 and not (files / "gone.bin").exists()
    assert (files / "new.bin").read_bytes() == b"hello"
    assert not list((b.base_root / "ha" / "partial").glob("*")), "left aside"
    with http(b, cluster.token) as c:
        r = c.get("/files/away/change.bin")
        assert r.content == v2
        assert r.headers["X-DRP-SHA256SUM"] == hashlib.sha256(v2).hexdigest()

def test_stream_resume_drops_files_a_crash_left_uncommitted(cluster):
    """Bytes land before their row commits; a node killed in between keeps bytes no log entry
    mentions. A passive resuming the stream drops them, as a full catch-up would."""
    a = cluster.node("a", passive=False)
    b = cluster.node("b", passive=True)
    b.wait_log(REALTIME)
    with http(a, cluster.token) as c:
        c.post("/files/keep.bin", content=b"kept").raise_for_status()
        job = c.post("/jobs", json={"Machine": c.post("/machines", json={"Name": "m"}).json()["Uuid"]})
        uuid = job.json()["Uuid"]
        c.put(f"/jobs/{uuid}/log", content=b"line 1\n").raise_for_status()
    wait_in_sync(a, cluster.token, 1)
    b.kill()
    (b.base_root / "tftpboot" / "files" / "stray.bin").write_bytes(b"never committed")
    with open(b.base_root / "job-logs" / uuid, "ab") as f:
        f.write(b"torn append\n")
    cluster.start(b)
    b.wait_log("removed 1 blob files and cut 1 job logs")
    b.wait_log(REALTIME)
    assert_same_data(a, b)


def test_second_connection_with_the_same_drp_id_is_refused_until_the_first_ends(cluster):
    """A node whose previous connection the active still holds is refused as busy and gets in
    within seconds of that connection ending (not after the 30 s of a refusal to fix)."""
    a = cluster.node("a", passive=False)
    b = cluster.node("b", passive=True)
    b.wait_log(REALTIME)
    twin = cluster.node("twin", passive=True, extra=["--drp-id", "node-b"])
    twin.wait_log("refused this node (busy)")
    assert "retrying in 5s" in twin.logs()
    assert REALTIME not in twin.logs()
    b.stop()
    twin.wait_log(REALTIME, timeout=15)
    assert [s["id"] for s in wait_in_sync(a, cluster.token, 1)] == ["node-b"]


def test_acknowledged_writes_are_on_passives_at_once(cluster):
    a = cluster.node("a", passive=False)
    b = cluster.node("b", passive=True)
    c3 = cluster.node("c", passive=True)
    b.wait_log(REALTIME)
    c3.wait_log(REALTIME)
    wait_in_sync(a, cluster.token, 2)
    with http(a, cluster.token) as ca, http(b, cluster.token) as cb, \
            http(c3, cluster.token) as cc:
        for i in range(40):
            r = ca.post("/machines", json={"Name": f"sync{i}"})
            assert r.status_code == 201
            key = r.json()["Uuid"]
            # the moment the client has its answer, every In-Sync passive has the write
            assert cb.get(f"/machines/{key}").status_code == 200
            assert cc.get(f"/machines/{key}").status_code == 200
            patched = ca.patch(f"/machines/{key}", json=[
                {"op": "add", "path": "/Params/n", "value": i}])
            assert patched.status_code == 200
            assert cb.get(f"/machines/{key}").json()["Params"]["n"] == i
        log_job = ca.post("/jobs", json={"Machine": key}).json()["Uuid"]
        for i in range(10):
            ca.put(f"/jobs/{log_job}/log", content=f"{i}\n".encode()).raise_for_status()
            assert cc.get(f"/jobs/{log_job}/log").text.endswith(f"{i}\n")
    assert_same_data(a, b)
    assert_same_data(a, c3)


def test_stopped_passive_does_not_block_writes(cluster):
    a = cluster.node("a", passive=False, extra=["--ha-sync-timeout", "1s"])
    b = cluster.node("b", passive=True)
    b.wait_log(REALTIME)
    wait_in_sync(a, cluster.token, 1)
    b.signal(signal.SIGSTOP)
    try:
        with http(a, cluster.token) as c:
            started = time.monotonic()
            c.post("/machines", json={"Name": "held"}).raise_for_status()
            held = time.monotonic() - started
            started = time.monotonic()
            for i in range(10):
                c.post("/machines", json={"Name": f"free{i}"}).raise_for_status()
            free = time.monotonic() - started
        assert 0.9 <= held < 4, f"the first write waited {held:.2f}s"
        assert free < 2, f"ten writes took {free:.2f}s after the passive was dropped"
        a.wait_log("dropped to Syncing")
        assert info(a, cluster.token)["ha_passive_state"][0]["state"] == "Syncing"
    finally:
        b.signal(signal.SIGCONT)
    wait_in_sync(a, cluster.token, 1)  # rejoins once caught up
    assert_same_data(a, b)


def _passive_with_patch(cluster, name: str, patch: str) -> DrpServer:
    """A real passive process that claims another version or platform."""
    server = cluster.node(name, passive=True, start=False)
    code = f"import sys, drp, drp.node, drp.ha.follower as f; {patch}; " \
           "from drp.server import main; sys.argv[0] = 'dr-provision'; main()"
    server.command = lambda: [sys.executable, "-c", code, "--base-root",
                              str(server.base_root), "--api-port", str(server.api_port),
                              "--static-port", str(server.static_port), "--metrics-port", "0",
                              *server.args]
    return cluster.start(server)


@pytest.mark.parametrize("case", ["ha_id", "token", "version", "platform"])
def test_refusals_are_explained_on_both_sides(cluster, case):
    a = cluster.node("a", passive=False)
    if case == "ha_id":
        b = cluster.node("b", passive=True, start=False)
        b.args = [x if x != "test-cluster" else "other-cluster" for x in b.args]
        cluster.start(b)
        want = "set RS_HA_ID=test-cluster"
    elif case == "token":
        b = cluster.node("b", passive=True, start=False)
        i = b.args.index("--ha-token")
        b.args[i + 1] = "garbage.token"
        cluster.start(b)
        want = "RS_HA_TOKEN"
    elif case == "version":
        b = _passive_with_patch(cluster, "b", "f.__version__ = '5.0.0'")
        want = "install a 4.x release"
    else:
        b = _passive_with_patch(cluster, "b", "f.goarch = lambda: 'arm64'")
        want = "must share OS and architecture"
    b.wait_log(want)
    if case == "token":
        # The passive finds the active does not know its token from the discovery proof,
        # and sends nothing: the active never sees the token (so it has nothing to log).
        assert "does not prove it knows this node's HA token" in b.logs()
        assert "enrolled node-b" not in a.logs()
    else:
        a.wait_log(want)
    reason = info(b, cluster.token)["ha_reason"] if case != "token" else None
    if reason is not None:
        assert want in reason
    assert info(a, cluster.token)["ha_passive_state"] == []
    assert b.proc.poll() is None  # a refused passive stays up
    assert "ConnectionClosed" not in b.logs()  # the refusal is the first thing it hears


def test_divergent_old_active_is_detected_and_repaired(cluster):
    a = cluster.node("a", passive=False, start=False)
    b = cluster.node("b", passive=True, start=False)
    a.args = a.ha_args()[:-1] + [b.url + "/"]  # a's join (split-brain guard) looks at b
    cluster.start(a)
    cluster.start(b)
    b.wait_log(REALTIME)
    with http(a, cluster.token) as c:
        c.post("/machines", json={"Name": "shared"}).raise_for_status()
    b.stop()
    with http(a, cluster.token) as c:  # written while no passive could replicate it
        for i in range(3):
            c.post("/machines", json={"Name": f"lost{i}"}).raise_for_status()
    a.stop()
    cluster.start(b)
    b.signal(signal.SIGUSR1)  # operator promotes b while a is down
    b.wait_log("accepting writes")
    with http(b, cluster.token) as c:
        c.post("/machines", json={"Name": "after-failover"}).raise_for_status()
    cluster.start(a)  # a's ha-state.json still says active: the guard must keep it passive
    a.wait_log("refusing to become active")
    a.wait_log("dropping them and taking a full catch-up")
    a.wait_log(REALTIME)
    assert re.search(r"holds (\d+) change-log entries", a.logs()).group(1) == "3", a.logs()
    digest = assert_same_data(b, a)
    names = {json.loads(o[2]).get("Name") for o in digest["objects"] if o[0] == "machines"}
    assert "after-failover" in names and "shared" in names
    assert not any(n.startswith("lost") for n in names)
    assert json.loads((a.base_root / "ha-state.json").read_text()) == {"Passive": True}


def test_a_node_that_ran_standalone_is_told_so_when_it_joins(cluster):
    """The README's route: every node runs standalone first (`enable --now`), then joins."""
    cluster.node("a", passive=False)
    b = cluster.node("b", passive=True, start=False)
    ha_args = b.args
    b.args = ["--drp-id", "node-b"]  # standalone, as `systemctl enable --now` starts it
    b.start()
    with b.client() as c:  # its own default user: the cluster's token is not its yet
        c.post("/machines", json={"Name": "made-standalone"}).raise_for_status()
    b.stop()
    b.args = ha_args
    cluster.start(b)
    b.wait_log(REALTIME)
    log = b.logs()
    assert "this node ran standalone before it joined the cluster: its" in log
    assert "written while it was active" not in log  # it never was
    assert log.index("ran standalone before it joined") < log.index("catch-up done")
    assert "catch-up: this node's own data is kept in" in log


def test_a_new_api_certificate_on_the_active_needs_nothing_on_the_passives(cluster):
    """Nodes trust each other through the cluster CA, not the certificate the API shows its
    clients (self-signed, or the operator's --tls-cert): replacing that one needs no step on
    any passive (there is no trust on first use to undo)."""
    a = cluster.node("a", passive=False)
    b = cluster.node("b", passive=True)
    b.wait_log(REALTIME)
    public_before = ssl.get_server_certificate(("127.0.0.1", a.api_port))
    a.stop()
    for name in ("server.crt", "server.key"):  # a new self-signed certificate at the restart
        (a.base_root / name).unlink()
    mark = b.logs().count(REALTIME)
    cluster.start(a)
    assert ssl.get_server_certificate(("127.0.0.1", a.api_port)) != public_before
    deadline = time.monotonic() + 20
    while b.logs().count(REALTIME) <= mark and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.logs().count(REALTIME) > mark, b.logs()[-3000:]
    assert "refusing the active" not in b.logs()
    assert b.logs().count("enrolled in cluster") == 1  # at its first start, not again
