"""What to answer a DHCP request: RFC 2131 with dr-provision's rules (subnets, reservations,
pickers, boot options). Pure: the request, the interface it came in on, the Book and `now`.

`decide` returns a Decision or raises Dropped (its argument a one-line reason) when nothing is
to be sent or written: the server logs drops rate-limited. An exception, not a return value,
so a caller cannot mistake a drop for a Decision. A Decision's lease_put (and lease_delete:
an ACK can carry both) must be committed before its reply is sent, then applied to the Book.
The engine changes the Book only through hold/unhold (offers are not stored).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, replace

from drp.dhcp.book import OFFER_HOLD, Book, addr_int, addr_text
from drp.dhcp.context import Ctx, Ingress
from drp.dhcp.optvalues import describe
from drp.dhcp.replyoptions import agent_option, reply_options
from drp.dhcp.packets import (ACK, BROADCAST, DECLINE, DISCOVER, INFORM, NAK, NAMES, OFFER, RELEASE,
                              REQUEST, Request, build_reply)
# Lease times to the microsecond, as dr-provision's: whole seconds would end a lease up to a
# second early (and hand its address to another client that much too soon).
from drp.modelvalues import time_text

ZERO = "0.0.0.0"
STRATEGY = "MAC"
DEFAULT_ACTIVE, DEFAULT_RESERVED = 60, 7200  # dr-provision's subnet defaults
MAX_LEASE = 2**31 - 1
DEFAULT_PICKERS = ("hint", "nextFree", "mostExpired")



@dataclass(frozen=True)
class Decision:
    reply: bytes | None  # None: nothing to send (RELEASE, DECLINE)
    dest: str | None  # "broadcast" or an IP
    port: int  # 68 to a client, 67 to a relay
    lease_put: dict | None = None
    lease_delete: str | None = None
    log: str = ""


class Dropped(Exception):
    """Nothing to send or write; str(e) is why."""

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else ""


def decide(req: Request, ingress: Ingress, book: Book, now: float) -> Decision:
    ctx = Ctx(req, ingress, book, now)
    kind = req.msg_type
    if kind == RELEASE:
        return _release(ctx)
    if kind == DECLINE:
        return _decline(ctx)
    if kind not in (DISCOVER, REQUEST, INFORM):
        raise Dropped(f"{NAMES.get(kind, kind)} from {req.chaddr}: not a client message")
    problem = _select(ctx)
    if problem:
        raise Dropped(f"{NAMES[kind]} from {req.chaddr}: {problem}")
    if kind == DISCOVER:
        return _discover(ctx)
    if kind == REQUEST:
        return _request(ctx)
    return _inform(ctx)


# -- where the request belongs ----------------------------------------------------------------
def _select(ctx: Ctx) -> str | None:
    """Sets ctx.sub and ctx.via: the relay's subnet, else one on the interface (the one holding
    the client's address when it names one); a reason when there is none."""
    req, book = ctx.req, ctx.book
    if req.giaddr != ZERO:
        candidates = [req.giaddr]
    else:
        candidates = [str(a.ip) for a in ctx.ingress.local_addresses if a.version == 4]
    found = [(ip, book.subnet_for(ip)) for ip in candidates]
    found = [(ip, sub) for ip, sub in found if sub is not None]
    client = req.ciaddr if req.ciaddr != ZERO else req.requested_ip
    for ip, sub in found:
        if client is not None and sub.contains(client):
            ctx.via, ctx.sub = ip, sub
            return None
    if found:
        ctx.via, ctx.sub = found[0]
        return None
    for ip in candidates:
        sub = book.subnet_for(ip, enabled_only=False)
        if sub is not None:
            return f"subnet {sub.name} is disabled"
    if req.giaddr != ZERO:
        return f"no subnet for relay {req.giaddr}"
    return f"no subnet for {ctx.ingress.ifname} ({', '.join(candidates) or 'no addresses'})"


def _dest(req: Request, nak: bool = False) -> tuple[str, int]:
    if req.giaddr != ZERO:
        return req.giaddr, 67
    if req.ciaddr != ZERO and not nak:  # RFC 2131 4.1: a NAK is broadcast when not relayed
        return req.ciaddr, 68
    return "broadcast", 68


def _reservation(ctx: Ctx) -> dict | None:
    res = ctx.book.reservation(STRATEGY, ctx.token)
    if res is None:
        return None
    if not ctx.sub.contains(res.get("Addr")):
        ctx.notes.append(f"reservation {res.get('Addr')} is outside subnet {ctx.sub.name}")
        return None
    return res


def _seconds(value, default: int) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return min(value, MAX_LEASE) if ok else default


def _lease_time(ctx: Ctx, res: dict | None) -> int:
    obj = ctx.sub.obj
    if res is not None:  # the reservation's Duration, else the subnet's ReservedLeaseTime
        return _seconds(res.get("Duration"), 0) or \
            _seconds(obj.get("ReservedLeaseTime"), DEFAULT_RESERVED)
    return _seconds(obj.get("ActiveLeaseTime"), DEFAULT_ACTIVE)


def _reply(ctx: Ctx, kind: int, yiaddr: str, siaddr: str, opts: list, boot: str = "") -> bytes:
    reply = build_reply(ctx.req, kind, yiaddr, siaddr, opts, file=boot)
    if reply.dropped:
        ctx.notes.append(f"options {','.join(map(str, reply.dropped))} cut to fit option 57")
    return reply


def _log(ctx: Ctx, text: str) -> str:
    return "; ".join([text, *ctx.notes])  # the notes: what was skipped, and why


def _nak(ctx: Ctx, addr: str | None, why: str) -> Decision:
    opts = [(54, socket.inet_aton(ctx.ingress.server_ip)), (56, why.encode()[:255])]
    dest, port = _dest(ctx.req, nak=True)
    # RFC 2131 4.3.2: a NAK through a relay has the broadcast bit set (the client has no address)
    req = replace(ctx.req, flags=ctx.req.flags | BROADCAST) if port == 67 else ctx.req
    reply = build_reply(req, NAK, ZERO, ZERO, opts + agent_option(req))
    return Decision(reply, dest, port, log=_log(ctx, f"NAK {addr or '-'} to {ctx.token} ({why})"))


# -- messages --------------------------------------------------------------------------------
def _discover(ctx: Ctx) -> Decision:
    book, sub, now, token = ctx.book, ctx.sub, ctx.now, ctx.token
    res = _reservation(ctx)
    addr, how = None, ""
    if res is not None:
        addr, how = addr_text(addr_int(res["Addr"])), "reservation"
    else:
        lease = book.lease_for(STRATEGY, token, sub.name)
        held = book.held_for(token, now)
        if lease is not None and sub.in_range(lease["Addr"]) \
                and book.is_free(lease["Addr"], token, now):
            addr, how = addr_text(addr_int(lease["Addr"])), "lease"
        elif held is not None and sub.in_range(held) and book.is_free(held, token, now):
            addr, how = held, "offered"  # a repeated DISCOVER: the same offer
        elif sub.obj.get("OnlyReservations") is True:
            raise Dropped(f"DISCOVER from {token}: subnet {sub.name} serves reservations only")
        elif sub.problem:
            raise Dropped(f"DISCOVER from {token}: {sub.problem}")
        else:
            addr, how = _pick(ctx)
    if addr is None:
        raise Dropped(f"DISCOVER from {token}: no free address in subnet {sub.name}")
    book.hold(addr, token, now + OFFER_HOLD)
    opts, siaddr, boot = reply_options(ctx, res, _lease_time(ctx, res))
    reply = _reply(ctx, OFFER, addr, siaddr, opts, boot)
    dest, port = _dest(ctx.req)
    return Decision(reply, dest, port, log=_log(ctx, f"OFFER {addr} to {token} ({how})"))


def _pick(ctx: Ctx) -> tuple[str | None, str]:
    """The subnet's Pickers in order (dr-provision's names). Unlike dr-provision's hint, an
    unusable option 50 falls through to the next picker: a DISCOVER still gets an offer."""
    book, sub, now, token = ctx.book, ctx.sub, ctx.now, ctx.token
    pickers = sub.obj.get("Pickers")
    if not isinstance(pickers, list) or not pickers:
        pickers = DEFAULT_PICKERS
    want = ctx.req.requested_ip
    choose = {
        "hint": lambda: want if want and sub.in_range(want) and book.is_free(want, token, now)
        else None,
        "nextFree": lambda: book.next_free(sub, now),
        "mostExpired": lambda: book.most_expired(sub, token, now)}
    for picker in pickers:
        if picker == "none":  # dr-provision: stop here, offer nothing
            break
        addr = choose.get(picker, lambda: None)()  # unknown names: skipped
        if addr:
            return addr, picker
    return None, ""


def _mine(ctx: Ctx, addr: str) -> bool:
    """addr is this client's: its reservation (which wins over any lease, as in DISCOVER), or
    its lease or offer and no one else's now."""
    book, token = ctx.book, ctx.token
    res = book.reservation_at(addr)
    if res is not None:
        return res.get("Token") == token
    lease = book.lease_at(addr)
    ours = (lease is not None and lease.get("Token") == token) or book.held(addr, ctx.now) == token
    return ours and book.is_free(addr, token, ctx.now)


def _request(ctx: Ctx) -> Decision:
    req, book, sub, token = ctx.req, ctx.book, ctx.sub, ctx.token
    sid, want = req.server_id, req.requested_ip
    if sid is not None:  # SELECTING: answering an OFFER
        if sid != ctx.ingress.server_ip:
            held = book.held_for(token, ctx.now)
            if held is not None:
                book.unhold(held)
            raise Dropped(f"REQUEST from {token}: it chose server {sid}")
        if want is None:
            return _nak(ctx, None, "no requested address")
        if not sub.contains(want) or not _mine(ctx, want):
            return _nak(ctx, want, "not offered to this client")
        return _ack(ctx, want, "selecting")
    state = "renewing" if req.ciaddr != ZERO else "init-reboot"
    want = req.ciaddr if req.ciaddr != ZERO else want
    if want is None:
        raise Dropped(f"REQUEST from {token}: no server id, ciaddr or requested address")
    if not sub.contains(want):
        return _nak(ctx, want, f"not in subnet {sub.name}")
    res = _reservation(ctx)
    if res is not None and addr_int(res.get("Addr")) != addr_int(want):
        return _nak(ctx, want, f"reserved {res.get('Addr')} for this client")
    if _mine(ctx, want):
        return _ack(ctx, want, state)
    if sub.obj.get("OnlyReservations") is not True and sub.in_range(want) \
            and book.is_free(want, token, ctx.now):
        return _ack(ctx, want, f"{state}, free")  # e.g. its lease was lost: it may keep it
    return _nak(ctx, want, "not this client's address")


def _provided(req: Request) -> list[dict]:
    return [{"Code": c, "Value": describe(c, v)} for c, v in req.options.items()]


def _ack(ctx: Ctx, addr: str, how: str) -> Decision:
    book, token, now = ctx.book, ctx.token, ctx.now
    res = book.reservation_at(addr)
    res = res if res is not None and res.get("Token") == token else None
    how = "reservation" if res is not None else how
    lease_time = _lease_time(ctx, res)
    opts, siaddr, boot = reply_options(ctx, res, lease_time)
    old = book.lease_at(addr)
    old = old if old is not None and old.get("Token") == token else {}
    lease = {**old, "Addr": addr, "Token": token, "Strategy": STRATEGY, "State": "ACK",
             "ExpireTime": time_text(now + lease_time), "Duration": lease_time, "Via": ctx.via,
             "NextServer": siaddr,
             "Options": [{"Code": c, "Value": describe(c, v)} for c, v in opts],
             "ProvidedOptions": _provided(ctx.req), "SkipBoot": old.get("SkipBoot", False),
             "MachineUuid": old.get("MachineUuid", "")}
    # Written even when only ExpireTime moved (a renew): the expiry is what the passive needs,
    # or after a failover it would hand the address to another client while this one uses it.
    put = None if lease == old else lease
    other = book.lease_for(STRATEGY, token, ctx.sub.name)
    moved = other is not None and addr_int(other["Addr"]) != addr_int(addr)
    delete = other["Addr"] if moved else None  # one lease per client and subnet
    # The lease itself keeps the address now (the server puts it in the book as soon as this
    # returns): a hold would keep it from others for OFFER_HOLD after the lease ran out.
    book.unhold(addr)
    reply = _reply(ctx, ACK, addr, siaddr, opts, boot)
    dest, port = _dest(ctx.req)
    return Decision(reply, dest, port, lease_put=put, lease_delete=delete,
                    log=_log(ctx, f"ACK {addr} to {token} ({how})"))


def _inform(ctx: Ctx) -> Decision:
    req = ctx.req
    if req.ciaddr == ZERO:
        raise Dropped(f"INFORM from {req.chaddr} without ciaddr")
    opts, siaddr, boot = reply_options(ctx, _reservation(ctx), None)  # RFC 2131: no lease times
    reply = _reply(ctx, ACK, ZERO, siaddr, opts, boot)
    dest, port = _dest(req)
    return Decision(reply, dest, port,
                    log=_log(ctx, f"ACK (INFORM) to {req.chaddr} at {req.ciaddr}"))


def _other_server(ctx: Ctx) -> bool:
    return ctx.req.server_id not in (None, ctx.ingress.server_ip)


def _release(ctx: Ctx) -> Decision:
    req, book = ctx.req, ctx.book
    if _other_server(ctx):
        raise Dropped(f"RELEASE from {req.chaddr} for server {req.server_id}")
    lease = book.lease_at(req.ciaddr)
    if lease is None or lease.get("Token") != req.chaddr:
        raise Dropped(f"RELEASE of {req.ciaddr} by {req.chaddr}: not its lease")
    if book.held(req.ciaddr, ctx.now) == req.chaddr:
        book.unhold(req.ciaddr)
    # FREE and expired now, but kept: the token keeps its affinity to the address.
    put = {**lease, "State": "FREE", "ExpireTime": time_text(ctx.now)}
    return Decision(None, None, 0, lease_put=put, log=f"RELEASE {req.ciaddr} by {req.chaddr}")


def _decline(ctx: Ctx) -> Decision:
    req, book, token = ctx.req, ctx.book, ctx.req.chaddr
    addr = req.requested_ip
    if addr is None:
        raise Dropped(f"DECLINE from {token} without a requested address")
    if _other_server(ctx):
        raise Dropped(f"DECLINE from {token} for server {req.server_id}")
    lease, res = book.lease_at(addr), book.reservation_at(addr)
    if not ((lease is not None and lease.get("Token") == token) or book.held(addr, ctx.now) == token
            or (res is not None and res.get("Token") == token)):
        raise Dropped(f"DECLINE of {addr} by {token}: not offered to it")  # no poisoning
    sub = book.subnet_for(addr, enabled_only=False)
    t = _seconds(sub.obj.get("ActiveLeaseTime") if sub else None, DEFAULT_ACTIVE)
    book.unhold(addr)
    # No token: nobody's lease, so nobody is offered it until it expires (then mostExpired).
    put = {"Addr": addr, "Token": "", "Strategy": STRATEGY, "State": "DECLINE",
           "ExpireTime": time_text(ctx.now + t), "Duration": t, "Via": (lease or {}).get("Via", ""),
           "NextServer": "", "Options": [], "ProvidedOptions": _provided(req),
           "SkipBoot": False, "MachineUuid": ""}
    return Decision(None, None, 0, lease_put=put, log=f"DECLINE {addr} by {token}")
