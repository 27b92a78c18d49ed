"""Many /api/v3/ws subscribers in one trio process, for tests/test_events_scale.py and
bench/events.py: connect them, register patterns, collect what the readers receive."""
from __future__ import annotations

import json
import ssl
import sys
import time

import httpx
import trio
from trio_websocket import ConnectionClosed, connect_websocket_url

from tests.drpserver import REPO, DrpServer


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def token(server: DrpServer) -> str:
    """A Bearer token: Basic auth would hash the password once per connection."""
    with server.client() as c:
        r = c.get("/users/rocketskates/token", params={"ttl": "1h"})
        r.raise_for_status()
        return r.json()["Token"]


class Subscriber:
    def __init__(self, pattern: str, reads: bool):
        self.pattern, self.reads = pattern, reads
        self.ws = None
        self.events: list[dict] = []
        self.closed: ConnectionClosed | None = None

    async def read(self) -> None:
        try:
            while True:
                self.events.append(json.loads(await self.ws.get_message()))
        except ConnectionClosed as e:
            self.closed = e


async def connect_all(nursery: trio.Nursery, server: DrpServer, bearer: str,
                      subs: list[Subscriber], parallel: int = 32) -> None:
    """Connect and register every subscriber; when this returns, each registration is in
    force (the server answered a later command) and the readers are reading."""
    url = server.url.replace("https://", "wss://") + "/api/v3/ws"
    headers = [(b"Authorization", b"Bearer " + bearer.encode())]
    ctx = insecure()
    limit = trio.CapacityLimiter(parallel)

    async def one(sub: Subscriber) -> None:
        async with limit:
            sub.ws = await connect_websocket_url(nursery, url, ctx, extra_headers=headers)
            await sub.ws.send_message(f"register {sub.pattern}")
            await sub.ws.send_message("sync")  # an unknown command: answered in order
            reply = json.loads(await sub.ws.get_message())
            assert "Error" in reply, reply
        if sub.reads:
            nursery.start_soon(sub.read)
    async with trio.open_nursery() as inner:
        for sub in subs:
            inner.start_soon(one, sub)


async def create_machines(server: DrpServer, bearer: str, prefix: str, count: int,
                          params_kb: int = 1) -> tuple[float, list[str]]:
    """POST `count` machines in turn from another process (so the subscribers here do not
    share its interpreter): the seconds it took and the machines' Uuids, in order."""
    proc = await trio.run_process(
        [sys.executable, "-m", "tests.eventsubs", server.url, bearer, prefix, str(count),
         str(params_kb)], cwd=REPO, capture_stdout=True)
    out = json.loads(proc.stdout)
    return out["seconds"], out["uuids"]


def _create(url: str, bearer: str, prefix: str, count: int, params_kb: int) -> dict:
    filler = {"bench/fill": "x" * (params_kb * 1024)}
    names = [f"{prefix}-{i}" for i in range(count)]
    uuids = []
    with httpx.Client(base_url=url + "/api/v3", verify=False, timeout=60,
                      headers={"Authorization": f"Bearer {bearer}"}) as c:
        c.get("/info").raise_for_status()  # connected before the clock starts
        t0 = time.perf_counter()
        for name in names:
            r = c.post("/machines", json={"Name": name, "Params": filler})
            assert r.status_code == 201, r.text
            uuids.append(r.json()["Uuid"])
        return {"seconds": time.perf_counter() - t0, "uuids": uuids}


if __name__ == "__main__":  # url bearer prefix count params_kb
    url, bearer, prefix, count, kb = sys.argv[1:]
    print(json.dumps(_create(url, bearer, prefix, int(count), int(kb))))
