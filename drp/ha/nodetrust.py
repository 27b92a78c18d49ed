"""This node's place in the cluster's trust: its key and certificate, the cluster CA, the
enrolment token and the removed list (replicated `secrets` rows), the TLS contexts made from
them, and who a peer's certificate says it is.

The rows travel with the change log like any object, so every node holds the CA and any of
them can issue once it is active. A node's certificate and the bundle it trusts are also kept
as files beside its key (<base-root>/ha/), for the time before its first catch-up and for
restarts. Hypercorn makes the API's TLS context once; a renewed certificate or a rotated bundle
is loaded into that same context (new connections get it; open ones keep theirs).
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import ssl
from pathlib import Path

import trio
from cryptography import x509

from drp.ha import trust
from drp.ha.certs import ClusterCA, Untrusted, issue, load_bundle, needs_renewal, node_identity, \
    verify_peer

log = logging.getLogger("drp.ha.trust")
SECRETS = "secrets"
CA_ROW = "cluster-ca"  # the CA: roots and their keys (ClusterCA.to_dict as JSON)
TOKEN_ROW = "ha-token"  # the HA token that enrols new nodes (rotated by the operator)
REMOVED_ROW = "ha-removed"  # drp-ids removed from the cluster (drpcli system ha remove)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def form_cluster(tx, ha_id: str, ha_token: str | None) -> None:
    """In an active's promote write: the cluster CA and the enrolment token, made once, by
    the first active of the cluster."""
    if tx.get(SECRETS, CA_ROW) is None:
        ca = ClusterCA.create(ha_id, utcnow())
        tx.record(SECRETS, CA_ROW, "create", {"Name": CA_ROW,
                                              "Secret": json.dumps(ca.to_dict())})
        log.info("formed the cluster CA of %s (an ed25519 root valid 90 days, rotated every 30)",
                 ha_id)
    if tx.get(SECRETS, TOKEN_ROW) is None and ha_token:
        tx.record(SECRETS, TOKEN_ROW, "create", {"Name": TOKEN_ROW, "Secret": ha_token})


def enrolment_proof(token: str, nonce: str, ha_id: str, drp_id: str, bundle: str) -> str:
    """What the active answers a joining node's nonce with: an HMAC under the HA token, so a
    node holding the token knows the bundle came from its cluster before it sends anything."""
    msg = "\n".join(("drp-enrolment", nonce, ha_id, drp_id, bundle)).encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


class NodeTrust:
    """One node's trust material and the checks made with it. Sync methods only read what
    `refresh` last loaded (they run in request handlers and fetch threads)."""

    def __init__(self, cfg, store, drp_id: str):
        self.cfg, self.store, self.drp_id = cfg, store, drp_id
        self.ha_id = cfg.ha_id
        self.base = Path(cfg.base_root)
        self.key = trust.load_or_create_node_key(self.base)
        self.key_pem = trust.key_pem(self.key)
        self.life = datetime.timedelta(seconds=cfg.ha_cert_life)
        self.cert: x509.Certificate | None = None
        self.cert_text = ""
        self.bundle = ""  # PEM roots trusted now
        self.ca: ClusterCA | None = None  # from the store, once it holds one
        self.removed: frozenset[str] = frozenset()
        self.token = ""  # the current enrolment token, on nodes that hold the rows
        self._version = None  # the secrets version `refresh` last read
        self._verified: dict[bytes, tuple[str, datetime.datetime]] = {}
        self._client: ssl.SSLContext | None = None
        self.server_contexts: list[ssl.SSLContext] = []  # listening: reloaded on change
        cert_path, bundle_path = trust.node_cert_path(self.base), self._bundle_path()
        if cert_path.exists():
            self._set_cert(cert_path.read_text())
        if bundle_path.exists():
            self.bundle = bundle_path.read_text()

    def _bundle_path(self) -> Path:
        return self.base / "ha" / "bundle.pem"

    def _set_cert(self, text: str) -> None:
        self.cert, self.cert_text = x509.load_pem_x509_certificate(text.encode()), text

    # ---- loading -----------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-read the secrets rows when anything of that kind was committed or replicated."""
        version = self.store.version(SECRETS)
        if version == self._version:
            return
        ca_row = await self.store.get(SECRETS, CA_ROW)
        removed_row = await self.store.get(SECRETS, REMOVED_ROW)
        token_row = await self.store.get(SECRETS, TOKEN_ROW)
        self.ca = ClusterCA.from_dict(json.loads(ca_row["Secret"])) if ca_row else None
        self.removed = frozenset((removed_row or {}).get("Nodes") or ())
        self.token = (token_row or {}).get("Secret", "")
        self._version = version
        self._verified.clear()
        if self.ca is not None:
            await self._install(self.cert_text, self.ca.bundle_pem(utcnow()))

    async def _install(self, cert_text: str, bundle: str) -> None:
        """A certificate and/or bundle to use from now on: on disk first, then in every
        context (files first, so a restart finds what the contexts had)."""
        if cert_text == self.cert_text and bundle == self.bundle:
            return
        await trio.to_thread.run_sync(self._write_files, cert_text, bundle)
        if cert_text != self.cert_text:
            self._set_cert(cert_text)
        self.bundle = bundle
        self._verified.clear()
        self._client = None
        for ctx in self.server_contexts:
            trust.reload(ctx, self.cert_text, self.key_pem, self.bundle)

    def _write_files(self, cert_text: str, bundle: str) -> None:
        if cert_text and cert_text != self.cert_text:
            trust.save_node_cert(self.base, cert_text)
        if bundle != self.bundle:
            trust.write_atomic(self._bundle_path(), bundle.encode(), 0o644)

    async def install_enrolment(self, cert_text: str, bundle: str) -> None:
        """What the active answered an enrolment or renewal with, checked before use: it must
        name this node in this cluster and lead to the bundle that came with it."""
        cert = x509.load_pem_x509_certificate(cert_text.encode())
        verify_peer(cert, bundle, utcnow(), self.drp_id, ha_id=self.ha_id)
        if cert.public_key() != self.key.public_key():
            raise Untrusted("the certificate the active issued is not for this node's key")
        await self._install(cert_text, bundle)

    # ---- this node's certificate -------------------------------------------------------------
    def cert_problem(self) -> str | None:
        """Why this node cannot use its certificate now (None: it can)."""
        if self.cert is None:
            return "this node has no cluster certificate yet"
        try:
            verify_peer(self.cert, self.bundle, utcnow(), self.drp_id, ha_id=self.ha_id,
                        revoked=self.removed)
        except Untrusted as e:
            return str(e)
        return None

    def wants_renewal(self) -> bool:
        """From half its life on, or once its root is not the one issuing now."""
        if self.cert is None:
            return True
        if needs_renewal(self.cert, utcnow()):
            return True
        return self.ca is not None and self.cert.issuer != self.ca.current.cert.subject

    def addresses(self) -> list[str]:
        return [str(a) for a in (self.cfg.static_ip, self.cfg.api_address)
                if a and a not in ("0.0.0.0", "::")]

    async def issue_own(self) -> None:
        """The active certifies itself from the CA it holds (rotating the root first if due)."""
        await self.refresh()
        if self.ca is None:
            raise RuntimeError("the store holds no cluster CA")
        now = utcnow()
        if self.ca.rotate_if_due(now):
            await self.store_ca()
        cert = issue(self.ca, self.drp_id, self.ha_id, self.key.public_key(), now,
                     self.addresses(), self.life)
        await self._install(trust.cert_pem(cert), self.ca.bundle_pem(now))
        log.info("certified this node from the cluster CA until %s UTC",
                 cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S"))

    async def store_ca(self) -> None:
        """The CA (after a rotation) back into the replicated store; the active only."""
        body = {"Name": CA_ROW, "Secret": json.dumps(self.ca.to_dict())}
        await self.store.write(lambda tx: tx.record(SECRETS, CA_ROW, "update", body),
                               internal=True)
        await self.refresh()

    # ---- contexts ----------------------------------------------------------------------------
    def server_context(self, public: ssl.SSLContext, alpn: list[str]) -> ssl.SSLContext:
        """The API port's: nodes (SNI CLUSTER_SNI) get the node side, everyone else `public`."""
        ctx = trust.api_context(self.cert_text or None, self.key_pem if self.cert_text else None,
                                self.bundle, public)
        ctx.set_alpn_protocols(alpn)
        self.server_contexts.append(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For dialing another node: this node's certificate, the bundle as the only roots."""
        if self._client is None:
            have = bool(self.cert_text)
            self._client = trust.client_context(self.cert_text if have else None,
                                                self.key_pem if have else None, self.bundle)
        return self._client

    # ---- peers -------------------------------------------------------------------------------
    def verify(self, der: bytes | None, expected: str | None = None) -> str:
        """The drp-id a peer's certificate (DER) proves, or Untrusted with the reason."""
        now = utcnow()
        hit = self._verified.get(der) if der else None
        if hit is not None and now <= hit[1] and hit[0] not in self.removed:
            drp_id = hit[0]
        else:
            drp_id = verify_peer(der, self.bundle, now, None, ha_id=self.ha_id,
                                 revoked=self.removed)
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[der] = (drp_id, x509.load_der_x509_certificate(der)
                                   .not_valid_after_utc)
        if expected is not None and drp_id != expected:
            raise Untrusted(f"the peer is {drp_id}, not the expected {expected}")
        return drp_id

    def describe(self) -> dict:
        """For `drpcli system ha trust`: what this node holds (no secrets)."""
        cert = self.cert
        roots = load_bundle(self.bundle)
        return {"DrpId": self.drp_id, "HaId": self.ha_id,
                "Certificate": None if cert is None else {
                    "Identity": "/".join(node_identity(cert) or ("?", "?")),
                    "Issuer": cert.issuer.rfc4514_string(),
                    "NotBefore": cert.not_valid_before_utc.isoformat(),
                    "NotAfter": cert.not_valid_after_utc.isoformat()},
                "Problem": self.cert_problem() or "",
                "Roots": [{"Subject": r.subject.rfc4514_string(),
                           "NotAfter": r.not_valid_after_utc.isoformat()} for r in roots],
                "Removed": sorted(self.removed)}
