"""The DHCP server's batched lease commits over a real store: every lease decided while a batch
commits goes in one write and each ACK leaves only after it; a write that fails sends nothing
and leaves the book as the store has it."""
from __future__ import annotations

import ipaddress

import trio

from drp.config import load
from drp.dhcp import engine
from drp.dhcp.server import DhcpServer
from drp.node import Node, bootstrap
from drp.store.store import Store
from tests.test_dhcp_core import MAC, MAC2, MAC3, NOW, SERVER, book, req

INGRESS = engine.Ingress("lab0", SERVER, (ipaddress.IPv4Interface(f"{SERVER}/24"),), 8091)


class Socket:
    """Records what the server sends."""

    def __init__(self):
        self.sent = []

    def sendmsg(self, buffers, ancdata, flags, dest):
        self.sent.append((b"".join(buffers), dest))


async def server(tmp_path) -> DhcpServer:
    store = Store(tmp_path / "drp.db")
    await store.write(lambda tx: bootstrap(tx, "n1"), internal=True)
    srv = DhcpServer(Node(load(["--base-root", str(tmp_path)], {}), store, "n1"))
    srv.book, srv.sock = book(), Socket()
    store.listeners.append(srv._on_change)
    return srv


def queue_ack(srv: DhcpServer, mac: str) -> str:
    """DISCOVER, then the REQUEST decided and queued as the server does: lease in the book."""
    offer = engine.decide(req("discover", mac), INGRESS, srv.book, NOW)
    addr = ipaddress.IPv4Address(offer.reply[16:20]).compressed
    ack = engine.decide(req("request", mac, extra=[("server_id", SERVER),
                                                  ("requested_addr", addr)]), INGRESS, srv.book, NOW)
    srv._queue(ack, 1, INGRESS)
    return addr


async def commit_waiting(srv: DhcpServer) -> None:
    """The server's committer, until everything queued is committed (or not) and answered."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(srv._commit_loop, nursery)
        with trio.fail_after(10):
            while srv.waiting or srv.committing:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_batch_is_one_write_and_the_acks_follow_it(tmp_path):
    srv = await server(tmp_path)
    addrs = [queue_ack(srv, mac) for mac in (MAC, MAC2, MAC3)]
    head = srv.store.head
    await commit_waiting(srv)
    assert srv.store.head == head + 3  # three leases, one group
    assert sorted(l["Addr"] for l in await srv.store.list("leases")) == sorted(addrs)
    assert [ipaddress.IPv4Address(raw[16:20]).compressed for raw, _ in srv.sock.sent] == addrs
    assert srv.answered == 3 and srv.committing == 0
    srv.store.close()


async def test_a_failed_write_sends_nothing_and_the_book_is_the_stores(tmp_path):
    srv = await server(tmp_path)
    kept = queue_ack(srv, MAC)
    await commit_waiting(srv)  # committed: MAC's lease is in the store
    srv.sock.sent.clear()
    lost = [queue_ack(srv, mac) for mac in (MAC2, MAC3)]
    assert all(srv.book.lease_at(a) is not None for a in lost)  # held while committing
    srv.store.refuse_writes("passive now")
    await commit_waiting(srv)
    assert srv.sock.sent == [] and srv.answered == 1
    assert [srv.book.lease_at(a) for a in lost] == [None, None]
    assert srv.book.lease_at(kept) == await srv.store.get("leases", kept)
    srv.store.close()
