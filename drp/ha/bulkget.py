"""Keep-alive GETs to the active for catch-up's fetch threads (blocking, one thread each).

Built on the standard library's http.client rather than httpx: its response reads a body with
`readinto` straight into the caller's buffer, one C call per TLS record, where httpx's blocking
client spends ~45 µs of Python (httpcore, h11, re-chunking) on every 16 KiB record. Measured on
4 MiB files over loopback TLS with 4 threads: ~280 vs ~215 MB/s, the passive's CPU the limit.
"""
from __future__ import annotations

import hashlib
import http.client
import ssl
import threading
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import quote, urlsplit


class CertificateMismatch(ssl.SSLError):
    """The server is not the active whose certificate the replication stream pinned."""


class PoolClosed(RuntimeError):
    """The pool was closed (its fetcher is closing, or the server it talks to changed)."""


# Characters a path keeps as they are (RFC 3986 pchar and "/"); the rest is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def pinned_context() -> ssl.SSLContext:
    """A client context that checks no CA: the active's certificate is usually self-signed,
    and who it is is checked by its pinned sha256 instead (callers do it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Pool:
    """Idle connections to one base URL, shared by the threads of one fetcher."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float,
                 connect_timeout: float | None = None):
        url = urlsplit(base_url)
        self.https = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.https else 80)
        self.prefix = url.path.rstrip("/")
        self.headers = headers
        self.timeout = timeout  # for each read
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        # Self-signed certificates are the default: instead of a CA, every connection must
        # present the certificate the replication stream pinned (set_fingerprint), checked
        # before the token is sent.
        self.ssl_context = pinned_context()
        self.fingerprint: str | None = None  # sha256 of the active's certificate (DER)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def set_fingerprint(self, fingerprint: str) -> None:
        """Only talk to a server with this certificate from now on (idle connections to
        another are dropped)."""
        with self._lock:
            if fingerprint == self.fingerprint:
                return
            self.fingerprint, idle, self._idle = fingerprint, self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection, tagged with the fingerprint it was checked against: it is
        pooled only while that is still the one to trust."""
        expected = self.fingerprint
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port,
                                               timeout=self.connect_timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port,
                                              timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.timeout)  # connect_timeout was for the connect only
        if self.https:
            seen = hashlib.sha256(conn.sock.getpeercert(binary_form=True) or b"").hexdigest()
            if seen != expected:
                conn.close()
                raise CertificateMismatch(
                    f"{self.host}:{self.port} presented a certificate (sha256 {seen[:16]}…) "
                    f"other than the active's the replication stream pinned "
                    f"({(expected or 'none yet')[:16]}…): not sending the token there")
        conn.checked_fingerprint = expected
        return conn

    def _send(self, conn, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn.request("GET", quote(self.prefix + url, safe=_PATH_SAFE),
                     headers={**self.headers, **headers})
        return conn.getresponse()

    @contextmanager
    def get(self, url: str, headers: dict[str, str]) -> Iterator[http.client.HTTPResponse]:
        """A GET's response, its body still to read; the connection goes back to the pool
        when the body was read to the end."""
        with self._lock:
            if self._closed:
                raise PoolClosed("the fetcher was closed")
            conn = self._idle.pop() if self._idle else None
        resp = None
        if conn is not None:
            try:
                resp = self._send(conn, url, headers)
            except (OSError, http.client.HTTPException):
                conn.close()  # the active closed it while it was idle: once more, afresh
            except BaseException:
                conn.close()
                raise
        if resp is None:
            conn = self._connect()
            try:
                resp = self._send(conn, url, headers)
            except BaseException:
                conn.close()
                raise
        try:
            yield resp
        finally:
            # Read to its end (a body cut short leaves `length` > 0), the server keeping it.
            reusable = resp.isclosed() and not resp.will_close and not resp.length
            with self._lock:
                if reusable and not self._closed and \
                        conn.checked_fingerprint == self.fingerprint:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
