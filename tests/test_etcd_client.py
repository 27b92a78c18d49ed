"""drp.ha.etcd against a real etcd member: conditions, leases, endpoint failover, and TLS
with client certificates (--ha-etcd-ca/--ha-etcd-cert/--ha-etcd-key), also through a real
dr-provision node."""
from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drp.ha.etcd import Absent, Created, Delete, Etcd, EtcdError, Modified, Put
from tests.drpserver import DrpServer, free_port
from tests.etcdlab import ETCD, etcd3  # noqa: F401 (fixture)
from tests.hacluster import make_token, recorder

pytestmark = pytest.mark.skipif(not os.path.exists(ETCD), reason="needs Debian's etcd-server")


def test_conditions_and_leases(etcd3):
    etcd = Etcd(etcd3.endpoints)
    lease, granted = etcd.grant(1)
    assert granted == 2  # etcd's shortest lease at its default heartbeat/election
    won, revision = etcd.txn([Absent("/t/leader"), Modified("/t/sync", 0)],
                             [Put("/t/leader", "a", lease)])
    assert won
    assert not etcd.txn([Absent("/t/leader")], [Put("/t/leader", "b", lease)])[0]
    kv = etcd.get("/t/leader")
    assert (kv.value, kv.create_revision, kv.lease) == ("a", revision, lease)
    # A condition on the incarnation of the key: a re-created key is another one.
    assert etcd.txn([Created("/t/leader", revision)], [Put("/t/sync", "{}")])[0]
    assert not etcd.txn([Created("/t/leader", revision + 100)], [Put("/t/sync", "x")])[0]
    assert etcd.get("/t/sync").value == "{}"
    assert set(etcd.get_prefix("/t/")) == {"/t/leader", "/t/sync"}
    assert etcd.keepalive(lease) == 2
    etcd.revoke(lease)
    assert etcd.get("/t/leader") is None  # keys on a lease go with it
    assert etcd.keepalive(lease) == -1
    assert etcd.txn([], [Delete("/t/sync")])[0] and etcd.get("/t/sync") is None


def test_a_dead_member_is_skipped_and_none_is_one_line(etcd3):
    dead = f"http://127.0.0.1:{free_port()}"
    etcd = Etcd([dead, *etcd3.endpoints], timeout=0.5)
    etcd.put("/t/k", "v")
    assert etcd.get("/t/k").value == "v"
    for i in range(3):
        etcd3.kill(i)
    began = time.monotonic()
    with pytest.raises(EtcdError) as caught:
        etcd.get("/t/k")
    assert time.monotonic() - began < 5
    text = str(caught.value)
    assert "\n" not in text and text.startswith("no etcd member answered")
    assert all(url in text for url in [dead, *etcd3.endpoints])


# ---- TLS -----------------------------------------------------------------------------------
def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name=None, issuer_key=None, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_name or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path, cert=None, key=None):
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture
def tls_etcd(tmp_path):
    """One etcd member that serves TLS only and wants a client certificate from its CA."""
    ca_key, other_key = _key(), _key()
    ca = _cert("test etcd CA", ca_key, ca=True)
    other_ca = _cert("another CA", other_key, ca=True)
    files = {"ca": _write(tmp_path / "ca.pem", ca),
             "other_ca": _write(tmp_path / "other-ca.pem", other_ca)}
    for name, server in (("server", True), ("client", False), ("stranger", False)):
        key = _key()
        issuer, issuer_key = (other_ca, other_key) if name == "stranger" else (ca, ca_key)
        cert = _cert(name, key, issuer.subject, issuer_key, server=server)
        files[name] = _write(tmp_path / f"{name}.pem", cert)
        files[name + "_key"] = _write(tmp_path / f"{name}-key.pem", key=key)
    port, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    log = open(tmp_path / "etcd.log", "w")
    proc = subprocess.Popen(
        [ETCD, "--name", "tls0", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"tls0=http://127.0.0.1:{peer}",
         "--cert-file", files["server"], "--key-file", files["server_key"],
         "--trusted-ca-file", files["ca"], "--client-cert-auth", "--enable-v2=false"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Etcd([url], files["ca"], files["client"], files["client_key"])
        deadline = time.monotonic() + 20
        while True:
            try:
                client.get("/ready")
                break
            except EtcdError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError((tmp_path / "etcd.log").read_text()[-3000:])
                time.sleep(0.1)
        yield url, files
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


def test_tls_with_client_certificates(tls_etcd):
    url, f = tls_etcd
    good = Etcd([url], f["ca"], f["client"], f["client_key"])
    good.put("/t/tls", "yes")
    assert good.get("/t/tls").value == "yes"
    reasons = []
    for wrong in (Etcd([url], f["other_ca"], f["client"], f["client_key"]),  # server unverified
                  Etcd([url], f["ca"]),  # no client certificate
                  Etcd([url], f["ca"], f["stranger"], f["stranger_key"])):  # another CA's
        with pytest.raises(EtcdError) as caught:
            wrong.get("/t/tls")
        assert "\n" not in str(caught.value)
        reasons.append(str(caught.value))
    # the reason says what is wrong, not only that a connection failed
    assert "not signed by --ha-etcd-ca" in reasons[0], reasons[0]
    assert all("SSL" in r or "TLS" in r or "certificate" in r for r in reasons[1:]), reasons


def _ha_node(tmp_path, url: str, extra: list[str]) -> DrpServer:
    seed, token = make_token(tmp_path)
    return DrpServer(seed, ["--drp-id", "solo", "--ha-enabled", "true", "--ha-id", "tls-test",
                            "--ha-address", "198.18.0.100/24", "--ha-interface", "lo",
                            "--ha-interface-script", str(recorder(tmp_path)),
                            "--ha-token", token, "--ha-etcd-endpoints", url, *extra])


def test_a_node_reaches_etcd_over_tls_and_becomes_active(tmp_path, tls_etcd):
    url, f = tls_etcd
    node = _ha_node(tmp_path, url, ["--ha-etcd-ca", f["ca"], "--ha-etcd-cert", f["client"],
                                    "--ha-etcd-key", f["client_key"]]).start(wait=False)
    try:
        node.wait_log("active: accepting writes", timeout=30)
        leader = Etcd([url], f["ca"], f["client"], f["client_key"]).get("/drp/tls-test/leader")
        assert leader is not None and leader.value == "solo"
    finally:
        node.stop()


def test_a_node_that_cannot_reach_etcd_stays_passive(tmp_path, tls_etcd):
    url, f = tls_etcd  # no client certificate: every etcd call is refused
    node = _ha_node(tmp_path, url, ["--ha-etcd-ca", f["ca"]]).start(wait=False)
    try:
        node.wait_log("etcd is unreachable", timeout=30)
        time.sleep(3)  # longer than the lease TTL: it never takes the role
        assert "active: accepting writes" not in node.logs()
        line = next(x for x in node.logs().splitlines() if "etcd is unreachable" in x)
        assert "stays passive" in line
        with node.client() as http:
            info = http.get("/api/v3/info").json()
        assert not info.get("ha_is_active", False), info
    finally:
        node.stop()
