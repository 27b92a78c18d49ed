"""Serving a Quart app on hypercorn under trio: the API and the metrics port share this."""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import hypercorn.config
import hypercorn.trio
import trio


class _NoBanner(logging.Filter):
    """Drops hypercorn's "Running on … (CTRL + C to quit)": the node's own "API listening on"
    line says where it listens, and under systemd there is no terminal to press it in."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Running on ")


HTTP_LOG = logging.getLogger("drp.http")
HTTP_LOG.addFilter(_NoBanner())


def bind_spec(host: str, port: int) -> str:
    """host:port as hypercorn binds it ([::1]:8092 for IPv6)."""
    return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"


class _ClusterConfig(hypercorn.config.Config):
    """An API port that is also the cluster's: hypercorn's own context for API clients, the
    node certificate and client-certificate checks for other nodes (drp.ha.nodetrust)."""
    node_trust = None

    def create_ssl_context(self):
        public = super().create_ssl_context()
        if public is None:
            return None
        return self.node_trust.server_context(public, list(self.alpn_protocols))


def hypercorn_config(port: int, cert: Path | None = None, key: Path | None = None,
                     host: str = "0.0.0.0", node_trust=None) -> hypercorn.config.Config:
    """node_trust: the node's drp.ha.nodetrust.NodeTrust when it is in an HA cluster."""
    if node_trust is not None:
        hc = _ClusterConfig()
        hc.node_trust = node_trust
    else:
        hc = hypercorn.config.Config()
    hc.bind = [bind_spec(host, port)]
    if cert and key:
        hc.certfile, hc.keyfile = str(cert), str(key)
    hc.accesslog = None
    hc.errorlog = HTTP_LOG
    hc.graceful_timeout = 1.0
    hc.keep_alive_timeout = 75
    return hc


async def serve_app(app, hc, stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED):
    await hypercorn.trio.serve(app, hc, shutdown_trigger=stop.wait, task_status=task_status)
