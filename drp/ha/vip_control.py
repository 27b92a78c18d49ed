"""The VIP as the roles and the split-brain guard use it: one interface, two implementations.

LinkVip acts on a real interface (drp/ha/vip.py: netlink, an interface script, gratuitous ARP,
ARP probes). The in-process tests give the roles an in-memory one (tests/hafakes.py) with the
same four calls, so role switches are tested without namespaces.
"""
from __future__ import annotations

from typing import Protocol

from drp.ha import vip
from drp.ha.vip import VipError  # noqa: F401  (what add/remove raise)


class VipControl(Protocol):
    cidr: str  # "198.18.0.100/24"
    ip: str
    interface: str

    async def add(self) -> None:
        """Put the VIP on the interface (idempotent); raises VipError."""

    async def remove(self) -> None:
        """Take it off (idempotent); raises VipError."""

    async def held(self) -> bool | None:
        """Is it on our interface now (a leftover of a crash, say)? None: cannot tell."""

    async def announce(self) -> None:
        """Tell the segment the VIP moved (gratuitous ARP); runs as a task, never raises."""

    async def holder(self) -> str | None:
        """The MAC of another machine answering for the VIP, if any (the guard's look)."""


class LinkVip:
    def __init__(self, interface: str, cidr: str, script: str | None = None,
                 probe_timeout: float = 0.05):
        self.interface, self.cidr, self.script = interface, cidr, script
        self.ip = cidr.split("/")[0]
        self.probe_timeout = probe_timeout  # ARP answers on a LAN take well under a ms

    @property
    def announces(self) -> bool:
        return self.interface != "lo"  # nobody on loopback to tell

    def mac(self) -> str:
        return vip.interface_mac(self.interface)

    async def add(self) -> None:
        await vip.add_vip(self.interface, self.cidr, script=self.script)

    async def remove(self) -> None:
        await vip.remove_vip(self.interface, self.cidr, script=self.script)

    async def held(self) -> bool | None:
        if self.script is not None:  # only the script knows
            return None
        return await vip.has_vip(self.interface, self.cidr)

    async def announce(self) -> None:
        if self.announces:
            await vip.garp_schedule(self.interface, self.ip)

    async def holder(self) -> str | None:
        if not self.announces:
            return None
        return await vip.arp_probe(self.interface, self.ip, timeout=self.probe_timeout)
