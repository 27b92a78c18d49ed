"""The static file server: plain HTTP on --static-port, read-only, unauthenticated, serving
<base-root>/tftpboot/ (so /files/... and /isos/...) to machines being provisioned, and files
and ISOs to passives catching up.

HTTP/1.1 through h11 on trio rather than Quart on hypercorn, because file bodies go out with
sendfile(2), from the page cache straight to the socket, where hypercorn takes every MiB
through a worker-thread pread and Python: server CPU per GiB served to four clients,
0.5-0.7 vs 1.3-1.8 seconds here. Range, If-None-Match and HEAD are answered as the API
answers them (drp.blob.send.plan_reply). It never lists directories, and never serves
anything whose real path (symlinks resolved) is outside tftpboot/.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import select
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h11
import trio
from werkzeug.datastructures import Headers

from drp.blob import storage
from drp.blob.send import Opened, plan_reply, open_blob
from drp.errors import error_body
from drp.serving import bind_spec

log = logging.getLogger("drp.static")
KEEP_ALIVE = 75.0  # a connection waits this long for its next request, whole (as the API)
STALL = 30.0  # a response may wait this long for the client to take in more of it
GRACE = 1.0  # at stop, responses under way get this long to finish
MAX_HEAD = 16 << 10  # request line and headers
SENDFILE_MAX = 8 << 20  # bytes per worker-thread hop
THREAD_WAIT_MS = 100  # a sending thread waits this long for room before handing back
SENDERS = 16  # threads sending at once; more clients take turns (the API's hops have others)


class _FileRange:
    """A body part to send with sendfile: h11 passes it through untouched, counting its len."""

    def __init__(self, fd: int, start: int, length: int):
        self.fd, self.start, self.length = fd, start, length

    def __len__(self) -> int:
        return self.length


def _sendfile_some(sock_fd: int, fd: int, offset: int, count: int) -> tuple[int, bool, bool]:
    """In a worker thread (a file not in the page cache is read from disk): up to `count`
    bytes from the file to the socket. When the socket's buffer is full it waits here a
    little (a reading client frees room within a millisecond, cheaper than a trip back to
    trio), then gives up its thread: (bytes sent, the file ended first, the socket is full)."""
    sent = 0
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while sent < count:
        try:
            n = os.sendfile(sock_fd, fd, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(THREAD_WAIT_MS):
                return sent, False, True
            continue
        if not n:
            return sent, True, False
        sent += n
    return sent, False, False


class _Closed(Exception):
    """The connection cannot go on (the client left or stalled, or the file shrank)."""


class StaticServer:
    def __init__(self, node):
        self.node = node
        self.root = Path(node.cfg.base_root, "tftpboot")
        self.senders = trio.CapacityLimiter(SENDERS)

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection: requests one after another (keep-alive) until either side ends it."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            try:
                await self._serve(stream, conn)
            except h11.RemoteProtocolError as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send_error(stream, conn, False, e.error_status_hint,
                                           f"bad request: {e}", close=True)
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                ConnectionError, h11.RemoteProtocolError):
            pass  # the client went away, stalled or broke HTTP: nothing more to answer
        except Exception:  # noqa: BLE001 — one connection's failure never ends the server
            log.exception("static file server: a request failed")
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with trio.move_on_after(1):
                    try:
                        await self._send_error(stream, conn, False, 500, "internal error "
                                               "(logged by the server)", close=True)
                    except Exception:  # noqa: BLE001 — the connection is closed below
                        pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(self, stream, conn: h11.Connection) -> None:
        while True:
            request = await self._next_event(stream, conn, KEEP_ALIVE)
            if not isinstance(request, h11.Request):
                return  # closed by the client, or idle too long
            # A GET has no body: its end is already here. A request with a body is answered
            # without reading it, and the reply closes the connection (see _send).
            conn.next_event()
            await self._respond(stream, conn, request)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    @staticmethod
    async def _next_event(stream, conn: h11.Connection, timeout: float):
        """The next h11 event, reading the socket as needed; None when `timeout` ran out."""
        with trio.move_on_after(timeout):
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                conn.receive_data(await stream.receive_some(64 << 10))
        return None

    async def _respond(self, stream, conn: h11.Connection, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await self._send_error(stream, conn, head, 405, f"{method} is not allowed: the "
                                   "static file server is read-only", {"Allow": "GET, HEAD"})
            return
        target = request.target.decode("ascii", "replace")
        if not target.startswith("/"):  # absolute form: http://host/path
            target = urlsplit(target).path or target
        target = target.split("?", 1)[0]
        if not target.startswith("/"):
            await self._send_error(stream, conn, head, 400, f"not a path: {target[:100]!r}")
            return
        rel = unquote(target[1:], errors="replace")
        if rel == "" or (rel.endswith("/") and "\x00" not in rel
                         and ".." not in rel.split("/")):
            await self._send_error(stream, conn, head, 404, "directory listings are not served",
                                   key=rel)
            return
        try:
            clean = storage.clean_relpath(rel)
            blob = storage.static_blob(clean)
            # A file or ISO is checked against its area's root, as the API checks it: an
            # operator may make tftpboot/isos a symlink to a bigger disk; below that root no
            # symlink may lead out. Anything else in tftpboot/ stays inside tftpboot/.
            if blob is not None:
                locate = partial(storage.safe_path, self.node.cfg.base_root, blob)
            else:
                locate = partial(storage.check_inside, self.root,
                                 self.root.joinpath(*clean.split("/")))
            opened = await open_blob(self.node.store, locate, blob)
        except storage.PathError as e:
            await self._send_error(stream, conn, head, e.code, str(e), key=rel)
            return
        except FileNotFoundError:
            await self._send_error(stream, conn, head, 404, f"{clean} not found", key=clean)
            return
        except OSError as e:  # a symlink loop, a name too long, no fds left...
            code = 400 if e.errno == errno.ENAMETOOLONG else 500
            await self._send_error(stream, conn, head, code, f"{clean}: {e.strerror}", key=clean)
            return
        try:
            await self._send_blob(stream, conn, method, Headers(
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]),
                opened, clean)
        finally:
            opened.close()

    async def _send_blob(self, stream, conn, method: str, headers: Headers, opened: Opened,
                         key: str) -> None:
        reply = plan_reply(method, headers, opened, model="files", key=key)
        body: bytes | _FileRange | None = reply.error
        if reply.length:
            start, end = reply.start, reply.start + reply.length
            body = opened.data[start:end] if opened.data is not None else \
                _FileRange(opened.fd, start, reply.length)
        await self._send(stream, conn, method == "HEAD", reply.status, reply.headers, body)

    async def _send_error(self, stream, conn, head: bool, code: int, message: str,
                          extra: dict | None = None, close: bool = False, key: str = "") -> None:
        body = json.dumps(error_body(code, message, model="files", key=key)).encode()
        headers = {"Content-Type": "application/json", **(extra or {})}
        if close:  # after a protocol or internal error: end the connection
            headers["Connection"] = "close"
        await self._send(stream, conn, head, code, headers, body)

    async def _send(self, stream, conn, head: bool, status: int, headers: dict,
                    body: bytes | _FileRange | None) -> None:
        if isinstance(body, bytes) and "Content-Length" not in headers:
            headers = {**headers, "Content-Length": str(len(body))}
        if conn.their_state is not h11.DONE:  # a request body we will not read
            headers = {**headers, "Connection": "close"}
        await self._send_bytes(stream, conn.send(h11.Response(
            status_code=status, headers=list(headers.items()))))
        if body and not head:
            for piece in conn.send_with_data_passthrough(h11.Data(data=body)):
                if isinstance(piece, _FileRange):
                    await self._sendfile(stream, piece)
                else:
                    await self._send_bytes(stream, piece)
        await self._send_bytes(stream, conn.send(h11.EndOfMessage()))

    @staticmethod
    async def _send_bytes(stream, data: bytes) -> None:
        if data:
            with trio.fail_after(STALL):
                await stream.send_all(data)

    async def _sendfile(self, stream, piece: _FileRange) -> None:
        sock = stream.socket
        offset, left = piece.start, piece.length
        while left:
            sent, ended, full = await trio.to_thread.run_sync(
                _sendfile_some, sock.fileno(), piece.fd, offset, min(left, SENDFILE_MAX),
                limiter=self.senders)
            if ended:  # the file is shorter than announced: the body cannot be completed
                raise _Closed(f"file shrank while being sent ({left - sent} bytes short)")
            offset += sent
            left -= sent
            if full:  # a slow client: wait for it here, holding no thread
                with trio.fail_after(STALL):
                    await trio.lowlevel.wait_writable(sock)


def static_service(node, stop: trio.Event):
    """An async fn(task_status=...) serving tftpboot/ on --static-port until `stop` is set."""
    server = StaticServer(node)

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        # Temp files from before this start belong to transfers a crash or kill cut off.
        swept = await trio.to_thread.run_sync(storage.sweep_temps, node.cfg.base_root,
                                              node.started)
        if swept:
            log.info("removed %d temp file(s) left by interrupted uploads", swept)
        os.makedirs(server.root, exist_ok=True)
        host = node.cfg.static_address
        listeners = await trio.open_tcp_listeners(node.cfg.static_port, host=host)
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, server.handle, listeners,
                                             handler_nursery=connections))
                log.info("static files on http://%s/ (tftpboot)", bind_spec(host, port))
                task_status.started()
                await stop.wait()
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            connections.cancel_scope.deadline = trio.current_time() + GRACE
    return run
