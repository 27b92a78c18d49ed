"""Node-to-node trust over TLS: the node's key file, enrolment, mutual-TLS contexts, and the
peer certificate of a connection served by hypercorn.

The chain and the validity window are checked by OpenSSL during the handshake, against the
cluster bundle as the only trust roots (Python's ssl module has no verify callback, so nothing
else can run there); who the peer is (cluster, drp-id, revocation) is checked by
certs.verify_peer right after the handshake, before either side sends an application byte.
Hostnames are not checked: nodes are named by drp-id, not by address.
"""
from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Iterable

import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from drp.ha.certs import NODE_LIFE, ClusterCA, Untrusted, issue
from drp.ratelog import RateLog

PEER_CERT = "drp.peer_certificate"  # the scope["state"] key the hypercorn hook fills
# The SNI a node sends to reach the cluster side of an API port (api_context); .invalid is
# reserved (RFC 2606), so it never names a real host.
CLUSTER_SNI = "cluster.drp.invalid"


# --- the node's key pair and certificate on disk ------------------------------------------

def node_key_path(base_root: Path) -> Path:
    return Path(base_root) / "ha" / "node.key"


def node_cert_path(base_root: Path) -> Path:
    return Path(base_root) / "ha" / "node.crt"


def load_or_create_node_key(base_root: Path) -> ed25519.Ed25519PrivateKey:
    """The node's ed25519 key (<base-root>/ha/node.key, 0600), made on first use. It never
    leaves the node: enrolment sends a CSR signed with it."""
    path = node_key_path(base_root)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} is not an ed25519 key")
        return key
    key = ed25519.Ed25519PrivateKey.generate()
    write_atomic(path, key_pem(key).encode(), 0o600)
    return key


def save_node_cert(base_root: Path, cert_pem: str) -> Path:
    """The node's current certificate next to its key (public: 0644)."""
    path = node_cert_path(base_root)
    write_atomic(path, cert_pem.encode(), 0o644)
    return path


def key_pem(key: ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Written whole or not at all, with its mode from the start (a key is never readable by
    others, not even for a moment), and durable once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # a leftover tmp may have had another mode
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- enrolment -------------------------------------------------------------------------------

def csr_for(drp_id: str, key: ed25519.Ed25519PrivateKey) -> str:
    """The enrolment request a joining node sends (with the HA token): a CSR naming its drp-id,
    signed with its key, so the CA knows the node holds the key it certifies."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, drp_id)]))
           .sign(key, None))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def enrol(ca: ClusterCA, drp_id: str, csr_pem: str, now: datetime.datetime,
          revoked: Iterable[str] = (), addresses: Iterable[str] = (),
          life: datetime.timedelta = NODE_LIFE) -> dict:
    """An enrolment request (drp-id + CSR; the caller has already checked the HA token) turned
    into {"cert": PEM, "bundle": PEM}. Refused (Untrusted) for a removed node or a CSR that
    does not match."""
    if drp_id in set(revoked):
        raise Untrusted(f"{drp_id} was removed from the cluster: it cannot enrol again until "
                        "it is taken off the removed list")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise Untrusted(f"the enrolment request of {drp_id} is not a CSR ({e})") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise Untrusted(f"the CSR of {drp_id} is not signed by the key it carries")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != drp_id:
        raise Untrusted(f"the CSR names {cns[0].value if cns else 'nobody'}, not {drp_id}")
    public = csr.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise Untrusted(f"the CSR of {drp_id} carries a non-ed25519 key")
    cert = issue(ca, drp_id, ca.ha_id, public, now, addresses, life)
    return {"cert": cert_pem(cert), "bundle": ca.bundle_pem(now)}


# --- TLS contexts ---------------------------------------------------------------------------

def _load_chain(ctx: ssl.SSLContext, cert: str | bytes, key: str | bytes) -> None:
    """load_cert_chain takes files only: the PEMs go through a private temporary directory,
    removed at once."""
    cert = cert.encode() if isinstance(cert, str) else cert
    key = key.encode() if isinstance(key, str) else key
    with tempfile.TemporaryDirectory(prefix="drp-tls-") as d:  # mode 0700
        cpath, kpath = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        for path, data in ((cpath, cert), (kpath, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cpath, kpath)


def _common(ctx: ssl.SSLContext, cert, key, bundle: str) -> ssl.SSLContext:
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if bundle.strip():
        ctx.load_verify_locations(cadata=bundle)  # the only roots: no system CAs are loaded
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key)
    return ctx


def server_context(cert, key, bundle: str, *, require_client: bool = False,
                   alpn: Iterable[str] | None = None) -> ssl.SSLContext:
    """Mutual TLS, server side: asks for a client certificate and verifies it against the
    bundle if one is sent. CERT_OPTIONAL (the default) on the API port, where drpcli clients
    have none: the replication handler then requires one (peer_certificate + verify_peer).
    A certificate that fails the chain check fails the handshake."""
    ctx = _common(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, bundle)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(cert, key, bundle: str) -> ssl.SSLContext:
    """Mutual TLS, client side: the server's chain must lead to the bundle; its drp-id is
    checked by verify_peer(expected_id=…) before anything is written. `cert`/`key` may be
    None for a node that has not enrolled yet (it can only enrol)."""
    ctx = _common(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, bundle)
    ctx.check_hostname = False  # nodes are named by drp-id (verify_peer), not by address
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def api_context(cert, key, bundle: str, public: ssl.SSLContext) -> ssl.SSLContext:
    """One API port for both audiences: a client sending SNI CLUSTER_SNI (a node) gets the
    node certificate and its client certificate checked; any other (drpcli, browsers, no
    SNI) gets `public`'s certificate (the operator's --tls-cert or the self-signed one, e.g.
    hypercorn's own create_ssl_context()). OpenSSL keeps the first context's verify mode and
    protocol versions when the SNI callback switches, so this context allows TLS 1.2 for
    public clients and asks every client for an optional certificate; node connections stay
    TLS 1.3 because client_context offers nothing else."""
    ctx = server_context(cert, key, bundle)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    def pick(ssl_object, server_name, _ctx):
        if server_name != CLUSTER_SNI:
            ssl_object.context = public

    ctx.sni_callback = pick
    return ctx


def reload(ctx: ssl.SSLContext, cert, key, bundle: str) -> None:
    """A renewed certificate and a rotated bundle, in a context already listening (hypercorn
    makes its context once): new connections get them. Roots dropped from the bundle stay in
    the context's store, but they are expired by then and refused as such. A node without a
    certificate yet (cert None) only gets the bundle."""
    if cert and key:
        _load_chain(ctx, cert, key)
    if bundle.strip():
        ctx.load_verify_locations(cadata=bundle)


def tls_refusal(exc: BaseException) -> str:
    """A one-line reason from a failed handshake (trio wraps the ssl error in
    BrokenResourceError)."""
    for seen in _causes(exc):
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: the peer's certificate was refused ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError):
            return "TLS: " + str(seen.reason or seen).replace("_", " ").lower()
    return f"TLS: {type(exc).__name__}: {exc}" if str(exc) else f"TLS: {type(exc).__name__}"


# --- the peer certificate under hypercorn ----------------------------------------------------

def install_peer_certificate_hook() -> None:
    """Put each TLS connection's peer certificate (DER, or None) into the ASGI scope's
    "state" under PEER_CERT. hypercorn 0.18's trio worker (tcp_server.TCPServer.run) finishes
    the handshake on its trio.SSLStream and then hands ProtocolWrapper only `ssl=True`, the
    addresses and its own protocol_send: no ASGI "tls" extension. The stream is reached
    through that bound method, and a per-connection copy of the state carries the certificate
    to every request and websocket of the connection (hypercorn copies it into each scope)."""
    import hypercorn.trio.tcp_server as tcp

    if getattr(tcp.ProtocolWrapper, "drp_peer_hook", False):
        return
    original = tcp.ProtocolWrapper

    def wrapper(app, config, context, task_group, state, is_ssl, client, server, send,
                alpn_protocol=None):
        der = None
        if is_ssl:
            der = send.__self__.stream.getpeercert(binary_form=True)
        return original(app, config, context, task_group, {**state, PEER_CERT: der}, is_ssl,
                        client, server, send, alpn_protocol)

    wrapper.drp_peer_hook = True
    tcp.ProtocolWrapper = wrapper
    _log_refused_handshakes(tcp.TCPServer)


def _log_refused_handshakes(server_class) -> None:
    """hypercorn drops a failed TLS handshake without a word; one whose client certificate
    was refused (another CA, expired) is a node or an impostor an operator wants to hear
    about: said once per address per 10 s. The handshake is done here first (the server's
    own call then finds it done, or failed, and returns as before); a failed one's socket is
    closed, which hypercorn leaves open."""
    refused = RateLog(logging.getLogger("drp.ha.trust"), "refused a TLS client certificate")
    original = server_class.run

    async def run(self):
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await stream.do_handshake()
            except trio.BrokenResourceError as e:
                if any(isinstance(c, ssl.SSLCertVerificationError) for c in _causes(e)):
                    try:
                        peer = stream.transport_stream.socket.getpeername()[0]
                    except OSError:
                        peer = "?"
                    refused.warn(peer, "%s", tls_refusal(e))
                # hypercorn returns without closing it: the client would wait forever
                await trio.aclose_forcefully(stream.transport_stream)
            except trio.TooSlowError:
                await trio.aclose_forcefully(stream.transport_stream)
        return await original(self)

    server_class.run = run


def _causes(exc: BaseException):
    """exc and what it was raised from, innermost last (trio wraps ssl errors)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def peer_certificate(scope: dict) -> bytes | None:
    """The client certificate (DER) of the connection a request came on (Quart:
    websocket.scope / request.scope), once install_peer_certificate_hook ran."""
    return (scope.get("state") or {}).get(PEER_CERT)
