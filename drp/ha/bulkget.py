"""Keep-alive GETs to the active for catch-up's fetch threads (blocking, one thread each).

Built on the standard library's http.client rather than httpx: its response reads a body with
`readinto` straight into the caller's buffer, one C call per TLS record, where httpx's blocking
client spends ~45 µs of Python (httpcore, h11, re-chunking) on every 16 KiB record. Measured on
4 MiB files over loopback TLS with 4 threads: ~280 vs ~215 MB/s, the passive's CPU the limit.
"""
from __future__ import annotations

import http.client
import ssl
import threading
from contextlib import contextmanager
from typing import Callable, Iterator
from urllib.parse import quote, urlsplit


class CertificateMismatch(ssl.SSLError):
    """The server is not the active the replication stream is following."""


class PoolClosed(RuntimeError):
    """The pool was closed (its fetcher is closing, or the server it talks to changed)."""


# Characters a path keeps as they are (RFC 3986 pchar and "/"); the rest is percent-encoded.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def unverified_context() -> ssl.SSLContext:
    """A client context that checks no CA, for a Pool given no cluster TLS: who the server
    is is then left entirely to the peer check (set_peer), made before anything is sent."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Https(http.client.HTTPSConnection):
    """HTTPS to an address with another name in the SNI (the cluster side of a node's API
    port answers to drp.ha.trust.CLUSTER_SNI, not to its address)."""

    def __init__(self, host, port, timeout, context, server_name: str | None):
        super().__init__(host, port, timeout=timeout, context=context)
        self.server_name = server_name or host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_name)


class Pool:
    """Idle connections to one base URL, shared by the threads of one fetcher."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float,
                 connect_timeout: float | None = None,
                 tls: tuple[Callable[[], ssl.SSLContext], str] | None = None):
        """tls: (a function returning the client context, the SNI to send) for mutual TLS
        with the cluster; None: no CA check, the peer check alone says who the server is."""
        url = urlsplit(base_url)
        self.https = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.https else 80)
        self.prefix = url.path.rstrip("/")
        self.headers = headers
        self.timeout = timeout  # for each read
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.tls = tls
        # Every HTTPS connection must pass the peer check (set_peer: the active the stream
        # follows) before a request is written on it.
        self.peer: tuple[str, Callable[[bytes], object]] | None = None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def set_peer(self, tag: str, check: Callable[[bytes], object]) -> None:
        """Only talk to a server whose certificate (DER) passes `check` from now on (it
        raises to refuse); `tag` names that server (idle connections to another are
        dropped)."""
        with self._lock:
            if self.peer is not None and self.peer[0] == tag:
                self.peer = (tag, check)
                return
            self.peer, idle, self._idle = (tag, check), self._idle, []
        for conn in idle:
            conn.close()

    @property
    def peer_tag(self) -> str | None:
        return self.peer[0] if self.peer else None

    def _connect(self) -> http.client.HTTPConnection:
        """A new connection, tagged with the peer it was checked against: it is pooled only
        while that is still the one to trust."""
        expected = self.peer
        if self.https:
            context = self.tls[0]() if self.tls else unverified_context()
            conn = _Https(self.host, self.port, self.connect_timeout, context,
                          self.tls[1] if self.tls else None)
        else:
            conn = http.client.HTTPConnection(self.host, self.port,
                                              timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.timeout)  # connect_timeout was for the connect only
        if self.https:
            der = conn.sock.getpeercert(binary_form=True) or b""
            try:
                if expected is None:
                    raise CertificateMismatch("no active to trust is known yet")
                expected[1](der)
            except Exception as e:
                conn.close()
                raise CertificateMismatch(f"{self.host}:{self.port}: {e}: not sending the "
                                          "request there") from None
        conn.checked_peer = expected[0] if expected else None
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
                        conn.checked_peer == self.peer_tag:
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
