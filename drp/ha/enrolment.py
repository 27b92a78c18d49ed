"""Getting and keeping a node certificate: enrolment with the HA token, renewal with the
certificate itself, and the loop that keeps either role's certificate fresh.

Enrolment sends nothing secret before the active is verified:
  1. GET /system/ha/discover?nonce=N (no credentials): the active's drp-id, the bundle, and an
     HMAC of them and N under the HA token. Only a holder of the token can make it, so a node
     with the same token knows the bundle is its cluster's (a man in the middle cannot).
  2. POST /system/ha/enroll over TLS whose server chain must lead to that bundle (checked in
     the handshake, before the request is written): the HA token, the drp-id and a CSR.
Renewal is step 2 authenticated by the current certificate instead of the token.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import ssl

import httpx
import trio

from drp.ha.certs import Untrusted
from drp.ha.nodetrust import NodeTrust, enrolment_proof, utcnow
from drp.ha import trust
from drp.ha.trust import CLUSTER_SNI, csr_for, tls_refusal

log = logging.getLogger("drp.ha.trust")
TIMEOUT = 5.0
KEEP_EVERY = 60.0  # at most; short certificate lives are checked more often


class EnrolmentRefused(Exception):
    """Why this node has no usable certificate (one line); `code` as in replication refusals:
    "token" (the active refused us), "certificate" (we refuse what answered)."""

    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.reason, self.code = reason, code


def _api(join_url: str, path: str) -> str:
    return join_url.rstrip("/") + "/api/v3" + path


def _reason(resp: httpx.Response) -> str:
    try:
        return "; ".join(resp.json().get("Messages") or []) or resp.text[:200]
    except ValueError:
        return resp.text[:200]


async def discover(join_url: str, ha_token: str, ha_id: str, drp_id: str) -> dict:
    """Step 1: the active's bundle, proven by its knowledge of the HA token."""
    nonce = secrets.token_hex(16)
    try:
        async with httpx.AsyncClient(verify=False, timeout=TIMEOUT) as http:  # noqa: S501
            resp = await http.get(_api(join_url, "/system/ha/discover"),
                                  params={"nonce": nonce, "ha_id": ha_id, "drp_id": drp_id})
    except httpx.HTTPError as e:  # as any failure to connect: the follower backs off
        raise ConnectionError(f"cannot reach {join_url} to enrol: {e or type(e).__name__}") \
            from None
    if resp.status_code == 409:
        raise EnrolmentRefused(_reason(resp), "not_active")
    if resp.status_code == 403:
        raise EnrolmentRefused(_reason(resp), "ha_id")
    if resp.status_code != 200:
        raise EnrolmentRefused(f"{join_url} answered discovery with HTTP {resp.status_code}: "
                               f"{_reason(resp)}", "certificate")
    found = resp.json()
    bundle, drp_id = str(found.get("Bundle", "")), str(found.get("DrpId", ""))
    if found.get("HaId") != ha_id:
        raise EnrolmentRefused(f"{join_url} serves cluster {found.get('HaId')!r}, not "
                               f"{ha_id!r} (--ha-id)", "certificate")
    expected = enrolment_proof(ha_token, nonce, ha_id, drp_id, bundle)
    if not hmac.compare_digest(expected, str(found.get("Proof", ""))):
        raise EnrolmentRefused(
            f"{join_url} ({drp_id or '?'}) does not prove it knows this node's HA token: "
            "RS_HA_TOKEN here is not the cluster's current one (`drpcli system ha "
            "rotate-token` on the active prints a new one), or something else answers there; "
            "nothing was sent", "certificate")
    return {"DrpId": drp_id, "Bundle": bundle}


async def _post(ctx: ssl.SSLContext, join_url: str, path: str, body: dict,
                headers: dict) -> dict:
    """A POST to the active over TLS with the cluster bundle as the only roots."""
    try:
        async with httpx.AsyncClient(verify=ctx, timeout=TIMEOUT) as http:
            resp = await http.post(_api(join_url, path), json=body, headers=headers,
                                   extensions={"sni_hostname": CLUSTER_SNI})
    except httpx.ConnectError as e:
        raise EnrolmentRefused(f"refusing {join_url}: {tls_refusal(e)}", "certificate") \
            from None
    except httpx.HTTPError as e:
        raise ConnectionError(f"cannot reach {join_url}: {e or type(e).__name__}") from None
    if resp.status_code == 409:
        raise EnrolmentRefused(_reason(resp), "not_active")
    if resp.status_code != 200:
        raise EnrolmentRefused(f"the active refused this node ({_reason(resp)})", "token")
    return resp.json()


async def enrol(nt: NodeTrust, join_url: str, ha_token: str) -> None:
    found = await discover(join_url, ha_token, nt.ha_id, nt.drp_id)
    # Step 2 trusts only the proven bundle, and shows no certificate (an expired one would
    # fail the handshake).
    ctx = trust.client_context(None, None, found["Bundle"])
    answer = await _post(ctx, join_url, "/system/ha/enroll",
                         {"DrpId": nt.drp_id, "Csr": csr_for(nt.drp_id, nt.key)},
                         {"Authorization": f"Bearer {ha_token}"})
    await _take(nt, answer)
    log.info("enrolled in cluster %s with active %s: certificate valid until %s UTC",
             nt.ha_id, found["DrpId"], nt.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S"))


async def renew(nt: NodeTrust, join_url: str) -> None:
    answer = await _post(nt.client_context(), join_url, "/system/ha/renew",
                         {"Csr": csr_for(nt.drp_id, nt.key)}, {})
    await _take(nt, answer)
    log.info("renewed this node's certificate: valid until %s UTC",
             nt.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S"))


async def _take(nt: NodeTrust, answer: dict) -> None:
    try:
        await nt.install_enrolment(str(answer.get("Cert", "")), str(answer.get("Bundle", "")))
    except (Untrusted, ValueError) as e:
        raise EnrolmentRefused(f"the certificate the active issued is unusable: {e}",
                               "certificate") from None


async def ensure(nt: NodeTrust, join_url: str, ha_token: str | None) -> None:
    """Before a passive dials the active: a usable certificate, renewed when due (a failed
    renewal is fine while the current one lasts), or enrolled afresh with the HA token."""
    await nt.refresh()
    problem = nt.cert_problem()
    if problem is None:
        if nt.wants_renewal():
            try:
                await renew(nt, join_url)
            except (EnrolmentRefused, ConnectionError) as e:
                log.warning("renewing this node's certificate failed (%s); the current one is "
                            "still valid", getattr(e, "reason", e))
        return
    if not ha_token:
        raise EnrolmentRefused(f"{problem}, and no HA token (RS_HA_TOKEN) to enrol with",
                               "token")
    # (ConnectionError when the active cannot be reached: a failure like any other to dial)
    log.info("%s: enrolling with the active at %s", problem, join_url)
    await enrol(nt, join_url, ha_token)


def keep_interval(nt: NodeTrust) -> float:
    return min(KEEP_EVERY, nt.life.total_seconds() / 8)


async def keep_active(nt: NodeTrust) -> None:
    """The active: rotate the root when due, re-certify itself at half life or after a
    rotation, and pick up what changed in the store."""
    while True:
        await trio.sleep(keep_interval(nt))
        try:
            await nt.refresh()
            if nt.ca is not None and nt.ca.rotate_if_due(utcnow()):
                await nt.store_ca()
                log.info("rotated the cluster CA: new root until %s UTC (older roots stay "
                         "trusted until they expire)",
                         nt.ca.current.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M"))
            if nt.wants_renewal() or nt.cert_problem():
                await nt.issue_own()
        except Exception as e:  # noqa: BLE001 — tried again next round; the cert still lasts
            log.warning("keeping this node's certificate: %s", e)


async def keep_passive(nt: NodeTrust, join_url: str, ha_token: str | None) -> None:
    """A passive: renew at half life (the follower enrols before it dials, this keeps an
    established stream's node renewed), and pick up a rotated bundle from the store."""
    while True:
        await trio.sleep(keep_interval(nt))
        try:
            await ensure(nt, join_url, ha_token)
        except (EnrolmentRefused, ConnectionError) as e:
            log.warning("keeping this node's certificate: %s", getattr(e, "reason", e))

