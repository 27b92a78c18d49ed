"""The provisioning plane: the UDP services machines being provisioned talk to (DHCP on
--dhcp-port, TFTP on --tftp-port). The active role runs them once it holds the VIP and takes
writes (a lease is committed before its ACK leaves); a standalone node runs them from the
start; a passive serves neither. Each is an async fn(task_status) the owner starts with
`nursery.start`, and it ends with its owner.

A port that cannot be bound (not root, another DHCP server running) does not stop the node:
it is logged, /api/v3/info reports the service disabled with the reason in `errors`, and the
rest serves. What each service is doing is kept here for Info.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

import trio

log = logging.getLogger("drp.plane")


@dataclass
class Service:
    name: str  # "dhcp" | "tftp"
    port: int  # the configured port; the bound one while serving
    serving: bool = False
    error: str = ""  # why it is not serving although enabled


class Plane:
    """This node's DHCP and TFTP: what is enabled, what serves now, and the starters."""

    def __init__(self, node):
        self.node = node
        cfg = node.cfg
        self.dhcp = Service("dhcp", cfg.dhcp_port)
        self.tftp = Service("tftp", cfg.tftp_port)

    def errors(self) -> list[str]:
        return [f"{s.name}: {s.error}" for s in (self.dhcp, self.tftp) if s.error]

    def starters(self) -> list:
        """What the active role (or a standalone node) starts, in order."""
        cfg, out = self.node.cfg, []
        if not cfg.disable_tftp:
            out.append(self._run_tftp)
        if not cfg.disable_dhcp:
            out.append(self._run_dhcp)
        return out

    async def _run_tftp(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from drp.tftp.server import serve_tftp  # only nodes that serve TFTP load it

        async def serve(task_status):
            await serve_tftp(self.node.cfg.base_root / "tftpboot", "0.0.0.0",
                             self.node.cfg.tftp_port, task_status=task_status)
        await self._run(self.tftp, serve, task_status)

    async def _run_dhcp(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from drp.dhcp.server import serve_dhcp

        async def serve(task_status):
            await serve_dhcp(self.node, task_status=task_status)
        await self._run(self.dhcp, serve, task_status)

    async def _run(self, service: Service, serve, task_status) -> None:
        """Run one service; a bind that fails is reported, not raised (the node serves on)."""
        configured = service.port
        try:
            async with trio.open_nursery() as nursery:
                try:
                    bound = await nursery.start(serve)
                except OSError as e:
                    service.error = _bind_reason(service, e)
                    log.error("%s not served: %s", service.name.upper(), service.error)
                    task_status.started()
                    return
                service.port = bound if isinstance(bound, int) else configured
                service.serving, service.error = True, ""
                task_status.started()
        finally:
            service.serving, service.port = False, configured


def _bind_reason(service: Service, error: OSError) -> str:
    flag = f"--{service.name}-port"
    if error.errno == errno.EACCES:
        return (f"could not bind UDP port {service.port}: permission denied (run as root, "
                f"or give {flag} above 1023 or --disable-{service.name} true)")
    if error.errno == errno.EADDRINUSE:
        return (f"UDP port {service.port} is in use by another program (another "
                f"{service.name.upper()} server?): stop it, or set {flag} or "
                f"--disable-{service.name} true")
    return f"could not serve on UDP port {service.port}: {error.strerror or error}"
