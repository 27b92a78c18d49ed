"""The interfaces DHCP answers on and their IPv4 addresses (pyroute2, in a worker thread),
refreshed every REFRESH seconds and at once when a request arrives on an interface not yet
known: the VIP an active adds, an interface that came up after the start."""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

import trio

log = logging.getLogger("drp.dhcp")
REFRESH = 5.0
MIN_GAP = 0.5


@dataclass(frozen=True)
class Interface:
    index: int
    name: str
    addresses: tuple[ipaddress.IPv4Interface, ...]


def _read() -> dict[int, Interface]:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addrs: dict[int, list] = {}
        for msg in ipr.get_addr(family=socket.AF_INET):
            address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if address:
                addrs.setdefault(msg["index"], []).append(
                    ipaddress.IPv4Interface(f"{address}/{msg['prefixlen']}"))
    return {i: Interface(i, name, tuple(addrs.get(i, ()))) for i, name in names.items()}


class Interfaces:
    def __init__(self, only: tuple[str, ...] | None, on_refresh=lambda ifaces: None):
        self.only = tuple(only or ())
        self.on_refresh = on_refresh  # gets every Interface after each read
        self._by_index: dict[int, Interface] = {}
        self._stale = trio.Event()

    def get(self, index: int) -> Interface | None:
        iface = self._by_index.get(index)
        if iface is None:  # keep_fresh reads them again now; this request is dropped
            self._stale.set()
        if iface is None or (self.only and iface.name not in self.only) or iface.name == "lo":
            return None
        return iface

    async def refresh(self) -> None:
        try:
            self._by_index = await trio.to_thread.run_sync(_read)
        except Exception as e:  # noqa: BLE001 — netlink trouble: keep what we knew
            log.warning("could not read the network interfaces: %s", e)
            return
        self.on_refresh(list(self._by_index.values()))

    async def keep_fresh(self) -> None:
        """Refresh every REFRESH seconds, or soon after a request from an unknown interface
        (at most every MIN_GAP: a flood of them costs one netlink read per gap)."""
        while True:
            with trio.move_on_after(REFRESH):
                await self._stale.wait()
            self._stale = trio.Event()
            await self.refresh()
            await trio.sleep(MIN_GAP)
