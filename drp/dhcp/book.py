"""The in-memory view of subnets, reservations and leases that drp.dhcp.engine decides from.

The server feeds it: `Book.load` at start, `apply` for every committed change (its own lease
writes too, once committed). Offers are only held here (`hold`), never stored: an OFFER
reserves its address for OFFER_HOLD seconds so two clients are never offered the same one.

Every lookup is a dict hit or a bisect: with 60k leases in a /16 a packet must not walk the
range. Stored objects are used as they are; one that cannot be indexed (no valid Addr) is
left out and named in `skipped`, never raised on.
"""
from __future__ import annotations

import heapq
import ipaddress
import socket
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from functools import lru_cache

from drp.modelvalues import parse_time

OFFER_HOLD = 30.0


def addr_int(value) -> int | None:
    """value (a dotted quad, an int or anything else) as an IPv4 address's int, or None."""
    if type(value) is str:
        return _text_int(value)
    if type(value) is int:
        return value if 0 <= value <= 0xFFFFFFFF else None
    try:
        return int(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        return None


@lru_cache(maxsize=1 << 16)  # a /16's worth: ipaddress's strict parse is ~2 us, a hit ~0.1
def _text_int(text: str) -> int | None:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def addr_text(ip: int) -> str:
    """An address's int (0..2**32-1) as a dotted quad."""
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


def epoch(text) -> float:
    """An RFC 3339 ExpireTime as epoch seconds; anything else is long expired."""
    when = parse_time(text)
    return when.timestamp() if when is not None else 0.0


@dataclass(frozen=True)
class Subnet:
    """A subnet object with what the engine needs parsed; `problem` says why it cannot hand
    out addresses (odd stored data: the API should have refused it, the engine must not crash)."""
    name: str
    obj: dict
    net: ipaddress.IPv4Network
    lo: int | None  # the active range, without the network and broadcast addresses
    hi: int | None
    problem: str | None
    first: int  # the CIDR's network and broadcast addresses
    last: int

    @property
    def enabled(self) -> bool:
        return self.obj.get("Enabled") is True

    def in_range(self, addr) -> bool:
        """addr (an int, a string or None) is in the active range."""
        n = addr if isinstance(addr, int) else addr_int(addr)
        return n is not None and self.lo is not None and self.lo <= n <= self.hi

    def contains(self, addr) -> bool:
        """addr (an int, a string or None) is in the CIDR."""
        n = addr if isinstance(addr, int) else addr_int(addr)
        return n is not None and self.first <= n <= self.last


def _subnet(obj: dict) -> Subnet | None:
    try:
        net = ipaddress.IPv4Network(obj.get("Subnet"), strict=False)
    except (ValueError, TypeError):
        return None
    start, end = addr_int(obj.get("ActiveStart")), addr_int(obj.get("ActiveEnd"))
    name = str(obj.get("Name", ""))
    problem, lo, hi = None, None, None
    if start is None or end is None:
        problem = f"subnet {name} has no valid ActiveStart/ActiveEnd"
    elif start > end:
        problem = (f"subnet {name}: ActiveStart {obj['ActiveStart']} is after "
                   f"ActiveEnd {obj['ActiveEnd']}")
    else:
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.prefixlen < 31:  # the network and broadcast addresses are no host's
            first, last = first + 1, last - 1
        lo, hi = max(start, first), min(end, last)
        if lo > hi:
            problem, lo, hi = f"subnet {name}: the active range is outside {net}", None, None
    return Subnet(name, obj, net, lo, hi, problem, int(net.network_address),
                  int(net.broadcast_address))


class Book:
    def __init__(self):
        self.subnets: dict[str, Subnet] = {}
        self._by_prefix: dict[int, dict[int, list[str]]] = {}  # prefixlen → network → names
        self.reservations: dict[int, dict] = {}
        self._res_token: dict[tuple[str, str], int] = {}
        self.leases: dict[int, dict] = {}
        self._expires: dict[int, float] = {}
        self._lease_token: dict[tuple[str, str], set[int]] = {}
        self._lease_subnet: dict[int, str | None] = {}
        self._by_expiry: dict[str | None, list[tuple[float, int]]] = {}  # per subnet, sorted
        self._holds: dict[int, tuple[str, float]] = {}  # addr → (token, until)
        self._hold_token: dict[str, int] = {}
        self._hold_heap: list[tuple[float, int]] = []
        self._used: list[int] = []  # sorted: addresses with a lease, reservation or hold
        self._refs: dict[int, int] = {}
        self._cursor: dict[str, int] = {}
        self.skipped: list[str] = []
        self._own: set[int] = set()  # this server's addresses (the VIP too): never handed out
        self._bulk = False  # loading: the sorted lists are appended to, then sorted once

    def _insert(self, entries: list, item) -> None:
        entries.append(item) if self._bulk else insort(entries, item)

    def _remove(self, entries: list, item) -> None:
        entries.remove(item) if self._bulk else entries.pop(bisect_left(entries, item))

    def _sorted(self, build) -> None:
        """build() with O(1) inserts, then one sort: 60k leases load in a blink, not O(n²)."""
        bulk, self._bulk = self._bulk, True
        try:
            build()
        finally:
            self._bulk = bulk
            self._used.sort()
            for entries in self._by_expiry.values():
                entries.sort()

    @classmethod
    def load(cls, subnets, reservations, leases) -> "Book":
        book = cls()

        def build():
            for obj in subnets:
                book.apply("subnets", obj.get("Name"), obj)
            for obj in reservations:
                book.apply("reservations", obj.get("Addr"), obj)
            for obj in leases:
                book.apply("leases", obj.get("Addr"), obj)
        book._sorted(build)
        return book

    # -- changes ---------------------------------------------------------------------------
    def apply(self, kind: str, key, body: dict | None) -> None:
        """A committed change (body None: deleted). Unknown kinds are ignored."""
        if kind == "subnets":
            self._drop_subnet(key)
            if body is not None:
                self._add_subnet(body)
            self._reindex_leases()  # which subnet a lease belongs to may have changed
        elif kind == "reservations":
            self._drop_reservation(addr_int(key))
            if body is not None:
                self._add_reservation(body)
        elif kind == "leases":
            self._drop_lease(addr_int(key))
            if body is not None:
                self._add_lease(body)

    def _use(self, ip: int, delta: int) -> None:
        n = self._refs.get(ip, 0) + delta
        if n > 0:
            if ip not in self._refs:
                self._insert(self._used, ip)
            self._refs[ip] = n
        elif ip in self._refs:
            del self._refs[ip]
            self._remove(self._used, ip)

    def set_own(self, addrs) -> None:
        """The server's own addresses now (they may lie inside an active range)."""
        own = {ip for ip in map(addr_int, addrs) if ip is not None}
        for ip in self._own - own:
            self._use(ip, -1)
        for ip in own - self._own:
            self._use(ip, +1)
        self._own = own

    def _add_subnet(self, obj: dict) -> None:
        sub = _subnet(obj)
        if sub is None:
            self.skipped.append(f"subnet {obj.get('Name')!r}: Subnet {obj.get('Subnet')!r} "
                                "is no IPv4 CIDR")
            return
        self._drop_subnet(sub.name)
        self.subnets[sub.name] = sub
        names = self._by_prefix.setdefault(sub.net.prefixlen, {}).setdefault(
            int(sub.net.network_address), [])
        names.append(sub.name)

    def _drop_subnet(self, name) -> None:
        sub = self.subnets.pop(name, None)
        if sub is not None:
            table = self._by_prefix[sub.net.prefixlen]
            table[int(sub.net.network_address)].remove(sub.name)
            if not table[int(sub.net.network_address)]:
                del table[int(sub.net.network_address)]
            self._cursor.pop(name, None)

    def _add_reservation(self, obj: dict) -> None:
        ip = addr_int(obj.get("Addr"))
        if ip is None:
            self.skipped.append(f"reservation {obj.get('Addr')!r}: no IPv4 Addr")
            return
        self._drop_reservation(ip)
        self.reservations[ip] = obj
        self._res_token[(obj.get("Strategy") or "MAC", str(obj.get("Token", "")))] = ip
        self._use(ip, 1)

    def _drop_reservation(self, ip) -> None:
        obj = self.reservations.pop(ip, None)
        if obj is not None:
            key = (obj.get("Strategy") or "MAC", str(obj.get("Token", "")))
            if self._res_token.get(key) == ip:
                del self._res_token[key]
            self._use(ip, -1)

    def _add_lease(self, obj: dict) -> None:
        ip = addr_int(obj.get("Addr"))
        if ip is None:
            self.skipped.append(f"lease {obj.get('Addr')!r}: no IPv4 Addr")
            return
        self._drop_lease(ip)
        self.leases[ip] = obj
        self._expires[ip] = epoch(obj.get("ExpireTime"))
        if obj.get("Token"):  # a declined address has no token
            self._lease_token.setdefault(self._token_key(obj), set()).add(ip)
        self._index_expiry(ip)
        self._use(ip, 1)

    @staticmethod
    def _token_key(obj: dict) -> tuple[str, str]:
        return (obj.get("Strategy") or "MAC", str(obj.get("Token")))

    def _index_expiry(self, ip: int) -> None:
        sub = self.subnet_for(addr_text(ip), enabled_only=False)
        name = sub.name if sub else None
        self._lease_subnet[ip] = name
        self._insert(self._by_expiry.setdefault(name, []), (self._expires[ip], ip))

    def _drop_lease(self, ip) -> None:
        obj = self.leases.pop(ip, None)
        if obj is None:
            return
        expires = self._expires.pop(ip)
        tokens = self._lease_token.get(self._token_key(obj))
        if tokens is not None:
            tokens.discard(ip)
            if not tokens:
                del self._lease_token[self._token_key(obj)]
        self._remove(self._by_expiry[self._lease_subnet.pop(ip)], (expires, ip))
        self._use(ip, -1)

    def _reindex_leases(self) -> None:
        self._by_expiry, self._lease_subnet = {}, {}

        def build():
            for ip in self.leases:
                self._index_expiry(ip)
        self._sorted(build)

    # -- lookups ---------------------------------------------------------------------------
    def subnet_for(self, ip, enabled_only: bool = True) -> Subnet | None:
        """The most specific (enabled) subnet whose CIDR holds ip: one dict hit per prefix
        length in use, not a walk over the subnets."""
        n = addr_int(ip)
        if n is None:
            return None
        for plen in sorted(self._by_prefix, reverse=True):
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            for name in self._by_prefix[plen].get(n & mask, ()):
                sub = self.subnets[name]
                if sub.enabled or not enabled_only:
                    return sub
        return None

    def reservation(self, strategy: str, token: str) -> dict | None:
        ip = self._res_token.get((strategy, token))
        return None if ip is None else self.reservations[ip]

    def reservation_at(self, addr) -> dict | None:
        return self.reservations.get(addr_int(addr))

    def lease_at(self, addr) -> dict | None:
        return self.leases.get(addr_int(addr))

    def expiry(self, addr) -> float:
        return self._expires.get(addr_int(addr), 0.0)

    def lease_for(self, strategy: str, token: str, subnet: str | None = None) -> dict | None:
        """The token's lease (in that subnet, when named); of several, the latest to expire."""
        ips = [ip for ip in self._lease_token.get((strategy, token), ())
               if subnet is None or self._lease_subnet.get(ip) == subnet]
        return self.leases[max(ips, key=self._expires.__getitem__)] if ips else None

    def expired(self, before: float) -> list[str]:
        """Addresses whose leases expired before `before` (for the server's reclaimer)."""
        out = []
        for entries in self._by_expiry.values():
            out += [addr_text(ip)
                    for _, ip in entries[:bisect_left(entries, (before, -1))]]
        return out

    # -- offers ----------------------------------------------------------------------------
    def hold(self, addr, token: str, until: float) -> None:
        ip = addr_int(addr)
        self.unhold(ip)
        old = self._hold_token.get(token)
        if old is not None:
            self.unhold(old)  # one offer per client
        self._holds[ip] = (token, until)
        self._hold_token[token] = ip
        heapq.heappush(self._hold_heap, (until, ip))
        self._use(ip, 1)

    def unhold(self, addr) -> None:
        ip = addr if isinstance(addr, int) else addr_int(addr)
        held = self._holds.pop(ip, None)
        if held is not None:
            if self._hold_token.get(held[0]) == ip:
                del self._hold_token[held[0]]
            self._use(ip, -1)

    def expire_holds(self, now: float) -> None:
        while self._hold_heap and self._hold_heap[0][0] <= now:
            until, ip = heapq.heappop(self._hold_heap)
            held = self._holds.get(ip)
            if held is not None and held[1] <= now:  # not re-held since
                self.unhold(ip)

    def held(self, addr, now: float) -> str | None:
        held = self._holds.get(addr_int(addr))
        return held[0] if held is not None and held[1] > now else None

    def held_for(self, token: str, now: float) -> str | None:
        ip = self._hold_token.get(token)
        if ip is None or self._holds[ip][1] <= now:
            return None
        return addr_text(ip)

    # -- picking ---------------------------------------------------------------------------
    def is_free(self, addr, token: str, now: float, strategy: str = "MAC") -> bool:
        """No unexpired lease of another token, no reservation of another, no other's hold."""
        ip = addr_int(addr)
        if ip is None or ip in self._own:
            return False
        lease = self.leases.get(ip)
        mine = (strategy, token)
        if lease is not None and self._expires[ip] > now and self._token_key(lease) != mine:
            return False
        res = self.reservations.get(ip)
        if res is not None and (res.get("Strategy") or "MAC", str(res.get("Token", ""))) != mine:
            return False
        holder = self.held(ip, now)
        return holder is None or holder == token

    def _first_unused(self, lo: int, hi: int) -> int | None:
        """The smallest address in lo..hi not in _used: the run of used addresses starting at
        lo is found by bisection (sorted, distinct: used[j]-used[i] == j-i along a run)."""
        if lo > hi:
            return None
        used, i = self._used, bisect_left(self._used, lo)
        if i == len(used) or used[i] != lo:
            return lo
        a, b = i, bisect_right(used, hi) - 1
        while a < b:
            mid = (a + b + 1) // 2
            if used[mid] - used[i] == mid - i:
                a = mid
            else:
                b = mid - 1
        nxt = used[a] + 1
        return nxt if nxt <= hi else None

    def next_free(self, sub: Subnet, now: float) -> str | None:
        """dr-provision's nextFree: an address of the active range with no lease (expired or
        not), reservation or hold, from a cursor that moves on, so addresses are not reused
        sooner than they must be."""
        if sub.lo is None:
            return None
        self.expire_holds(now)
        cur = min(max(self._cursor.get(sub.name, sub.lo), sub.lo), sub.hi)
        ip = self._first_unused(cur, sub.hi)
        if ip is None:
            ip = self._first_unused(sub.lo, cur - 1)
        if ip is None:
            return None
        self._cursor[sub.name] = ip + 1 if ip < sub.hi else sub.lo
        return addr_text(ip)

    def most_expired(self, sub: Subnet, token: str, now: float) -> str | None:
        """dr-provision's mostExpired: the lease in the active range that expired longest ago
        (FREE and DECLINE ones too, once expired), not reserved or held for another client.
        Walks only expired leases of this subnet, oldest first, stopping at the first fit."""
        if sub.lo is None:
            return None
        for expires, ip in self._by_expiry.get(sub.name, ()):
            if expires > now:
                return None
            if sub.in_range(ip) and self.is_free(ip, token, now):
                return addr_text(ip)
        return None
