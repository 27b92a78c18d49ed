"""The options a DHCP reply carries (drp.dhcp.engine decides the reply): the subnet's and the
reservation's Options rendered as templates over the request's options, the lease times, the
server identifier, and the boot file and server when the client boots (dr-provision's
defaults when none is configured). `ctx` is the engine's request context (drp.dhcp.context.Ctx)."""
from __future__ import annotations

import socket
from functools import lru_cache

from drp.dhcp import template
from drp.dhcp.book import addr_int, addr_text
from drp.dhcp.context import Ctx
from drp.dhcp.optvalues import BadOption, describe, encode
from drp.dhcp.packets import Request

ZERO = "0.0.0.0"
# Set by the server from the exchange itself, never from a subnet's or reservation's Options.
SERVER_CODES = {0, 50, 51, 52, 53, 54, 55, 57, 58, 59, 61, 255}
EFI_ARCHES = {6, 7, 9, 10, 11, 16}  # RFC 4578 / IANA: EFI IA32, x64, BC, ARM32, ARM64, x64 HTTP
# A subnet's few rendered values, encoded once, not per reply (a BadOption is not cached: raised
# again each time). Rendered values are always text, so always hashable.
_encoded = lru_cache(maxsize=4096)(encode)


class Facts(dict):
    """The request's options as templates see them (code → described value), each described
    when a template first asks for it: most replies render no template at all."""

    def __init__(self, options: dict[int, bytes]):
        super().__init__()
        self.options = options

    def get(self, code, default=None):
        if code not in self:
            raw = self.options.get(code)
            if raw is None:
                return default
            self[code] = describe(code, raw)
        return self[code]


@lru_cache(maxsize=256)  # ipaddress makes these texts anew on every str()
def _net_texts(net) -> tuple[str, str]:
    return str(net.netmask), str(net.broadcast_address)


def _configured(ctx: Ctx, res: dict | None) -> dict[int, str]:
    """Code → Value template: the CIDR's mask and broadcast, the subnet's Options, then the
    reservation's, per code. Odd stored entries are skipped with a note."""
    mask, broadcast = _net_texts(ctx.sub.net)
    out = {1: mask, 28: broadcast}
    for owner in (ctx.sub.obj, res or {}):
        options = owner.get("Options")
        for opt in options if isinstance(options, list) else ():
            code = opt.get("Code") if isinstance(opt, dict) else None
            value = opt.get("Value") if isinstance(opt, dict) else None
            if not isinstance(code, int) or isinstance(code, bool) or not isinstance(value, str) \
                    or not 1 <= code <= 254 or code in SERVER_CODES:
                ctx.notes.append(f"skipped option {opt!r}")
                continue
            out[code] = value
    return out


def _next_server(ctx: Ctx, res: dict | None) -> str:
    for owner in (res or {}, ctx.sub.obj):
        value = owner.get("NextServer")
        if isinstance(value, str) and addr_int(value) not in (None, 0):
            return addr_text(addr_int(value))
    return ctx.ingress.server_ip


def _default_boot(ctx: Ctx) -> str | None:
    req = ctx.req
    if req.user_class == "iPXE":  # iPXE itself: its script over HTTP from the static port
        return f"http://{ctx.ingress.server_ip}:{ctx.ingress.static_port}/default.ipxe"
    arch = req.client_arch
    if arch == 0:
        return "ipxe.pxe"
    if arch in EFI_ARCHES:
        return "ipxe.efi"
    return None  # no option 93: not a PXE client, no boot file


def reply_options(ctx: Ctx, res: dict | None, lease_time: int | None):
    """(options to send in order, siaddr, boot file or ""): the RFC's MUSTs and the boot
    options when booting, plus what the client asked for in 55 (all configured ones when it
    sent no 55, as ISC does), in the client's order after the lease basics."""
    facts = Facts(ctx.req.options)
    values: dict[int, bytes] = {}
    for code, text in _configured(ctx, res).items():
        try:
            rendered = template.render(text, facts)
        except template.TemplateError as e:
            ctx.notes.append(f"option {code} skipped: {e}")
            continue
        if rendered == "":
            continue  # a template that chose nothing: the option is not sent
        try:
            values[code] = _encoded(code, rendered)
        except BadOption as e:
            ctx.notes.append(f"option {code} skipped: {e}")
    next_server = _next_server(ctx, res)
    if 67 not in values and _default_boot(ctx):
        values[67] = _default_boot(ctx).encode()
    boot = values[67].decode("utf-8", "replace") if 67 in values else ""
    if boot and 66 not in values:
        values[66] = next_server.encode()
    values[54] = socket.inet_aton(ctx.ingress.server_ip)
    if lease_time is not None:
        values[51] = lease_time.to_bytes(4, "big")
        values[58] = (lease_time // 2).to_bytes(4, "big")
        values[59] = (lease_time * 3 // 4).to_bytes(4, "big")
    prl = ctx.req.param_request_list
    order = [54, 51, 58, 59, 1, *prl, 3, 6]
    if boot:
        order += [66, 67]
    if not prl:
        order += sorted(values)
    sent = [(code, values[code]) for code in dict.fromkeys(order) if code in values]
    return sent + agent_option(ctx.req), next_server, boot


def agent_option(req: Request) -> list:
    """RFC 3046 2.2: a relay's option 82 is echoed in every reply, last (relays drop replies
    without it, then strip it before the client sees it)."""
    return [(82, req.options[82])] if 82 in req.options and req.giaddr != ZERO else []
