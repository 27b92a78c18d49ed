"""Request bodies with backpressure, so a 4 GiB upload streams in constant memory.

Quart's ASGI handler appends every received chunk to `request.body` without waiting for the
handler to consume it, so a disk slower than the network would buffer the whole upload in
memory. Here the receiving side waits while more than `LIMIT` bytes are buffered and the handler
is iterating the body; hypercorn's bounded app queue then stops reading the socket, and TCP flow
control slows the client. A handler that awaits the whole body (JSON requests) is unaffected.
"""
from __future__ import annotations

from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import EventWrapper, TrioBody, TrioRequest

LIMIT = 4 << 20


class BoundedBody(TrioBody):
    def __init__(self, expected_content_length, max_content_length):
        super().__init__(expected_content_length, max_content_length)
        self._whole = False  # someone awaits the complete body: never hold the sender back
        self._room = EventWrapper()

    async def __anext__(self) -> bytes:
        try:
            return await super().__anext__()
        finally:
            self._room.set()

    def __await__(self):
        self._whole = True
        self._room.set()
        return super().__await__()

    def clear(self) -> None:
        super().clear()
        self._room.set()

    async def wait_room(self) -> None:
        while (len(self._data) > LIMIT and not self._whole and not self._complete.is_set()
               and self._must_raise is None):
            self._room.clear()
            await self._room.wait()


class BoundedRequest(TrioRequest):
    body_class = BoundedBody


class BoundedASGIHTTPConnection(TrioASGIHTTPConnection):
    async def handle_messages(self, nursery, request, receive) -> None:  # type: ignore
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                else:
                    await body.wait_room()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


def install(app) -> None:
    """Make `app` (a QuartTrio) use the bounded body for every HTTP request."""
    app.request_class = BoundedRequest
    app.asgi_http_class = BoundedASGIHTTPConnection
    harden_hypercorn()


# ---- hypercorn safety net ---------------------------------------------------------------------
_patched = False


def harden_hypercorn() -> None:
    """One connection's error must not stop the server. hypercorn 0.18's trio TCPServer lets
    protocol errors escape into trio's serve_listeners, which ends the whole listener: e.g. an
    HTTP/2 client still sending DATA after an early response (a 403 to an upload) raises
    KeyError in H2Protocol and took the server down. Drop just that connection instead."""
    global _patched
    if _patched:
        return
    import logging

    from hypercorn.trio.tcp_server import TCPServer
    original = TCPServer.run
    log = logging.getLogger("drp.http")

    async def run(self) -> None:
        try:
            await original(self)
        except Exception as e:  # Cancelled (a BaseException) still propagates
            log.warning("closed an HTTP connection after a protocol error: %r", e)
            log.debug("protocol error details", exc_info=True)
    TCPServer.run = run
    _patched = True
