"""The cluster CA: ed25519 roots, the node certificates they issue, and checking a peer's.

Pure X.509 (no sockets, no files): every function takes `now` explicitly, so the replicated store
decides when, and tests can walk through rotations. drp/ha/trust.py builds TLS contexts and the
node's key file on top of this.

Roots live ROOT_LIFE and a new one is made every ROTATE_EVERY; older roots stay in the trust
bundle until they expire, so a certificate issued just before a rotation keeps working. Node
certificates live NODE_LIFE (never past their root) and are renewed at half life.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_LIFE = datetime.timedelta(days=90)
ROTATE_EVERY = datetime.timedelta(days=30)
NODE_LIFE = datetime.timedelta(hours=24)
SKEW = datetime.timedelta(minutes=5)  # not_valid_before is backdated: nodes' clocks differ a bit
SCHEME = "drp"


class Untrusted(Exception):
    """A peer certificate this cluster does not accept; str() is a one-line reason."""


def node_uri(ha_id: str, drp_id: str) -> str:
    """The SAN URI naming a node: drp://<ha-id>/node/<drp-id>."""
    return f"{SCHEME}://{ha_id}/node/{drp_id}"


def _utc(when: datetime.datetime) -> datetime.datetime:
    if when.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (UTC)")
    return when.astimezone(datetime.timezone.utc)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass
class Root:
    cert: x509.Certificate
    key: ed25519.Ed25519PrivateKey

    @property
    def made(self) -> datetime.datetime:
        return self.cert.not_valid_before_utc + SKEW

    def valid_at(self, now: datetime.datetime) -> bool:
        return self.cert.not_valid_before_utc <= now <= self.cert.not_valid_after_utc


def _new_root(ha_id: str, now: datetime.datetime) -> Root:
    key = ed25519.Ed25519PrivateKey.generate()
    serial = x509.random_serial_number()
    # The serial in the name keeps every root's subject distinct: a node certificate's issuer
    # then names exactly one root of the bundle.
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drp"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ha_id),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"drp cluster CA {serial:x}"[:64])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - SKEW).not_valid_after(now + ROOT_LIFE)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, None))
    return Root(cert, key)


class ClusterCA:
    """The roots of one cluster (oldest first; the last one issues). Made by the first active,
    kept in the replicated store (to_dict / from_dict) so any later active can issue."""

    def __init__(self, ha_id: str, roots: list[Root]):
        if not roots:
            raise ValueError("a cluster CA needs at least one root")
        self.ha_id, self.roots = ha_id, roots

    @classmethod
    def create(cls, ha_id: str, now: datetime.datetime) -> "ClusterCA":
        return cls(ha_id, [_new_root(ha_id, _utc(now))])

    @property
    def current(self) -> Root:
        return self.roots[-1]

    def rotate_if_due(self, now: datetime.datetime, force: bool = False) -> bool:
        """Make a new root when the current one is ROTATE_EVERY old (or `force`: an operator
        rotating it now), and drop expired roots. True when anything changed (the caller
        stores the CA again)."""
        now = _utc(now)
        changed = False
        if force or now >= self.current.made + ROTATE_EVERY or not self.current.valid_at(now):
            self.roots.append(_new_root(self.ha_id, now))
            changed = True
        kept = [r for r in self.roots if r.cert.not_valid_after_utc >= now]
        changed |= len(kept) != len(self.roots)
        self.roots = kept
        return changed

    def bundle(self, now: datetime.datetime) -> list[x509.Certificate]:
        """The roots a node trusts at `now`: every unexpired one, old ones included."""
        now = _utc(now)
        return [r.cert for r in self.roots if r.valid_at(now)]

    def bundle_pem(self, now: datetime.datetime) -> str:
        return "".join(_pem(c) for c in self.bundle(now))

    def to_dict(self) -> dict:
        """JSON-able PEM strings (keys unencrypted: the store's `secrets` kind guards them)."""
        return {"ha_id": self.ha_id,
                "roots": [{"cert": _pem(r.cert), "key": _key_pem(r.key)} for r in self.roots]}

    @classmethod
    def from_dict(cls, data: dict) -> "ClusterCA":
        roots = []
        for r in data["roots"]:
            key = serialization.load_pem_private_key(r["key"].encode(), password=None)
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ValueError("a cluster CA root key must be ed25519")
            roots.append(Root(x509.load_pem_x509_certificate(r["cert"].encode()), key))
        return cls(data["ha_id"], roots)


def issue(ca: ClusterCA, drp_id: str, ha_id: str, public_key: ed25519.Ed25519PublicKey,
          now: datetime.datetime, addresses: Iterable[str] = (),
          life: datetime.timedelta = NODE_LIFE) -> x509.Certificate:
    """A node certificate from the current root: CN and SAN URI name the node, good for both
    TLS server and client auth. `addresses` (IPs or DNS names) are added as SANs, for uses
    that check them (etcd's peer and server TLS)."""
    now = _utc(now)
    if ha_id != ca.ha_id:
        raise ValueError(f"this CA is cluster {ca.ha_id}'s, not {ha_id}'s")
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise ValueError("node keys are ed25519")
    if not drp_id or "/" in drp_id:
        raise ValueError(f"not a drp-id: {drp_id!r}")
    root = ca.current
    if not root.valid_at(now):
        raise ValueError("the current root is not valid now: rotate_if_due first")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(ha_id, drp_id))]
    for a in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            names.append(x509.DNSName(a))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drp"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ha_id),
                         x509.NameAttribute(NameOID.COMMON_NAME, drp_id)])
    root_ski = root.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(root.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(min(now + life, root.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                root_ski), critical=False)
            .sign(root.key, None))


def needs_renewal(cert: x509.Certificate, now: datetime.datetime) -> bool:
    """True from half its life on (or once it is expired)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return _utc(now) >= start + (end - start) / 2


def load_cert(data) -> x509.Certificate:
    """A certificate from an x509.Certificate, PEM (str/bytes) or DER bytes."""
    if isinstance(data, x509.Certificate):
        return data
    if isinstance(data, str):
        data = data.encode()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_bundle(bundle) -> list[x509.Certificate]:
    """A bundle from a PEM string/bytes (several certificates) or a list of certificates."""
    if isinstance(bundle, (str, bytes)):
        raw = bundle.encode() if isinstance(bundle, str) else bundle
        return x509.load_pem_x509_certificates(raw) if raw.strip() else []
    return [load_cert(c) for c in bundle]


def node_identity(cert: x509.Certificate) -> tuple[str, str] | None:
    """(ha-id, drp-id) from a node certificate's SAN URI, or None for any other certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        head, sep, rest = uri.partition("://")
        ha_id, sep2, drp_id = rest.partition("/node/")
        if head == SCHEME and sep and sep2 and ha_id and drp_id and "/" not in drp_id:
            return ha_id, drp_id
    return None


def _issuer(cert: x509.Certificate, roots: list[x509.Certificate]) -> x509.Certificate | None:
    for root in roots:
        if root.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return root
    return None


def verify_peer(chain_or_cert, bundle, now: datetime.datetime, expected_id: str | None = None,
                *, ha_id: str, revoked: Iterable[str] = ()) -> str:
    """The drp-id a peer's certificate proves, or Untrusted(one-line reason). Checked after
    the TLS handshake (which already checked the chain against the same bundle) and before
    any application byte is sent: cluster, drp-id, revocation, and validity at `now`."""
    now = _utc(now)
    if chain_or_cert is None or chain_or_cert == [] or chain_or_cert == b"":
        raise Untrusted("the peer presented no certificate (a node of this cluster has one)")
    leaf = load_cert(chain_or_cert[0] if isinstance(chain_or_cert, (list, tuple))
                     else chain_or_cert)
    who = leaf.subject.rfc4514_string()
    root = _issuer(leaf, load_bundle(bundle))
    if root is None:
        raise Untrusted(f"the certificate of {who} is not from this cluster's CA "
                        f"(issuer {leaf.issuer.rfc4514_string()})")
    if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
        raise Untrusted(f"the root that issued {who}'s certificate is expired or not yet "
                        f"valid (valid {root.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                        f"{root.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
    if now < leaf.not_valid_before_utc:
        raise Untrusted(f"the certificate of {who} is not valid before "
                        f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC (check the clocks)")
    if now > leaf.not_valid_after_utc:
        raise Untrusted(f"the certificate of {who} expired at "
                        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    ident = node_identity(leaf)
    if ident is None:
        raise Untrusted(f"the certificate of {who} names no node (no {SCHEME}://…/node/… URI)")
    cert_ha, drp_id = ident
    if cert_ha != ha_id:
        raise Untrusted(f"{drp_id}'s certificate is for cluster {cert_ha}, not {ha_id}")
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != drp_id:
        raise Untrusted(f"the certificate's CN does not match its node URI ({drp_id})")
    if expected_id is not None and drp_id != expected_id:
        raise Untrusted(f"the peer is {drp_id}, not the expected {expected_id}")
    if drp_id in set(revoked):
        raise Untrusted(f"{drp_id} was removed from the cluster (drpcli system ha remove)")
    return drp_id
