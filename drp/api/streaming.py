"""How the API (and the static server) receive HTTP requests under quart-trio + hypercorn.

1. Backpressure, so a 4 GiB upload streams in constant memory. Quart's ASGI handler appends
   every received chunk to `request.body` without waiting for the handler to consume it, so a
   disk slower than the network would buffer the whole upload in memory. Here the receiving side
   waits while more than `LIMIT` bytes are buffered; hypercorn's bounded app queue then stops
   reading the socket and TCP flow control slows the client. A handler that awaits the whole
   body (JSON requests) is unaffected.
2. Keep-alive connections that no longer hang or leak after an early response (see
   BoundedASGIHTTPConnection), and an HTTP server that survives one connection's protocol error
   (see harden_hypercorn).
3. A body that stalls is refused: when no byte of it arrives for --body-timeout, its reader
   gets a 408 (the upload's temp file goes with it) and the connection is closed.
"""
from __future__ import annotations

import logging
import math

import trio
from hypercorn.trio.tcp_server import TCPServer
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import EventWrapper, TrioBody, TrioRequest
from werkzeug.exceptions import RequestEntityTooLarge

from drp.api.errors import ApiError

LIMIT = 4 << 20
BODY_TIMEOUT = "DRP_BODY_TIMEOUT"  # app.config: seconds a body may send nothing (None: no limit)


class BoundedBody(TrioBody):
    """Chunks are kept as a list (no copying on append); the consumer can ask for at least n
    bytes at a time (`read_some`) and is woken once per n bytes, not once per TLS record."""

    def __init__(self, expected_content_length, max_content_length):
        super().__init__(expected_content_length, max_content_length)
        self._chunks: list[bytes] = []
        self._size = 0
        self._want = 1  # wake the consumer once this many bytes are buffered
        self._whole = False  # someone awaits the complete body: never hold the sender back
        self._released = False  # the response is done; the rest of the body is discarded
        self._room = EventWrapper()

    # the sending side (hypercorn -> handle_messages)
    def append(self, data: bytes) -> None:
        if data == b"" or self._must_raise is not None or self._released:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._max_content_length is not None and self._size > self._max_content_length:
            self._must_raise = RequestEntityTooLarge()
            self.set_complete()
        elif self._size >= self._want:
            self._has_data.set()

    async def wait_room(self) -> None:
        while (self._size > LIMIT and not self._whole and not self._released
               and not self._complete.is_set() and self._must_raise is None):
            self._room.clear()
            await self._room.wait()

    def release(self) -> None:
        """The response is finished: drop what is buffered and whatever still arrives."""
        self._released = True
        self._chunks, self._size = [], 0
        self._room.set()

    def fail(self, error: Exception) -> None:
        """The body will not be completed (it stalled): its reader gets `error`."""
        self._must_raise = error
        self._chunks, self._size = [], 0
        self.set_complete()
        self._room.set()

    def _take(self) -> bytes:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks, self._size = [], 0
        self._has_data.clear()
        self._room.set()
        return data

    # the consuming side (the handler)
    async def read_some(self, at_least: int = 1) -> bytes:
        """Whatever is buffered once at least `at_least` bytes are (or the body ended);
        b"" at the end of the body."""
        if self._must_raise is not None:
            raise self._must_raise
        self._want = max(1, at_least)
        while self._size < self._want and not self._complete.is_set():
            self._has_data.clear()
            await self._has_data.wait()
            if self._must_raise is not None:
                raise self._must_raise
        return self._take()

    async def __anext__(self) -> bytes:
        data = await self.read_some(1)
        if not data:
            raise StopAsyncIteration()
        return data

    def __await__(self):
        self._whole = True
        self._room.set()
        if self._must_raise is not None:
            raise self._must_raise
        yield from self._complete.wait().__await__()
        if self._must_raise is not None:
            raise self._must_raise
        data = b"".join(self._chunks)
        self._chunks, self._size = [data] if data else [], len(data)
        return data

    def clear(self) -> None:
        self._chunks, self._size = [], 0
        self._room.set()


async def chunks_of(body, size: int):
    """Iterate a request body in pieces of at least `size` bytes (the last may be smaller)."""
    if not isinstance(body, BoundedBody):
        async for chunk in body:
            yield chunk
        return
    while data := await body.read_some(size):
        yield data


class BoundedRequest(TrioRequest):
    body_class = BoundedBody


class BoundedASGIHTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's connection with two fixes:
    - backpressure: the receiving side waits while the handler is behind (see BoundedBody);
    - no self-cancellation at the end of a response. hypercorn emits `http.disconnect` from
      inside the final `send` of the response (as it closes or recycles the stream); quart-trio
      then cancelled the nursery, interrupting hypercorn's own recycle/close half-way, so a
      keep-alive connection whose response finished before its request body did would hang
      forever. A disconnect cancels the handler only while the response is unfinished (the
      client went away mid-request, e.g. a cut-off upload)."""

    _response_done = False
    _body_ended = False  # the client sent the whole request body

    async def handle_messages(self, nursery, request, receive) -> None:  # type: ignore
        body = request.body
        stall = self.app.config.get(BODY_TIMEOUT) or math.inf
        while True:
            watched = (not self._body_ended and isinstance(body, BoundedBody)
                       and body._must_raise is None and not body._released)
            if watched and stall != math.inf:
                with trio.move_on_after(stall) as waited:
                    message = await receive()
                if waited.cancelled_caught:  # the client sends nothing: answered 408
                    body.fail(ApiError(408, f"the request body stalled: nothing arrived for "
                                       f"{stall:g}s (the server's --body-timeout)"))
                    continue
            else:  # no body to wait for (a GET): no deadline, no cancel scope
                message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._body_ended = True
                    body.set_complete()
                elif isinstance(body, BoundedBody):
                    await body.wait_room()
            elif message["type"] == "http.disconnect":
                break
        if not self._response_done:
            nursery.cancel_scope.cancel()

    async def handle_request(self, nursery, request, send) -> None:  # type: ignore
        if not _declares_body(request.headers):
            # Nothing to wait for: h11 saw the end of the request with its head, and the
            # connection stays open. (Marking it here, not when handle_messages gets to the
            # empty body: under load the reply can start first, and each reply of a
            # keep-alive client would then say close — a TLS handshake per request.)
            self._body_ended = True

        async def tracking_send(message) -> None:
            if message["type"] == "http.response.start" and not self._body_ended:
                # Answered before the request body was all in (an early error, a GET with a
                # body): hypercorn closes the connection after this reply, so the reply says
                # so; else a client sends its next request into a closing connection.
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"connection", b"close")]}
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._response_done = True
                if isinstance(request.body, BoundedBody):
                    request.body.release()  # nobody will read the rest: drain, do not hold
            await send(message)
        await super().handle_request(nursery, request, tracking_send)


def _declares_body(headers) -> bool:
    """Does the request head announce a body (chunked, or a Content-Length above 0)?"""
    if headers.get("Transfer-Encoding"):
        return True
    return headers.get("Content-Length", "0").strip() not in ("", "0")


def install(app, body_timeout: float | None = None) -> None:
    """Make `app` (a QuartTrio) use the bounded body for every HTTP request; a body that sends
    nothing for `body_timeout` seconds (None or 0: no limit) is refused with 408."""
    app.config[BODY_TIMEOUT] = body_timeout or None
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
