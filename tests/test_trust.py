"""The cluster CA and mutual TLS between nodes (drp/ha/certs.py, drp/ha/trust.py): real TLS 1.3
handshakes on loopback with trio.SSLStream, and under hypercorn's trio worker.

Each exchange runs both sides: the client writes the HA token only after the handshake and
verify_peer of the server succeeded; the server sends its "entries" only after verify_peer of
the client succeeded and the token came. A dishonest side reads everything it can get, and
each refused case asserts that the honest side holding a secret sent it no application byte.
"""
from __future__ import annotations

import datetime
import json
import os
import ssl
import stat
from dataclasses import dataclass

import hypercorn.config
import hypercorn.trio
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from drp.ha import trust
from drp.ha.certs import (NODE_LIFE, ROOT_LIFE, ROTATE_EVERY, ClusterCA, Untrusted, issue,
                          needs_renewal, node_uri, verify_peer)
from tests.drpserver import free_port

HA = "ha-test"
TOKEN = b"RS-HA-TOKEN-0123456789"
ENTRIES = b"ENTRIES-secret-payload"
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def node(ca: ClusterCA, drp_id: str, now: datetime.datetime) -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue(ca, drp_id, ca.ha_id, key.public_key(), now)
    return trust.cert_pem(cert), trust.key_pem(key)


def self_signed(drp_id: str, now: datetime.datetime) -> tuple[str, str]:
    """What a man in the middle can make: a certificate naming the active, signed by itself."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, drp_id)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - HOUR).not_valid_after(now + DAY)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(node_uri(HA, drp_id))]), critical=False)
            .sign(key, None))
    return trust.cert_pem(cert), trust.key_pem(key)


@dataclass
class Side:
    reason: str | None = None
    peer: str | None = None
    received: bytes = b""


def checker(bundle: str, expected: str | None = None, revoked=()):
    return lambda der: verify_peer(der, bundle, utcnow(), expected, ha_id=HA, revoked=revoked)


async def _read(stream: trio.SSLStream, side: Side, until: bytes | None) -> None:
    with trio.move_on_after(2):
        try:
            while until is None or until not in side.received:
                data = await stream.receive_some(65536)
                if not data:
                    return
                side.received += data
        except trio.BrokenResourceError as e:
            side.reason = side.reason or trust.tls_refusal(e)


async def _server(listener, ctx, check, side: Side) -> None:
    """check None: a dishonest server, taking whatever the client sends."""
    tcp = await listener.accept()
    stream = trio.SSLStream(tcp, ctx, server_side=True)
    try:
        if not await _handshake(stream, check, side):
            return
        await _read(stream, side, TOKEN)
        if check is not None and TOKEN in side.received:
            await stream.send_all(ENTRIES)
    finally:
        await close(stream)


async def _handshake(stream: trio.SSLStream, check, side: Side) -> bool:
    """The TLS handshake, then (for an honest side) check() on the peer's certificate; False,
    with side.reason said, when either refuses the peer."""
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as e:
        side.reason = trust.tls_refusal(e)
        return False
    if check is not None:
        try:
            side.peer = check(stream.getpeercert(binary_form=True))
        except Untrusted as e:
            side.reason = str(e)
            return False
    return True


async def close(stream: trio.SSLStream) -> None:
    """With a TLS close_notify when the connection allows one (the peer sees an orderly end)."""
    with trio.move_on_after(1) as scope:
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    if scope.cancelled_caught:
        await trio.aclose_forcefully(stream)


async def _client(port, ctx, check, side: Side, sni: str | None) -> None:
    """check None: a dishonest client, sending its (stolen) token at once."""
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx,
                            server_hostname=sni)
    try:
        if not await _handshake(stream, check, side):
            return
        try:
            await stream.send_all(TOKEN)
        except trio.BrokenResourceError as e:
            side.reason = trust.tls_refusal(e)
            return
        await _read(stream, side, None)
    finally:
        await close(stream)


async def exchange(server_ctx, server_check, client_ctx, client_check,
                   sni: str | None = None) -> tuple[Side, Side]:
    server, client = Side(), Side()
    port = free_port()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(_server, listeners[0], server_ctx, server_check, server)
            n.start_soon(_client, port, client_ctx, client_check, client, sni)
    await listeners[0].aclose()
    return server, client


def one_line(reason: str | None) -> str:
    assert reason and "\n" not in reason, reason
    return reason


@pytest.fixture
def cluster():
    now = utcnow()
    ca = ClusterCA.create(HA, now)
    bundle = ca.bundle_pem(now)
    return ca, bundle, node(ca, "active", now), node(ca, "passive", now)


def ctxs(bundle, server_pair, client_pair):
    return (trust.server_context(*server_pair, bundle),
            trust.client_context(*(client_pair or (None, None)), bundle))


async def test_cluster_certificates_accepted_both_ways(cluster):
    ca, bundle, active, passive = cluster
    s_ctx, c_ctx = ctxs(bundle, active, passive)
    server, client = await exchange(s_ctx, checker(bundle), c_ctx, checker(bundle, "active"))
    assert (server.peer, client.peer) == ("passive", "active")
    assert server.received == TOKEN and client.received == ENTRIES
    assert server.reason is None and client.reason is None


async def assert_client_refused_server(bundle, server_pair, client_pair, expected: str):
    """The server is not the active: the passive says why and sends it nothing."""
    s_ctx = trust.server_context(*server_pair, bundle)
    c_ctx = trust.client_context(*client_pair, bundle)
    server, client = await exchange(s_ctx, None, c_ctx, checker(bundle, "active"))
    assert expected in one_line(client.reason)
    assert TOKEN not in server.received and server.received == b""


async def assert_server_refused_client(bundle, server_pair, client_pair, expected: str,
                                       revoked=()):
    """The client is no trusted node (and sends a stolen token at once): the active says why
    and sends it no entry."""
    s_ctx = trust.server_context(*server_pair, bundle)
    c_ctx = trust.client_context(*(client_pair or (None, None)), bundle)
    server, client = await exchange(s_ctx, checker(bundle, revoked=revoked), c_ctx, None)
    assert expected in one_line(server.reason)
    assert ENTRIES not in client.received and client.received == b""


async def test_server_from_another_ca_refused(cluster):
    ca, bundle, active, passive = cluster
    other = node(ClusterCA.create(HA, utcnow()), "active", utcnow())
    await assert_client_refused_server(bundle, other, passive, "unable to get local issuer")


async def test_client_from_another_ca_refused(cluster):
    ca, bundle, active, passive = cluster
    other = node(ClusterCA.create(HA, utcnow()), "passive", utcnow())
    await assert_server_refused_client(bundle, active, other, "unable to get local issuer")


async def test_expired_certificates_refused():
    now = utcnow()
    ca = ClusterCA.create(HA, now - 3 * DAY)
    bundle = ca.bundle_pem(now)
    old_active, old_passive = node(ca, "active", now - 2 * DAY), node(ca, "passive", now - 2 * DAY)
    active, passive = node(ca, "active", now), node(ca, "passive", now)
    await assert_client_refused_server(bundle, old_active, passive, "certificate has expired")
    await assert_server_refused_client(bundle, active, old_passive, "certificate has expired")


async def test_man_in_the_middle_with_self_signed_certificate_refused(cluster):
    ca, bundle, active, passive = cluster
    await assert_client_refused_server(bundle, self_signed("active", utcnow()), passive,
                                       "self-signed certificate")


async def test_another_nodes_certificate_refused_as_the_active(cluster):
    # a node of the cluster (passive-2) answering where the active should: chain fine, wrong id
    ca, bundle, active, passive = cluster
    impostor = node(ca, "passive-2", utcnow())
    await assert_client_refused_server(bundle, impostor, passive,
                                       "the peer is passive-2, not the expected active")


async def test_revoked_node_refused(cluster):
    ca, bundle, active, passive = cluster
    await assert_server_refused_client(bundle, active, passive, "passive was removed",
                                       revoked={"passive"})


async def test_no_client_certificate_refused(cluster):
    # a stolen HA token used from a machine without a cluster certificate
    ca, bundle, active, passive = cluster
    await assert_server_refused_client(bundle, active, None, "presented no certificate")


async def test_rotation_keeps_old_root_certificates_working():
    now = utcnow()
    ca = ClusterCA.create(HA, now - ROTATE_EVERY - HOUR)
    old = node(ca, "active", now - 2 * HOUR)  # issued by the first root, still valid
    assert ca.rotate_if_due(now) and len(ca.roots) == 2
    new = node(ca, "passive", now)  # issued by the new root
    bundle = ca.bundle_pem(now)
    for server_pair, client_pair, expected in ((old, new, "active"), (new, old, "passive")):
        s_ctx, c_ctx = ctxs(bundle, server_pair, client_pair)
        server, client = await exchange(s_ctx, checker(bundle), c_ctx,
                                        checker(bundle, expected))
        assert client.peer == expected and client.received == ENTRIES, (server, client)


async def test_after_old_root_expires_old_refused_renewed_accepted():
    now = utcnow()
    ca = ClusterCA.create(HA, now - ROOT_LIFE - 2 * HOUR)  # never rotated: the root expired
    old_active = node(ca, "active", now - 5 * HOUR)  # capped at the root's end: 2 h ago
    assert ca.rotate_if_due(now) and len(ca.roots) == 1  # new root, expired one dropped
    bundle = ca.bundle_pem(now)
    passive = node(ca, "passive", now)
    await assert_client_refused_server(bundle, old_active, passive, "unable to get local issuer")
    renewed = node(ca, "active", now)
    s_ctx, c_ctx = ctxs(bundle, renewed, passive)
    server, client = await exchange(s_ctx, checker(bundle), c_ctx, checker(bundle, "active"))
    assert client.peer == "active" and client.received == ENTRIES


async def test_renewed_certificate_and_rotated_bundle_reloaded_in_place():
    now = utcnow()
    ca = ClusterCA.create(HA, now - ROTATE_EVERY - HOUR)
    active, passive = node(ca, "active", now - HOUR), node(ca, "passive", now - HOUR)
    s_ctx = trust.server_context(*active, ca.bundle_pem(now))
    ca.rotate_if_due(now)
    renewed, new_passive = node(ca, "active", now), node(ca, "passive", now)
    trust.reload(s_ctx, *renewed, ca.bundle_pem(now))  # the listening context, updated
    bundle = ca.bundle_pem(now)
    serial = lambda der: str(x509.load_der_x509_certificate(der).serial_number)  # noqa: E731
    for client_pair in (passive, new_passive):  # old-root and new-root clients both still in
        server, client = await exchange(s_ctx, checker(bundle),
                                        trust.client_context(*client_pair, bundle), serial)
        assert client.peer == str(x509.load_pem_x509_certificate(renewed[0].encode())
                                  .serial_number) and server.peer == "passive", (server, client)


async def test_api_port_serves_nodes_and_public_clients_by_sni(tmp_path, cluster):
    ca, bundle, active, passive = cluster
    public = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # as the operator's --tls-cert would be
    for name, pem in zip(("p.crt", "p.key"), self_signed("public-api", utcnow())):
        (tmp_path / name).write_text(pem)
    public.load_cert_chain(tmp_path / "p.crt", tmp_path / "p.key")
    ctx = trust.api_context(*active, bundle, public)
    node_ctx = trust.client_context(*passive, bundle)
    server, client = await exchange(ctx, checker(bundle), node_ctx, checker(bundle, "active"),
                                    sni=trust.CLUSTER_SNI)
    assert (server.peer, client.peer, client.received) == ("passive", "active", ENTRIES)
    drpcli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2, no certificate, no CA check
    drpcli.maximum_version, drpcli.check_hostname = ssl.TLSVersion.TLSv1_2, False
    drpcli.verify_mode = ssl.CERT_NONE
    cn = lambda der: x509.load_der_x509_certificate(der).subject.rfc4514_string()  # noqa: E731
    server, client = await exchange(ctx, checker(bundle), drpcli, cn)
    assert client.peer == "CN=public-api" and "presented no certificate" in server.reason
    # a node that forgets the SNI gets the public certificate: refused, no token sent
    server, client = await exchange(ctx, None, node_ctx, checker(bundle, "active"))
    assert "self-signed certificate" in one_line(client.reason) and server.received == b""


def test_rotation_schedule_and_bundle_with_explicit_now():
    t0 = utcnow().replace(microsecond=0) - 200 * DAY  # x509 times are whole seconds
    ca = ClusterCA.create(HA, t0)
    assert not ca.rotate_if_due(t0 + ROTATE_EVERY - HOUR)
    first = ca.roots[0].cert
    cert = issue(ca, "n1", HA, ed25519.Ed25519PrivateKey.generate().public_key(),
                 t0 + ROTATE_EVERY - HOUR)
    for k in (1, 2, 3):
        assert ca.rotate_if_due(t0 + k * ROTATE_EVERY)
    t = t0 + 3 * ROTATE_EVERY + HOUR
    assert len(ca.roots) == 4 and len(ca.bundle(t)) == 3  # the first root expired at 90 days
    assert first not in ca.bundle(t) and first in ca.bundle(t - 2 * HOUR)
    # issued a moment before the first rotation, verified right after it: accepted
    assert verify_peer(cert, ca.bundle(t0 + ROTATE_EVERY), t0 + ROTATE_EVERY, ha_id=HA) == "n1"
    assert ca.rotate_if_due(t)
    assert len(ca.roots) == 3  # the expired one is dropped from the stored CA too
    again = ClusterCA.from_dict(json.loads(json.dumps(ca.to_dict())))
    assert [r.cert for r in again.roots] == [r.cert for r in ca.roots]
    assert again.bundle_pem(t) == ca.bundle_pem(t)


def test_verify_peer_reasons_with_explicit_now():
    t0 = utcnow() - 10 * DAY
    ca = ClusterCA.create(HA, t0)
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue(ca, "n1", HA, key.public_key(), t0)
    bundle = ca.bundle(t0)
    assert verify_peer([cert], bundle, t0 + HOUR, "n1", ha_id=HA) == "n1"
    later = issue(ca, "n1", HA, key.public_key(), t0 + DAY)
    with pytest.raises(Untrusted, match="not valid before"):  # e.g. the issuer's clock ahead
        verify_peer(later, bundle, t0 + HOUR, ha_id=HA)
    cases = [
        (t0 + NODE_LIFE + HOUR, {}, "expired at"),
        (t0 + HOUR, {"expected_id": "n2"}, "the peer is n1, not the expected n2"),
        (t0 + HOUR, {"revoked": {"n1"}}, "n1 was removed"),
    ]
    for now, kw, reason in cases:
        expected = kw.pop("expected_id", None)
        with pytest.raises(Untrusted, match=reason):
            verify_peer(cert, bundle, now, expected, ha_id=HA, **kw)
    with pytest.raises(Untrusted, match="for cluster ha-test, not ha-other"):
        verify_peer(cert, bundle, t0 + HOUR, ha_id="ha-other")
    with pytest.raises(Untrusted, match="names no node"):  # a root is no node certificate
        verify_peer(ca.roots[0].cert, bundle, t0 + HOUR, ha_id=HA)
    with pytest.raises(Untrusted, match="not from this cluster's CA"):
        verify_peer(cert, ClusterCA.create(HA, t0).bundle(t0), t0 + HOUR, ha_id=HA)


def test_needs_renewal_at_half_life():
    t0 = utcnow()
    ca = ClusterCA.create(HA, t0)
    cert = issue(ca, "n1", HA, ed25519.Ed25519PrivateKey.generate().public_key(), t0)
    half = cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2
    assert not needs_renewal(cert, t0)
    assert not needs_renewal(cert, half - datetime.timedelta(seconds=1))
    assert needs_renewal(cert, half) and needs_renewal(cert, t0 + 2 * NODE_LIFE)
    # a certificate never outlives its root: one issued near the root's end is short
    late = t0 + ROOT_LIFE - HOUR
    short = issue(ca, "n1", HA, ed25519.Ed25519PrivateKey.generate().public_key(), late)
    assert short.not_valid_after_utc == ca.roots[0].cert.not_valid_after_utc


def test_node_key_file_and_enrolment(tmp_path):
    key = trust.load_or_create_node_key(tmp_path)
    path = trust.node_key_path(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())
    again = trust.load_or_create_node_key(tmp_path)
    assert trust.key_pem(again) == trust.key_pem(key)
    now = utcnow()
    ca = ClusterCA.create(HA, now)
    got = trust.enrol(ca, "n1", trust.csr_for("n1", key), now, addresses=["198.18.0.1"])
    cert = x509.load_pem_x509_certificate(got["cert"].encode())
    assert cert.public_key() == key.public_key()
    assert verify_peer(got["cert"], got["bundle"], now, "n1", ha_id=HA) == "n1"
    with pytest.raises(Untrusted, match="names n1, not n2"):
        trust.enrol(ca, "n2", trust.csr_for("n1", key), now)
    with pytest.raises(Untrusted, match="removed from the cluster"):
        trust.enrol(ca, "n1", trust.csr_for("n1", key), now, revoked={"n1"})


async def test_hypercorn_trio_worker_exposes_the_client_certificate(tmp_path, cluster):
    ca, bundle, active, passive = cluster
    trust.install_peer_certificate_hook()
    key_path = trust.node_key_path(tmp_path)
    trust.write_atomic(key_path, active[1].encode(), 0o600)
    cert_path = trust.save_node_cert(tmp_path, active[0])

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        try:
            body = verify_peer(trust.peer_certificate(scope), bundle, utcnow(), ha_id=HA)
        except Untrusted as e:
            body = f"refused: {e}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})

    port = free_port()
    hc = hypercorn.config.Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.certfile, hc.keyfile = str(cert_path), str(key_path)  # ssl_enabled → a TLS listener
    hc.create_ssl_context = lambda: trust.server_context(cert_path.read_text(),
                                                         key_path.read_text(), bundle)
    hc.accesslog = hc.errorlog = None

    async def get(pair) -> bytes:
        ctx = trust.client_context(*(pair or (None, None)), bundle)
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx)
        out = b""
        try:
            await stream.do_handshake()
            verify_peer(stream.getpeercert(binary_form=True), bundle, utcnow(), "active",
                        ha_id=HA)
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            while data := await stream.receive_some(65536):
                out += data
        except trio.BrokenResourceError as e:
            out += trust.tls_refusal(e).encode()
        finally:
            await trio.aclose_forcefully(stream)
        return out

    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            await n.start(lambda task_status: hypercorn.trio.serve(
                app, hc, shutdown_trigger=stop.wait, task_status=task_status))
            try:
                assert b"\r\npassive\r\n" in await get(passive)  # (chunked body)
                # a drpcli-like client with no certificate still gets an answer (CERT_OPTIONAL)
                assert b"refused: the peer presented no certificate" in await get(None)
                other = node(ClusterCA.create(HA, utcnow()), "passive", utcnow())
                refused = await get(other)  # refused in the handshake: hypercorn logs nothing
                assert refused.startswith(b"TLS: ") and b"HTTP" not in refused, refused
            finally:
                stop.set()
