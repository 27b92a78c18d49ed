"""etcd v3 as automatic failover uses it: leases, reads, compare-and-set transactions.

Through etcd3gw (OpenStack's client for etcd's JSON gateway, `/v3/`): plain HTTP(S) with
`requests`, so no gRPC stack to build, and blocking — the trio side (drp.ha.consensus) calls
it through `trio.to_thread`. etcd3gw speaks to one endpoint; this wrapper holds one client per
`--ha-etcd-endpoints` URL and moves to the next on a connection failure, as etcd's own clients
do. Every call is bounded by `timeout`.

A request that timed out may still have been applied: callers that need to know read back
(a compare-and-set retried on another member fails its compare if the first one landed).
"""
from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc
from etcd3gw.lease import Lease

# What a member that cannot answer raises (another member may); anything else is an answer.
_UNREACHABLE = (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                etcd_exc.InternalServerError, requests.RequestException, ValueError)


class EtcdError(Exception):
    """etcd could not be reached or refused the request; the message is one line."""


@dataclass(frozen=True)
class Kv:
    """One key as read: its value and the revisions compare-and-set conditions use."""
    value: str
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True)
class Absent:
    """Condition: the key does not exist."""
    key: str


@dataclass(frozen=True)
class Created:
    """Condition: the key exists and was created at this revision (the same incarnation)."""
    key: str
    revision: int


@dataclass(frozen=True)
class Modified:
    """Condition: the key was last changed at this revision (0: it does not exist)."""
    key: str
    revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _compare(cond) -> dict:
    if isinstance(cond, Absent):
        return {"key": _b64(cond.key), "result": "EQUAL", "target": "CREATE",
                "create_revision": "0"}
    if isinstance(cond, Created):
        return {"key": _b64(cond.key), "result": "EQUAL", "target": "CREATE",
                "create_revision": str(cond.revision)}
    if isinstance(cond, Modified):
        return {"key": _b64(cond.key), "result": "EQUAL", "target": "MOD",
                "mod_revision": str(cond.revision)}
    raise TypeError(f"not a condition: {cond!r}")


def _request(op) -> dict:
    if isinstance(op, Put):
        put = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    if isinstance(op, Delete):
        return {"request_delete_range": {"key": _b64(op.key)}}
    raise TypeError(f"not an operation: {op!r}")


def _kv(value: bytes, meta: dict) -> Kv:
    return Kv(value.decode(errors="replace"), int(meta.get("mod_revision", 0)),
              int(meta.get("create_revision", 0)), int(meta.get("lease", 0)))


class Etcd:
    """Blocking; one instance may be used from several threads (each call picks a member)."""

    def __init__(self, endpoints: list[str], ca: str | None = None, cert: str | None = None,
                 key: str | None = None, timeout: float = 1.0):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self._clients = []
        for url in self.endpoints:
            parts = urlsplit(url)
            self._clients.append(etcd3gw.Etcd3Client(
                host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                timeout=timeout, api_path="/v3/", session=_session(ca, cert, key)))
        self._current = 0
        self._lock = threading.Lock()

    def _call(self, fn):
        """fn(client) on the member that answered last, then on the others in turn."""
        with self._lock:
            start = self._current
        reasons = []
        for i in range(len(self._clients)):
            index = (start + i) % len(self._clients)
            try:
                result = fn(self._clients[index])
            except _UNREACHABLE as e:
                reasons.append(f"{self.endpoints[index]}: {_one_line(e)}")
                continue
            except etcd_exc.Etcd3Exception as e:
                raise EtcdError(f"etcd refused the request: {_one_line(e)}") from None
            with self._lock:
                self._current = index
            return result
        raise EtcdError("no etcd member answered (" + "; ".join(reasons) + ")")

    # ---- leases ---------------------------------------------------------------------------
    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease; returns (id, the TTL etcd granted: never less than its minimum)."""
        def grant(client):
            reply = client.post(client.get_url("/lease/grant"), json={"TTL": ttl, "ID": 0})
            return int(reply["ID"]), int(reply["TTL"])
        return self._call(grant)

    def keepalive(self, lease: int) -> int:
        """Renew a lease; returns its TTL again, or -1 if it has expired."""
        return self._call(lambda client: Lease(lease, client).refresh())

    def revoke(self, lease: int) -> None:
        """End a lease now: the keys on it go at once."""
        self._call(lambda client: Lease(lease, client).revoke())

    # ---- keys -----------------------------------------------------------------------------
    def get(self, key: str) -> Kv | None:
        found = self._call(lambda client: client.get(key.encode(), metadata=True))
        return _kv(*found[0]) if found else None

    def get_prefix(self, prefix: str) -> dict[str, Kv]:
        found = self._call(lambda client: client.get_prefix(prefix.encode()))
        return {meta["key"].decode(): _kv(value, meta) for value, meta in found}

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self._call(lambda client: client.put(
            key.encode(), value.encode(), lease=Lease(lease, client) if lease else None))

    def txn(self, conditions: list, then: list) -> tuple[bool, int]:
        """If every condition holds, apply `then`. Returns (applied, the store's revision
        after the transaction: a key it created has this create revision)."""
        body = {"compare": [_compare(c) for c in conditions],
                "success": [_request(op) for op in then], "failure": []}
        reply = self._call(lambda client: client.transaction(body))
        return bool(reply.get("succeeded", False)), int(reply["header"]["revision"])


def _session(ca: str | None, cert: str | None, key: str | None) -> requests.Session:
    session = requests.Session()
    # Not from the environment: REQUESTS_CA_BUNDLE would silently replace --ha-etcd-ca, and
    # an HTTP(S)_PROXY meant for downloads would sit between the active and its lease.
    session.trust_env = False
    session.verify = ca if ca else True
    if cert and key:
        session.cert = (cert, key)
    return session


def _one_line(error: BaseException) -> str:
    text = str(getattr(error, "detail_text", "") or error)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        text = "TLS: etcd's certificate is not signed by --ha-etcd-ca (" + \
            text.split("CERTIFICATE_VERIFY_FAILED]")[-1].split("(_ssl")[0].strip() + ")"
    elif "Max retries exceeded" in text and "Caused by" in text:
        text = text.split("Caused by", 1)[1].strip(" ()")  # urllib3's wrapping says little
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__
