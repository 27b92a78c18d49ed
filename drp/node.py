"""What one running dr-provision node is: its config, store, identity and HA view.

The API reads this to answer /api/v3/info and to know which role the node is in: the HA
supervisor (when enabled) answers for the role, which owns its own state (drp.ha.roles).
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from drp import __version__, auth, secureparams
from drp.claims import BUILTIN_ROLES, SUPERUSER_ROLE
from drp.modelvalues import complete, now_text
from drp.config import Config
from drp.platform_id import goarch, goos
from drp.store.store import Store

log = logging.getLogger("drp.node")


def lowest_mac() -> str | None:
    """dr-provision's default id: the lowest MAC among the machine's real NICs (virtual ones
    only when there is nothing else, as inside a network namespace)."""
    real, virtual = [], []
    for dev in sorted(Path("/sys/class/net").glob("*")):
        try:
            mac = (dev / "address").read_text().strip()
        except OSError:
            continue
        if dev.name == "lo" or not mac or mac == "00:00:00:00:00:00":
            continue
        is_virtual = "/virtual/" in str(dev.resolve())
        (virtual if is_virtual else real).append(mac)
    pool = real or virtual
    return min(pool) if pool else None


@dataclass(frozen=True)
class RoleStatus:
    """What a role says about itself (drp.ha.roles), read by /api/v3/info, metrics and the
    systemd STATUS line."""
    role: str = "standalone"  # "active" | "passive" | "standalone"
    ha_status: str = "Up"  # Up, Connecting, Syncing, In-Sync, Refused, Handover
    active_id: str = ""
    reason: str = ""  # why the node is not where it was asked to be (a refusal), for operators
    passives: tuple = ()  # the active's view of its passives (ha_passive_state)


STANDALONE = RoleStatus()


class HaControl(Protocol):
    """The HA supervisor as the rest of the node sees it (drp.ha.supervisor.Supervisor)."""
    def status(self) -> RoleStatus: ...
    def replication_hub(self) -> Any: ...  # the active's hub (drp.ha.sender.Hub), else None
    def leadership(self) -> Any: ...  # the active's leader lease (drp.ha.leadership), else None
    async def request_switch(self, role: str, done=None, hold=None) -> None: ...


@dataclass
class Node:
    cfg: Config
    store: Store
    drp_id: str
    started: float = field(default_factory=time.time)
    ha: HaControl | None = None  # the supervisor, when --ha-enabled
    status_line: Callable[[str], None] = lambda text: None
    websockets: set = field(default_factory=set)  # cancel scopes of open websocket handlers
    cert_path: Path | None = None
    key_path: Path | None = None
    plane: Any = None  # drp.plane.Plane: what DHCP and TFTP are doing (None: neither runs)
    trust: Any = None  # drp.ha.nodetrust.NodeTrust, when --ha-enabled

    def status(self) -> RoleStatus:
        return self.ha.status() if self.ha is not None else STANDALONE

    @property
    def is_active(self) -> bool:
        return self.status().role != "passive"


def resolve_drp_id(store: Store, cfg: Config) -> str:
    """--drp-id wins; otherwise the id chosen on first start, kept in the store so it stays
    stable across restarts even if the NICs change."""
    if cfg.drp_id:
        store.local_set_sync("drp_id", cfg.drp_id)
        return cfg.drp_id
    kept = store.local_get_sync("drp_id")
    if kept:
        return kept
    chosen = lowest_mac() or str(uuid.uuid4())
    store.local_set_sync("drp_id", chosen)
    return chosen


def bootstrap(tx, drp_id: str) -> bool:
    """First start of a node that owns its data: epoch 1, the token secret, the default user.
    Returns True when it created anything."""
    created = False
    if tx.max_epoch() == 0:  # no epoch history yet
        tx.record("ha", drp_id, "promote", {"epoch": 1, "drp_id": drp_id}, epoch=1)
        tx.epoch = 1
        created = True
    if tx.get("secrets", "token") is None:
        tx.record("secrets", "token", "create", {"Name": "token", "Secret": auth.new_secret()})
        created = True
    if tx.get(secureparams.SECRET_KIND, secureparams.SECRET_KEY) is None:
        # the secure params' store secret: made here, so a passive serving a pubkey never
        # has to write it
        secureparams.keyring_in(tx)
        created = True
    if tx.get("roles", SUPERUSER_ROLE) is None:  # also for a store from before roles
        tx.record("roles", SUPERUSER_ROLE, "create", complete("roles", {  # the full model
            **BUILTIN_ROLES[SUPERUSER_ROLE], "CreatedAt": now_text(),
            "LastModifiedAt": now_text()}))
        created = True
    if not tx.has_any("users"):
        tx.record("users", auth.DEFAULT_USER, "create", complete("users", {
            "Name": auth.DEFAULT_USER, "Roles": ["superuser"], "Secret": auth.new_secret(),
            "PasswordHash": auth.hash_password(auth.DEFAULT_PASSWORD), "CreatedAt": now_text(),
            "LastModifiedAt": now_text()}))
        log.warning("created the default user %s with the default password %s: change it with "
                    "`drpcli users password %s NEWPASSWORD`", auth.DEFAULT_USER,
                    auth.DEFAULT_PASSWORD, auth.DEFAULT_USER)
        created = True
    return created


# dr-provision's default ports for the services drp does not run (its --binl-port,
# --dns-port and --secure-static-port): Info reports them disabled.
BINL_PORT, DNS_PORT, SECURE_FILE_PORT = 4011, 53, 8090


def info(node: Node, stats: list[dict], node_uuid: str) -> dict:
    """dr-provision's Info (drppy-client's models/info.py): every field it requires, true for
    this node. `stats` is [{name, count}]; node_uuid is this node's stable id (the store's
    `local` table). The ha_* keys are read by the HA code and tests: keep them as they are."""
    cfg, status, plane = node.cfg, node.status(), node.plane
    dhcp = plane.dhcp if plane else None
    tftp = plane.tftp if plane else None
    return {
        "arch": goarch(), "os": goos(), "version": f"v{__version__}",
        "id": node.drp_id, "local_id": node.drp_id, "uuid": node_uuid, "ha_id": cfg.ha_id or "",
        "api_port": cfg.api_port, "file_port": cfg.static_port,
        "address": cfg.static_ip or (str(cfg.ha_address.ip) if cfg.ha_address else ""),
        "prov_enabled": True,  # the static file server always runs
        "secure_prov_enabled": False, "secure_file_port": SECURE_FILE_PORT,  # no HTTPS files
        # serving now (a passive serves neither; a port that could not be bound: see errors)
        "dhcp_enabled": bool(dhcp and dhcp.serving),
        "dhcp_port": dhcp.port if dhcp else cfg.dhcp_port,
        "tftp_enabled": bool(tftp and tftp.serving),
        "tftp_port": tftp.port if tftp else cfg.tftp_port,
        "binl_enabled": False, "binl_port": BINL_PORT,
        "dns_enabled": False, "dns_port": DNS_PORT,
        "manager": False,  # drp manages no other endpoints
        "errors": plane.errors() if plane else [],
        "ha_enabled": cfg.ha_enabled, "ha_is_active": status.role != "passive",
        "ha_status": status.ha_status,
        # the system-assigned HA id of this endpoint: its uuid, when it is in a cluster
        "ha_consensus_id": node_uuid if cfg.ha_enabled else "",
        "ha_virtual_address": str(cfg.ha_address) if cfg.ha_address else "",
        "ha_active_id": status.active_id or (node.drp_id if status.role != "passive" else ""),
        "ha_passive_state": list(status.passives),
        "ha_reason": status.reason,
        "stats": stats, "uptime": int(time.time() - node.started),
        "features": ["api-v3", "sane-exit-codes", "ha", "file-sha256", "jsonpatch"],
        "pid": os.getpid(),
    }
