"""Cluster trust end to end (issue 17): real dr-provision nodes on loopback enrol with the HA
token, replicate over mutual TLS with certificates from the cluster CA, and refuse whoever
lacks one: a stolen token, another CA's certificate, an expired one, a removed node, a man in
the middle. What an impostor receives is captured and checked to hold no token and no entry."""
from __future__ import annotations

import datetime
import json
import socket
import sqlite3
import ssl
import threading
import time

import httpx
import pytest
import trio
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from drp.ha import trust
from drp.ha.certs import ClusterCA, issue, node_identity
from tests.hacluster import (HA_ID, cluster, data_digest, info,  # noqa: F401  (fixtures)
                             seed, wait_in_sync)

REALTIME = "Stream switch to realtime streaming"


def pair(cluster, extra=()):
    a = cluster.node("a", passive=False, extra=extra)
    b = cluster.node("b", passive=True, extra=extra)
    b.wait_log(REALTIME)
    wait_in_sync(a, cluster.token, 1)
    return a, b


def wait_log_after(server, mark: int, text: str, timeout: float = 30) -> str:
    """Wait for `text` in what the server logged past `mark` (a length of its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = server.logs()[mark:]
        if text in tail:
            return tail
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged after the mark:\n{server.logs()[mark:][-3000:]}")


def node_cert(server) -> x509.Certificate:
    return x509.load_pem_x509_certificate(trust.node_cert_path(server.base_root).read_bytes())


def cluster_ca(server) -> ClusterCA:
    """The CA as the node's store holds it (read-only, beside the running node)."""
    db = sqlite3.connect(f"file:{server.base_root / 'drp.db'}?mode=ro", uri=True)
    try:
        body = db.execute("SELECT body FROM objects WHERE kind='secrets' AND key='cluster-ca'"
                          ).fetchone()[0]
    finally:
        db.close()
    return ClusterCA.from_dict(json.loads(json.loads(body)["Secret"]))


def bundle_of(server) -> str:
    return (server.base_root / "ha" / "bundle.pem").read_text()


async def replicate_frames(url: str, ctx: ssl.SSLContext, headers=(), sni=None) -> list[str]:
    """Dial /ha/replicate as an impostor would and return every frame it is sent."""
    host, port = url.removeprefix("https://").split(":")
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, ctx, server_hostname=sni or host, https_compatible=True)
    frames = []
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, f"{host}:{port}", "/api/v3/ha/replicate",
            extra_headers=list(headers))
        await ws.send_message(json.dumps({"type": "hello", "ha_id": HA_ID}))
        with trio.move_on_after(5):
            try:
                while True:
                    frames.append(await ws.get_message())
            except trio_websocket.ConnectionClosed:
                pass
        await ws.aclose()
        nursery.cancel_scope.cancel()
    return frames


def cluster_side_answer(server, ctx: ssl.SSLContext) -> bytes:
    """What the cluster side of the API port answers a replication upgrade with, read until
    it closes (b"" when it closes at once; an SSLError may also say so)."""
    got = b""
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=trust.CLUSTER_SNI) as tls:
        tls.sendall(b"GET /api/v3/ha/replicate HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n")
        try:
            while chunk := tls.recv(4096):
                got += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
    return got


def public_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def test_nodes_enrol_and_replicate_over_mutual_tls(cluster, tmp_path):
    a, b = pair(cluster)
    for server, drp_id in ((a, "node-a"), (b, "node-b")):
        cert = node_cert(server)
        assert node_identity(cert) == (HA_ID, drp_id)
        assert cert.issuer == cluster_ca(a).current.cert.subject  # the cluster's one CA
        assert trust.node_key_path(server.base_root).stat().st_mode & 0o077 == 0
    assert "enrolled in cluster test-cluster with active node-a" in b.logs()
    shown = json.loads(a.drpcli("system", "ha", "trust", token=cluster.token).stdout)
    assert shown["Certificate"]["Identity"] == f"{HA_ID}/node-a" and shown["Problem"] == ""
    assert len(shown["Roots"]) == 1 and shown["Removed"] == []
    # API clients still see the API's own certificate (self-signed here), not the node one
    public = x509.load_pem_x509_certificate(
        ssl.get_server_certificate(("127.0.0.1", a.api_port)).encode())
    assert node_identity(public) is None
    with a.client(token=cluster.token) as c:
        c.post("/machines", json={"Name": "over-mtls"}).raise_for_status()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = {json.loads(o[2]).get("Name") for o in data_digest(b)["objects"]
                 if o[0] == "machines"}
        if "over-mtls" in names:
            break
        time.sleep(0.05)
    assert "over-mtls" in names


def test_a_stolen_ha_token_without_a_cluster_certificate_gets_nothing(cluster):
    a, b = pair(cluster)
    with a.client(token=cluster.token) as c:
        c.post("/machines", json={"Name": "secret-machine"}).raise_for_status()
    auth = [(b"authorization", f"Bearer {cluster.token}".encode())]
    for sni in (None, trust.CLUSTER_SNI):  # the public side, and the cluster side without one
        frames = trio.run(replicate_frames, a.url, public_context(), auth, sni)
        assert len(frames) == 1, frames
        refusal = json.loads(frames[0])
        assert refusal["type"] == "refuse", refusal
        assert "presented no certificate" in refusal["reason"]
        assert "secret-machine" not in frames[0] and cluster.token not in frames[0]
    a.wait_log("refusing replication from 127.0.0.1: the peer presented no certificate")
    # and the bulk downloads of the cluster side: a node certificate or nothing
    with pytest.raises(ssl.SSLError):
        client_ctx = trust.client_context(None, None, bundle_of(a))
        with socket.create_connection(("127.0.0.1", a.api_port)) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="not-a-node") as tls:
            tls.sendall(b"GET /api/v3/ha/blobs/x HTTP/1.1\r\nHost: a\r\n\r\n")
            tls.recv(100)  # the chain the public side presents is not the cluster's


def _impostor_cert(ca: ClusterCA, drp_id: str, now: datetime.datetime, life):
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue(ca, drp_id, HA_ID, key.public_key(), now, life=life)
    return trust.cert_pem(cert), trust.key_pem(key)


@pytest.mark.parametrize("case", ["another_ca", "expired"])
def test_a_certificate_the_cluster_did_not_issue_or_that_expired_is_refused(cluster, case):
    a, b = pair(cluster)
    now = datetime.datetime.now(datetime.timezone.utc)
    if case == "another_ca":
        cert, key = _impostor_cert(ClusterCA.create(HA_ID, now), "node-b", now,
                                   datetime.timedelta(hours=1))
        want = "unable to get local issuer certificate"
    else:  # from the real CA (read off a node's disk), but its time is over
        cert, key = _impostor_cert(cluster_ca(a), "node-b", now, datetime.timedelta(seconds=1))
        time.sleep(1.5)
        want = "certificate has expired"
    ctx = trust.client_context(cert, key, bundle_of(b))
    # TLS 1.3: the client's handshake ends before the server has checked its certificate;
    # the refusal shows as a connection closed before any byte of an answer.
    assert cluster_side_answer(a, ctx) == b""
    a.wait_log(f"refused a TLS client certificate from 127.0.0.1: TLS: the peer's "
               f"certificate was refused ({want})")
    assert info(a, cluster.token)["ha_passive_state"][0]["state"] == "In-Sync"  # b is fine


class Impostor:
    """A TLS server at a loopback port pretending to be the active: a self-signed
    certificate naming node-a of this cluster; it records every plaintext byte it gets and
    answers discovery with a forged bundle (it cannot make the proof)."""

    def __init__(self):
        key = ed25519.Ed25519PrivateKey.generate()
        ca = ClusterCA.create(HA_ID, datetime.datetime.now(datetime.timezone.utc))
        self.cert = issue(ca, "node-a", HA_ID, key.public_key(),
                          datetime.datetime.now(datetime.timezone.utc))
        self.forged_bundle = ca.bundle_pem(datetime.datetime.now(datetime.timezone.utc))
        self.ctx = trust.server_context(trust.cert_pem(self.cert), trust.key_pem(key), "")
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.handshakes = self.failed = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    self.handshakes += 1
                    tls.settimeout(2)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.received += data
                    body = json.dumps({"HaId": HA_ID, "DrpId": "node-a",
                                       "Bundle": self.forged_bundle, "Proof": "0" * 64}).encode()
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                % (len(body), body))
            except (OSError, ssl.SSLError):
                self.failed += 1

    def close(self):
        self._stop = True
        self.sock.close()


def test_a_man_in_the_middle_gets_no_token_and_no_entry(cluster):
    a, b = pair(cluster)
    impostor = Impostor()
    try:
        # An enrolled node (b) pointed at the impostor: its chain is not the cluster's
        b.stop()
        b.args = b.ha_args()[:-1] + [f"https://127.0.0.1:{impostor.port}/"]
        mark = len(b.logs())
        cluster.start(b)
        wait_log_after(b, mark, "refusing the server at https://127.0.0.1:")
        line = next(ln for ln in b.logs()[mark:].splitlines() if "refusing the server" in ln)
        assert "the peer's certificate was refused" in line, line
        assert impostor.received == b""  # the handshake failed: nothing was written
        # A new node (c) pointed at it: discovery is answered without the proof
        c = cluster.node("c", passive=True, join=f"https://127.0.0.1:{impostor.port}/",
                         start=False)
        cluster.start(c)
        c.wait_log("does not prove it knows this node's HA token")
        assert b"GET /api/v3/system/ha/discover?nonce=" in impostor.received
        assert cluster.token.encode() not in impostor.received
        assert b"authorization" not in impostor.received.lower()
        assert b"/enroll" not in impostor.received and b"replicate" not in impostor.received
        assert not trust.node_cert_path(c.base_root).exists()
    finally:
        impostor.close()


def test_a_removed_node_is_cut_off_refused_and_can_be_admitted_again(cluster):
    a, b = pair(cluster)
    out = json.loads(a.drpcli("system", "ha", "remove", "node-b", token=cluster.token).stdout)
    assert out == {"Removed": ["node-b"]}
    a.wait_log("removed node-b from the cluster")
    # b's certificate now fails its own check too (the removal was replicated to it): it
    # tries to enrol afresh, and the active refuses that
    b.wait_log("node-b was removed from the cluster")
    a.wait_log("refused the enrolment of node-b from 127.0.0.1: node-b was removed from the "
               "cluster")
    deadline = time.monotonic() + 10
    while info(a, cluster.token)["ha_passive_state"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [s for s in info(a, cluster.token)["ha_passive_state"]
                if s.get("state") == "In-Sync"]
    with a.client(token=cluster.token) as c:  # the active serves on without it
        c.post("/machines", json={"Name": "after-removal"}).raise_for_status()
    # enrolling afresh with the HA token does not bring it back either
    b.stop()
    trust.node_cert_path(b.base_root).unlink()
    mark = len(b.logs())
    cluster.start(b)
    wait_log_after(b, mark, "cannot enrol again until it is taken off the removed list")
    assert REALTIME not in b.logs()[mark:]
    self_removal = a.drpcli("system", "ha", "remove", "node-a", token=cluster.token,
                            check=False)
    assert self_removal.returncode != 0 and "cannot remove itself" in self_removal.stderr
    assert json.loads(a.drpcli("system", "ha", "admit", "node-b",
                               token=cluster.token).stdout) == {"Removed": []}
    b.stop()
    mark = len(b.logs())
    cluster.start(b)
    assert "enrolled in cluster" in wait_log_after(b, mark, REALTIME)


def test_a_rotated_ha_token_keeps_the_cluster_replicating(cluster):
    a, b = pair(cluster)
    rotated = json.loads(a.drpcli("system", "ha", "rotate-token", token=cluster.token).stdout)
    new_token = rotated["Token"]
    assert new_token != cluster.token
    with a.client(token=cluster.token) as c:
        c.post("/machines", json={"Name": "after-rotation"}).raise_for_status()
    b.stop()  # b restarts with the old token: its certificate is all it needs
    mark = len(b.logs())
    cluster.start(b)
    assert "enrol" not in wait_log_after(b, mark, REALTIME)
    # the old token no longer enrols a new node; the new one does
    old = cluster.node("c", passive=True, start=False)
    cluster.start(old)
    old.wait_log("does not prove it knows this node's HA token")
    new = cluster.node("d", passive=True, start=False)
    new.args = [new_token if x == cluster.token else x for x in new.args]
    cluster.start(new)
    new.wait_log(REALTIME)
    # the new token is for enrolment only: it opens nothing on the API
    with a.client(token=new_token) as c:
        assert c.get("/machines").status_code == 401


def test_renewal_and_root_rotation_under_write_load_drop_no_session(cluster):
    a, b = pair(cluster, extra=("--ha-cert-life", "20s"))
    first_b = node_cert(b)
    acked, errors, stop = [], [], threading.Event()

    def writer():
        with a.client(token=cluster.token) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/machines", json={"Name": f"load-{i}"})
                if r.status_code == 201:
                    acked.append(f"load-{i}")
                else:
                    errors.append(r.text)
                i += 1
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(3)
        rotated = json.loads(a.drpcli("system", "ha", "rotate-ca", token=cluster.token).stdout)
        assert len(rotated["Roots"]) == 2  # the old root stays trusted
        time.sleep(14)  # past half of b's 20 s certificate: renewed from the new root
    finally:
        stop.set()
        thread.join()
    new_root = cluster_ca(a).current.cert.subject
    assert node_cert(b).issuer == new_root and node_cert(b) != first_b
    assert node_cert(a).issuer == new_root
    assert "renewed this node's certificate" in b.logs()
    assert b.logs().count(REALTIME) == 1, b.logs()[-3000:]  # never reconnected
    assert "reconnecting" not in b.logs()
    assert not errors and len(acked) > 50, (len(acked), errors[:3])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = {json.loads(o[2]).get("Name") for o in data_digest(b)["objects"]
                 if o[0] == "machines"}
        if set(acked) <= names:
            break
        time.sleep(0.1)
    assert set(acked) <= names  # every acknowledged write is on the passive


def test_a_node_down_longer_than_its_certificate_enrols_again_by_itself(cluster):
    """A lapsed certificate is not a dead end: the node enrols again with the HA token it
    was started with, and follows where it left off."""
    a, b = pair(cluster, extra=("--ha-cert-life", "10s"))
    b.stop()
    with a.client(token=cluster.token) as c:
        c.post("/machines", json={"Name": "while-b-was-down"}).raise_for_status()
    expired = node_cert(b).not_valid_after_utc
    time.sleep(max(0.0, (expired - datetime.datetime.now(datetime.timezone.utc))
                   .total_seconds()) + 1)
    mark = len(b.logs())
    cluster.start(b)
    tail = wait_log_after(b, mark, REALTIME)
    assert "expired at" in tail and "enrolling with the active" in tail, tail
    assert node_cert(b).not_valid_after_utc > expired
    assert "this node is at seq" in tail  # resumed from its position, no full copy


def test_a_users_new_secret_revokes_its_earlier_tokens(drp_factory):
    server = drp_factory("secret")
    with server.client() as c:
        c.post("/users", json={"Name": "bob", "Password": "b0b-pw"}).raise_for_status()
    token = json.loads(server.drpcli("users", "token", "bob", "ttl", "1h").stdout)["Token"]
    with server.client(token=token) as bob:
        assert bob.get("/info").status_code == 200
    server.drpcli("users", "update", "bob", '{"Secret": "a-new-secret"}')
    with server.client(token=token) as bob:
        refused = bob.get("/info")
    assert refused.status_code == 401 and refused.json()["Code"] == 401
    fresh = json.loads(server.drpcli("users", "token", "bob", "ttl", "1h").stdout)["Token"]
    with server.client(token=fresh) as bob:
        assert bob.get("/info").status_code == 200
    with server.client() as c:  # the secret is never served
        assert "Secret" not in c.get("/users/bob").json()
    with httpx.Client(base_url=server.url + "/api/v3", verify=False) as anon:
        assert anon.get("/system/ha/trust").status_code == 401
