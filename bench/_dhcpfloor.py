"""What one DORA exchange costs drp in Python before any I/O, measured in the run.

The decision path alone, in this process: parse the DISCOVER, decide, build the OFFER; parse
the REQUEST, decide, build the ACK, make the stored lease and put it in the book (what
drp.dhcp.server does between recvmsg and the store write). No sockets, no trio, no store, no
replication. Packets are made the way perfdhcp sends them (relayed: giaddr set; a parameter
request list; the REQUEST names the server and the offered address), one client each, built
before the clock starts. Beside a server's CPU per exchange under perfdhcp, this says how much
of it is the decision itself, and what is left for everything else.
"""
from __future__ import annotations

import ipaddress
import time

from scapy.layers.dhcp import BOOTP, DHCP

from drp.dhcp import engine, packets
from drp.dhcp.book import Book
from drp.dhcp.server import stored_lease
from drp.modelvalues import complete

SERVER_IP, RELAY = "198.18.0.2", "198.18.0.50"
INGRESS = engine.Ingress("eth0", SERVER_IP, (ipaddress.IPv4Interface(f"{SERVER_IP}/24"),), 8091)
PRL = [1, 3, 6, 15, 28, 51, 54, 58, 59]


def _client(kind: str, mac: bytes, extra: list) -> bytes:
    opts = [("message-type", kind), ("param_req_list", PRL), *extra, "end"]
    return bytes(BOOTP(op=1, xid=int.from_bytes(mac[2:], "big"), giaddr=RELAY, hops=1,
                       chaddr=mac + b"\0" * 10) / DHCP(options=opts))


def _mac(i: int) -> bytes:
    return bytes([0x02, 0x00]) + i.to_bytes(4, "big")


def decision_floor(subnet: dict, clients: int = 5000) -> dict:
    """CPU µs per exchange of the decision path (and of each half), over `clients` DORAs."""
    book = Book.load([complete("subnets", subnet)], [], [])
    discovers = [_client("discover", _mac(i), []) for i in range(clients)]
    cpu = time.thread_time  # this thread's: the benchmark's other threads idle meanwhile
    t0, now = cpu(), time.time()
    offers = []
    for raw in discovers:
        offers.append(engine.decide(packets.parse(raw), INGRESS, book, now).reply)
    t1 = cpu()
    requests = [_client("request", _mac(i), [("server_id", SERVER_IP),
                                              ("requested_addr", ".".join(map(str, o[16:20])))])
                for i, o in enumerate(offers)]
    t2 = cpu()
    acked = 0
    for raw in requests:
        decision = engine.decide(packets.parse(raw), INGRESS, book, now)
        put = decision.lease_put
        if put is not None and decision.reply is not None:
            book.apply("leases", put["Addr"], stored_lease(put, {}))
            acked += 1
    t3 = cpu()
    if acked != clients:  # a floor of a path that did not run is no floor
        raise RuntimeError(f"decision floor: {acked} of {clients} REQUESTs got an ACK")
    per = 1e6 / clients
    return {"clients": clients, "discover_to_offer_us": round((t1 - t0) * per, 1),
            "request_to_ack_us": round((t3 - t2) * per, 1),
            "cpu_ms_per_exchange": round((t1 - t0 + t3 - t2) * 1000 / clients, 4)}
