"""The DHCPv4 server on trio: one UDP socket on 0.0.0.0:--dhcp-port, the sans-IO core
(drp.dhcp.engine) deciding, the store committing each lease before its ACK leaves.

- Where a request came in (IP_PKTINFO) picks the interface: only --dhcp-ifs are answered
  (all when unset), and the interface's addresses pick the subnet (a relay's giaddr when set).
- On an HA active the server answers as the VIP (option 54, the reply's source): a client
  renews with whoever holds the VIP, so a lease survives a failover.
- A lease is written through the store's change log (synchronously replicated on an active)
  before the ACK is sent; a write that fails sends nothing (the client retries) and the book
  goes back to what the store holds. The leases decided while one batch commits go in the
  next: one write, one transaction, one replication round trip for all of them.
- Replies to clients without an address are broadcast out of the interface the request came
  in on; renewals go to ciaddr, relayed ones to giaddr:67.
- Bad packets are dropped and logged, at most one line per source (drp.ratelog).
"""
from __future__ import annotations

import logging
import socket as stdsocket
import time
from dataclasses import dataclass
from functools import lru_cache

import trio

from drp import udp
from drp.ratelog import RateLog
from drp.dhcp import engine, packets
from drp.dhcp.book import Book
from drp.dhcp.interfaces import Interfaces
from drp.modelvalues import complete, now_text
from drp.store.errors import StoreError

log = logging.getLogger("drp.dhcp")
KINDS = ("subnets", "reservations", "leases")
# Requests whose lease is being committed at most (their replies wait for it). More are
# dropped, not queued: a client retransmits (after 4 s, RFC 2131 4.1), and under a storm of
# them (a rack powering on) answering what is queued would spend the server on requests
# already given up.
IN_FLIGHT = 256
MAX_AGE = 2.0  # seconds a request may have waited in the socket before it is not worth answering
BURST = 64  # datagrams read per wakeup: then the committer and the rest of the node get a turn
COMMITS = 2  # lease batches committing at once: one replicates while the next is written


# Every field of the lease model in its order, zero; and those whose zero is a list or map
LEASE_ZERO = complete("leases", {})
_MUTABLE_ZERO = tuple(k for k, v in LEASE_ZERO.items() if isinstance(v, (list, dict)))


def stored_lease(lease: dict, old: dict) -> dict:
    """The engine's lease as stored: what complete("leases", ...) makes of it (model order,
    every field, the server's times set), without complete's walk of every field and nested
    option, which was half the cost of a REQUEST. The engine's leases hold model fields of
    their model's types only (tests/test_dhcp_codec.py holds this to complete())."""
    now = now_text()
    return {**LEASE_ZERO, **{k: type(LEASE_ZERO[k])() for k in _MUTABLE_ZERO}, **lease,
            "LastModifiedAt": now, "CreatedAt": old.get("CreatedAt") or now}


# The ancillary data a reply leaves with, per (interface, source address): a few at most
_leave_by = lru_cache(maxsize=256)(udp.leave_by)


@dataclass
class Pending:
    """A decision whose lease changes commit before its reply leaves; `before` is what the
    book held at those addresses (restored if the commit fails)."""
    decision: engine.Decision
    ifindex: int
    ingress: engine.Ingress
    put: dict | None
    gone: str | None
    before: dict


class DhcpServer:
    def __init__(self, node):
        self.node, self.store, cfg = node, node.store, node.cfg
        self.book = Book()
        self.interfaces = Interfaces(cfg.dhcp_ifs, self._own_addresses)
        self.vip = str(cfg.ha_address.ip) if cfg.ha_enabled and cfg.ha_address else None
        self.static_port = cfg.static_port
        self.ratelog = RateLog(log, "dhcp")
        self.sock = None
        self.waiting: list[Pending] = []  # decided, not yet handed to a commit
        self.committing = 0  # requests in the batches being committed
        self._wake = trio.Event()
        self._commits = trio.Semaphore(COMMITS)
        self._ingress: dict[int, tuple[object, engine.Ingress]] = {}  # ifindex → (iface, it)
        self.answered = 0  # replies sent (for tests and logs)
        self.dropped_busy = 0  # requests dropped unanswered because the server was behind

    # ---- the book follows the store ------------------------------------------------------
    def _on_change(self, changes: list[dict]) -> None:
        for change in changes:
            if change["kind"] in KINDS:
                body = None if change["action"] == "delete" else change["body"]
                if body is not None and change["kind"] == "leases" and \
                        self.book.lease_at(change["key"]) is body:
                    continue  # our own commit, already in the book
                self.book.apply(change["kind"], change["key"], body)

    async def _load(self) -> str:
        lists = [await self.store.list(kind) for kind in KINDS]
        self.book = Book.load(*lists)
        return "%d subnets, %d reservations, %d leases" % tuple(len(x) for x in lists)

    def _own_addresses(self, interfaces) -> None:
        """Every address this host has (and the VIP) is kept out of the pools."""
        own = {str(a.ip) for iface in interfaces for a in iface.addresses}
        self.book.set_own(own | ({self.vip} if self.vip else set()))

    # ---- serving --------------------------------------------------------------------------
    async def serve(self, port: int, task_status) -> None:
        # A plain non-blocking socket read and written without a trio call per datagram
        # (trio's socket methods add a schedule point to each): at thousands of packets a
        # second those were a tenth of the server's time.
        sock = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        with sock:
            sock.setblocking(False)
            # No SO_REUSEADDR: with it Linux lets a second DHCP server (another drp, dnsmasq)
            # bind 67 as well and both would answer; without it that bind fails, and is said.
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_BROADCAST, 1)
            udp.enable(sock, stamps=True)
            sock.bind(("0.0.0.0", port))
            self.sock = sock
            pending: list[dict] = []  # changes committed while the book loads
            self.store.listeners.append(pending.extend)
            try:
                loaded = await self._load()
                self.store.listeners.remove(pending.extend)
                self.store.listeners.append(self._on_change)
                self._on_change(pending)
                await self.interfaces.refresh()
                log.info("DHCP on 0.0.0.0 port %d (%s; %s)", port,
                         ", ".join(self.interfaces.only) if self.interfaces.only
                         else "all interfaces", loaded)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.interfaces.keep_fresh)
                    nursery.start_soon(self._commit_loop, nursery)
                    task_status.started(port)
                    await self._receive_loop(sock)
            finally:
                for listener in (pending.extend, self._on_change):
                    if listener in self.store.listeners:
                        self.store.listeners.remove(listener)

    async def _receive_loop(self, sock) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(BURST):
                try:
                    data, ancdata, _flags, peer = sock.recvmsg(4096, 256)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:  # e.g. an ICMP error queued on the socket: not fatal
                    self.ratelog.warn("the network", f"receive failed: {e.strerror or e}")
                    break
                self._take(data, ancdata, peer)

    def _too_busy(self, ancdata, peer) -> bool:
        """Drop (and count) a request that waited too long or finds the commit queue full."""
        received = udp.received_at(ancdata)
        if received is not None and time.time() - received > MAX_AGE:
            why = f"waited over {MAX_AGE:g}s in the socket"
        elif len(self.waiting) + self.committing >= IN_FLIGHT:
            why = f"{IN_FLIGHT} requests already waiting for their lease commit"
        else:
            return False
        self.dropped_busy += 1
        self.ratelog.warn("the network", f"busy: dropped a request from {peer[0]} ({why}; "
                          f"{self.dropped_busy} so far; clients retry)")
        return True

    def _take(self, data: bytes, ancdata, peer) -> None:
        """Decide one datagram: answered now when nothing is to be written, else queued for
        the committer with its lease already in the book."""
        where = udp.arrival(ancdata)
        if where is None or self._too_busy(ancdata, peer):
            return
        ifindex, _local = where
        iface = self.interfaces.get(ifindex)
        if iface is None:  # not one of --dhcp-ifs (or gone)
            return
        try:
            request = packets.parse(data)
        except packets.Malformed as e:
            self.ratelog.warn(f"{peer[0]} on {iface.name}", f"dropped a bad packet: {e}")
            return
        ingress = self._ingress_of(iface)
        try:
            decision = engine.decide(request, ingress, self.book, time.time())
        except engine.Dropped as e:
            log.debug("dhcp from %s on %s: dropped: %s", request.chaddr, iface.name, e)
            return
        if decision.lease_put is None and decision.lease_delete is None:
            if decision.reply is not None:
                self._reply(decision, ifindex, ingress)
            return
        self._queue(decision, ifindex, ingress)

    def _queue(self, decision: engine.Decision, ifindex: int, ingress: engine.Ingress) -> None:
        """Hand a decision with lease changes to the committer, its lease in the book now."""
        put, gone = decision.lease_put, decision.lease_delete
        changed = ([put["Addr"]] if put else []) + ([gone] if gone else [])
        before = {addr: self.book.lease_at(addr) for addr in changed}
        if put:
            put = stored_lease(put, before[put["Addr"]] or {})
        # In the book at once, so a request decided while this commits sees the address
        # taken (the store's listener then finds this very object there and skips it).
        if gone:
            self.book.apply("leases", gone, None)
        if put:
            self.book.apply("leases", put["Addr"], put)
        self.waiting.append(Pending(decision, ifindex, ingress, put, gone, before))
        self._wake.set()

    def _ingress_of(self, iface) -> engine.Ingress:
        cached = self._ingress.get(iface.index)
        if cached is None or cached[0] is not iface:  # refreshed: its addresses may differ
            cached = (iface, engine.Ingress(
                ifname=iface.name, server_ip=self._server_ip(iface),
                local_addresses=iface.addresses, static_port=self.static_port))
            self._ingress[iface.index] = cached
        return cached[1]

    def _server_ip(self, iface) -> str:
        """Who we answer as on iface: the VIP when this active holds it there, else the
        interface's address (its first, or --static-ip when that is one of them)."""
        mine = [str(a.ip) for a in iface.addresses]
        if self.vip and self.vip in mine:
            return self.vip
        static_ip = self.node.cfg.static_ip
        if static_ip and static_ip in mine:
            return static_ip
        return mine[0] if mine else "0.0.0.0"

    # ---- committing, then answering --------------------------------------------------------
    async def _commit_loop(self, nursery) -> None:
        """Everything decided while earlier batches committed goes in the next batch: one
        store write (one transaction, one replication round trip) for all of them."""
        while True:
            if not self.waiting:
                self._wake = trio.Event()
                await self._wake.wait()
            await self._commits.acquire()
            batch, self.waiting = self.waiting, []
            self.committing += len(batch)
            nursery.start_soon(self._commit_and_answer, batch)

    async def _commit_and_answer(self, batch: list[Pending]) -> None:
        try:
            committed = await self._commit(batch)
        finally:
            self.committing -= len(batch)
            self._commits.release()
        if committed:
            for p in batch:
                if p.decision.reply is not None:  # RELEASE and DECLINE get no answer
                    self._reply(p.decision, p.ifindex, p.ingress)

    async def _commit(self, batch: list[Pending]) -> bool:
        """Write the batch's lease changes; on failure restore the book, send nothing."""
        def write(tx):
            for p in batch:
                if p.gone and (old := tx.get("leases", p.gone)) is not None:
                    tx.record("leases", p.gone, "delete", old)  # the client moved address
                if p.put:
                    addr = p.put["Addr"]
                    action = "update" if tx.exists("leases", addr) else "create"
                    tx.record("leases", addr, action, p.put)
        try:
            await self.store.write(write)
        except StoreError as e:
            self.ratelog.warn("the store", f"{len(batch)} leases not committed, no answer "
                              f"sent: {e}")
            await self._restore(batch)
            return False
        return True

    async def _restore(self, batch: list[Pending]) -> None:
        """The book back to what the store holds at the batch's addresses (what each held
        before it, when the store cannot be read either: a batch committing meanwhile may
        have been decided over this one's leases, so the store is the truth)."""
        for p in reversed(batch):  # reversed: as it was before the first of them
            for addr, lease in p.before.items():
                self.book.apply("leases", addr, lease)
        for addr in {addr for p in batch for addr in p.before}:
            try:
                stored = await self.store.get("leases", addr)
            except Exception as e:  # noqa: BLE001 - the store is failing: keep `before`
                log.debug("dhcp: could not read lease %s back: %s", addr, e)
                continue
            self.book.apply("leases", addr, stored)

    def _reply(self, decision, ifindex: int, ingress: engine.Ingress) -> None:
        if decision.dest == "broadcast":
            dest = ("255.255.255.255", decision.port)
        else:
            dest = (decision.dest, decision.port)
        try:
            self.sock.sendmsg([decision.reply], _leave_by(ifindex, ingress.server_ip), 0, dest)
        except OSError as e:  # a full send buffer included: the client retries
            self.ratelog.warn(dest[0], f"could not send the reply: {e.strerror or e}")
            return
        self.answered += 1
        log.debug("dhcp on %s: %s", ingress.ifname, decision.log)


async def serve_dhcp(node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve DHCP for `node` until cancelled; task_status.started(port) once bound and the
    book is loaded. An OSError binding the port propagates (drp.plane reports it)."""
    await DhcpServer(node).serve(node.cfg.dhcp_port, task_status)

