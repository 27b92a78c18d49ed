"""What the DHCP engine knows while it answers one request: where it came in (Ingress, from
the server) and the request's context (Ctx: the subnet and address it was placed in, notes
for the log line), shared by drp.dhcp.engine and drp.dhcp.replyoptions."""
from __future__ import annotations

from dataclasses import dataclass, field

from drp.dhcp.book import Book, Subnet
from drp.dhcp.packets import Request


@dataclass(frozen=True)
class Ingress:
    ifname: str
    server_ip: str  # answered as: option 54 and default siaddr (the VIP in HA)
    local_addresses: tuple = ()  # the interface's IPv4Interface list: Via when giaddr is 0
    static_port: int = 8091


@dataclass
class Ctx:
    req: Request
    ingress: Ingress
    book: Book
    now: float
    sub: Subnet | None = None
    via: str = ""
    notes: list = field(default_factory=list)

    @property
    def token(self) -> str:
        return self.req.chaddr
