"""The DHCPv4 server on trio: one UDP socket on 0.0.0.0:--dhcp-port, the sans-IO core
(drp.dhcp.engine) deciding, the store committing each lease before its ACK leaves.

- Where a request came in (IP_PKTINFO) picks the interface: only --dhcp-ifs are answered
  (all when unset), and the interface's addresses pick the subnet (a relay's giaddr when set).
- On an HA active the server answers as the VIP (option 54, the reply's source): a client
  renews with whoever holds the VIP, so a lease survives a failover.
- A lease is written through the store's change log (synchronously replicated on an active)
  before the ACK is sent; a write that fails sends nothing (the client retries) and the book
  goes back to what the store holds.
- Replies to clients without an address are broadcast out of the interface the request came
  in on; renewals go to ciaddr, relayed ones to giaddr:67.
- Bad packets are dropped and logged, at most one line per source (drp.ratelog).
"""
from __future__ import annotations

import logging
import socket as stdsocket
import time

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
# Requests being answered at once (most wait for their lease commit). More are dropped, not
# queued: a client retransmits (after 4 s, RFC 2131 4.1), and under a storm of them (a rack
# powering on) answering what is queued would spend the server on requests already given up.
IN_FLIGHT = 128
MAX_AGE = 2.0  # seconds a request may have waited in the socket before it is not worth answering


class DhcpServer:
    def __init__(self, node):
        self.node, self.store, cfg = node, node.store, node.cfg
        self.book = Book()
        self.interfaces = Interfaces(cfg.dhcp_ifs, self._own_addresses)
        self.vip = str(cfg.ha_address.ip) if cfg.ha_enabled and cfg.ha_address else None
        self.static_port = cfg.static_port
        self.ratelog = RateLog(log, "dhcp")
        self.slots = trio.Semaphore(IN_FLIGHT)
        self.sock = None
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
        sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        with sock:
            # No SO_REUSEADDR: with it Linux lets a second DHCP server (another drp, dnsmasq)
            # bind 67 as well and both would answer; without it that bind fails, and is said.
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_BROADCAST, 1)
            udp.enable(sock, stamps=True)
            await sock.bind(("0.0.0.0", port))
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
                    task_status.started(port)
                    while True:
                        data, ancdata, _flags, peer = await sock.recvmsg(4096, 256)
                        if self._too_busy(ancdata, peer):
                            continue
                        nursery.start_soon(self._handle, data, ancdata, peer)
            finally:
                for listener in (pending.extend, self._on_change):
                    if listener in self.store.listeners:
                        self.store.listeners.remove(listener)

    def _too_busy(self, ancdata, peer) -> bool:
        """Drop (and count) a request that waited too long or finds every slot taken."""
        received = udp.received_at(ancdata)
        if received is not None and time.time() - received > MAX_AGE:
            why = f"waited over {MAX_AGE:g}s in the socket"
        else:
            try:
                self.slots.acquire_nowait()
                return False
            except trio.WouldBlock:
                why = f"{IN_FLIGHT} requests already in hand"
        self.dropped_busy += 1
        self.ratelog.warn("the network", f"busy: dropped a request from {peer[0]} ({why}; "
                          f"{self.dropped_busy} so far; clients retry)")
        return True

    async def _handle(self, data: bytes, ancdata, peer) -> None:
        try:
            await self._answer(data, ancdata, peer)
        finally:
            self.slots.release()

    async def _answer(self, data: bytes, ancdata, peer) -> None:
        source = peer[0]
        where = udp.arrival(ancdata)
        if where is None:
            return
        ifindex, _local = where
        iface = self.interfaces.get(ifindex)
        if iface is None:  # not one of --dhcp-ifs (or gone)
            return
        try:
            request = packets.parse(data)
        except packets.Malformed as e:
            self.ratelog.warn(f"{source} on {iface.name}", f"dropped a bad packet: {e}")
            return
        ingress = engine.Ingress(ifname=iface.name, server_ip=self._server_ip(iface),
                                 local_addresses=iface.addresses, static_port=self.static_port)
        try:
            decision = engine.decide(request, ingress, self.book, time.time())
        except engine.Dropped as e:
            log.debug("dhcp from %s on %s: dropped: %s", request.chaddr, iface.name, e)
            return
        if not await self._commit(decision):
            return
        if decision.reply is not None:  # RELEASE and DECLINE get no answer
            await self._send(decision, ifindex, ingress.server_ip)
            self.answered += 1
        log.debug("dhcp on %s: %s", iface.name, decision.log)

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

    async def _commit(self, decision) -> bool:
        """Write the decision's lease changes; on failure restore the book, send nothing."""
        put, gone = decision.lease_put, decision.lease_delete
        if put is None and gone is None:
            return True
        changed = ([put["Addr"]] if put else []) + ([gone] if gone else [])
        before = {addr: self.book.lease_at(addr) for addr in changed}
        if put:  # the lease as stored: its model complete, the server's times set
            old, now = before[put["Addr"]] or {}, now_text()
            put = complete("leases", {**put, "LastModifiedAt": now,
                                      "CreatedAt": old.get("CreatedAt") or now})
        # In the book at once, so a request decided while this commits sees the address
        # taken (the store's listener then finds this very object there and skips it).
        if gone:
            self.book.apply("leases", gone, None)
        if put:
            self.book.apply("leases", put["Addr"], put)

        def write(tx):
            if gone and (old := tx.get("leases", gone)) is not None:
                tx.record("leases", gone, "delete", old)  # the client moved to another address
            if put:
                action = "update" if tx.get("leases", put["Addr"]) is not None else "create"
                tx.record("leases", put["Addr"], action, put)
        try:
            await self.store.write(write)
        except StoreError as e:
            for addr, lease in before.items():
                self.book.apply("leases", addr, lease)
            self.ratelog.warn(changed[0], f"lease not committed, no answer sent: {e}")
            return False
        return True

    async def _send(self, decision, ifindex: int, server_ip: str) -> None:
        if decision.dest == "broadcast":
            dest = ("255.255.255.255", decision.port)
        else:
            dest = (decision.dest, decision.port)
        try:
            await self.sock.sendmsg([decision.reply], udp.leave_by(ifindex, server_ip), 0, dest)
        except OSError as e:
            self.ratelog.warn(dest[0], f"could not send the reply: {e.strerror or e}")


async def serve_dhcp(node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve DHCP for `node` until cancelled; task_status.started(port) once bound and the
    book is loaded. An OSError binding the port propagates (drp.plane reports it)."""
    await DhcpServer(node).serve(node.cfg.dhcp_port, task_status)

