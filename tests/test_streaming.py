"""drp.api.streaming: bounded request bodies, and keep-alive after early responses."""
from __future__ import annotations

import base64
import socket
import ssl
import threading

import httpx
import pytest
import trio

from drp.api.streaming import LIMIT, BoundedBody, chunks_of


async def test_bounded_body_holds_the_sender_back():
    body = BoundedBody(None, None)
    chunk = b"x" * 65536
    total = 64 << 20
    peak = 0

    async def sender():
        nonlocal peak
        for _ in range(total // len(chunk)):
            body.append(chunk)
            peak = max(peak, body._size)
            await body.wait_room()
        body.set_complete()

    got = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        async for piece in chunks_of(body, 1 << 20):
            assert len(piece) >= 1 << 20 or got + len(piece) == total
            got += len(piece)
            await trio.sleep(0.001)  # a slow disk
    assert got == total
    assert peak <= LIMIT + len(chunk)


async def test_whole_body_await_is_not_held_back():
    body = BoundedBody(None, None)

    async def sender():
        for _ in range(200):  # 12.5 MiB, more than LIMIT
            body.append(b"y" * 65536)
            await body.wait_room()
        body.set_complete()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        with trio.fail_after(5):
            data = await body
    assert len(data) == 200 * 65536


async def test_released_body_drains_without_buffering():
    body = BoundedBody(None, None)
    body.append(b"z" * (LIMIT + 1))
    body.release()
    with trio.fail_after(1):
        await body.wait_room()
    body.append(b"more")
    assert body._size == 0


def test_keep_alive_survives_responses_sent_before_the_body(drp):
    """quart-trio cancelled hypercorn's own recycle of a connection whose response finished
    before its request body arrived; the next request on it hung forever. And a response that
    beats the body must say `Connection: close` (the server closes after it): a client that
    reused the connection had its next request refused ("Server disconnected")."""
    static = httpx.Client(base_url=f"http://127.0.0.1:{drp.static_port}", timeout=5)
    with static, drp.client(timeout=5) as api:
        for i in range(60):
            body = b"y" * (i * 300)
            assert static.post("/files/x", content=body).status_code == 405
            assert api.post("/files/a/%2e%2e/b", content=body).status_code == 400
            assert api.post("/jobs/nope/log", content=body).status_code == 405
            assert static.request("GET", "/files/none", content=body).status_code == 404
        assert api.get("/info").status_code == 200


@pytest.mark.parametrize("server", ["api", "static"])
def test_a_reply_sent_before_the_body_says_it_closes(drp, server):
    """Headers announce a body that has not come yet: the (early) reply says
    `Connection: close`, and the server then closes; a request without a body keeps the
    connection open."""
    port, tls = (drp.api_port, True) if server == "api" else (drp.static_port, False)
    # a bad path through the API; a GET with a body from the static server (it reads none)
    method, target = ("POST", "/api/v3/files/a/%2e%2e/b") if server == "api" else \
        ("GET", "/files/x")
    sock = socket.create_connection((drp.host, port), timeout=10)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    auth = base64.b64encode(b"rocketskates:r0cketsk8ts").decode()
    head = (f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
            "Content-Length: 1000\r\n\r\n")
    with sock:
        sock.sendall(head.encode())  # and not the body
        data = b""
        while chunk := sock.recv(65536):  # until the server closes
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.split()[1] in (b"400", b"404"), data[:300]
    headers = rest.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in headers, headers
    with (drp.client() if server == "api" else
          httpx.Client(base_url=f"http://127.0.0.1:{drp.static_port}")) as client:
        first = client.get("/info" if server == "api" else "/files/none")
        assert "close" not in first.headers.get("connection", "")


def test_http2_early_response_does_not_kill_the_server(drp):
    """hypercorn's H2 protocol raised KeyError for DATA on a stream it had already closed (an
    upload refused before its body arrived), and that error used to end the whole listener."""
    h2 = httpx.Client(http2=True, verify=False, base_url=drp.url + "/api/v3", timeout=10,
                      auth=("rocketskates", "r0cketsk8ts"))
    with h2:
        for _ in range(3):
            try:
                h2.post("/files/a/%2e%2e/x", content=b"y" * (8 << 20))
            except httpx.HTTPError:
                pass  # the connection is dropped; what matters is the server
    assert drp.proc.poll() is None
    with drp.client() as c:
        assert c.get("/info").status_code == 200


def test_busy_keep_alive_clients_keep_their_connections(drp):
    """A request without a body has ended with its head: its reply never says close, however
    the server's tasks are scheduled. Under load the reply used to start before the server had
    noted the (empty) body, said `Connection: close`, and every request of a keep-alive client
    paid a new TLS handshake."""
    with drp.client() as c:
        token = c.get("/users/rocketskates/token").json()["Token"]
        c.post("/profiles", json={"Name": "hot"}).raise_for_status()
    closing = []

    def client() -> None:
        with drp.client(token=token) as c:
            for _ in range(150):
                r = c.get("/profiles/hot")  # from the cache: answered without a wait
                assert r.status_code == 200
                if "close" in r.headers.get("connection", ""):
                    closing.append(r)
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not closing, f"{len(closing)} of 1200 replies said Connection: close"
