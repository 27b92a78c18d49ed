"""What one running dr-provision node is: its config, store, identity and HA view.

The API reads this to answer /api/v3/info and to know which role the node is in; the HA
supervisor (when enabled) fills in the ha_* fields.
"""
from __future__ import annotations

import logging
import os
import platform
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from drp import __version__, auth
from drp.claims import BUILTIN_ROLES, SUPERUSER_ROLE
from drp.config import Config
from drp.store.store import Store

log = logging.getLogger("drp.node")

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
          "ppc64le": "ppc64le", "s390x": "s390x"}


def goarch() -> str:
    machine = platform.machine()
    return GOARCH.get(machine, machine)


def goos() -> str:
    return platform.system().lower()


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


@dataclass
class Node:
    cfg: Config
    store: Store
    drp_id: str
    started: float = field(default_factory=time.time)
    # HA view, kept current by the supervisor and the role subtrees.
    ha_role: str = "standalone"  # "active" | "passive" | "standalone"
    ha_status: str = "Up"
    ha_active_id: str = ""
    ha_reason: str = ""  # why the passive is not syncing (a refusal), for operators
    passive_states: Callable[[], list[dict]] = lambda: []
    switch_role: Callable[[str], Any] | None = None  # async fn("active"|"passive")
    status_line: Callable[[str], None] = lambda text: None
    websockets: set = field(default_factory=set)  # cancel scopes of open websocket handlers
    follower: Any = None  # the passive's replication follower (drp.ha.follower) while passive
    hub: Any = None  # the active's replication hub (drp.ha.sender.Hub) while active
    cert_path: Path | None = None
    key_path: Path | None = None

    @property
    def is_active(self) -> bool:
        return self.ha_role != "passive"


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
    if not tx.query("SELECT 1 FROM epochs LIMIT 1"):
        tx.record("ha", drp_id, "promote", {"epoch": 1, "drp_id": drp_id}, epoch=1)
        tx.epoch = 1
        created = True
    if tx.get("secrets", "token") is None:
        tx.record("secrets", "token", "create", {"Name": "token", "Secret": auth.new_secret()})
        created = True
    if tx.get("roles", SUPERUSER_ROLE) is None:  # also for a store from before roles
        tx.record("roles", SUPERUSER_ROLE, "create", {
            **BUILTIN_ROLES[SUPERUSER_ROLE], "Params": {}, "Validated": True, "Available": True,
            "Errors": [], "ReadOnly": False})
        created = True
    if not tx.query("SELECT 1 FROM objects WHERE kind='users' LIMIT 1"):
        tx.record("users", auth.DEFAULT_USER, "create", {
            "Name": auth.DEFAULT_USER, "Roles": ["superuser"], "Secret": auth.new_secret(),
            "PasswordHash": auth.hash_password(auth.DEFAULT_PASSWORD), "Params": {}, "Meta": {},
            "Validated": True, "Available": True, "Errors": [], "ReadOnly": False})
        log.warning("created the default user %s with the default password %s: change it with "
                    "`drpcli users password %s NEWPASSWORD`", auth.DEFAULT_USER,
                    auth.DEFAULT_PASSWORD, auth.DEFAULT_USER)
        created = True
    return created


def info(node: Node, stats: dict) -> dict:
    cfg = node.cfg
    return {
        "arch": goarch(), "os": goos(), "version": f"v{__version__}",
        "id": node.drp_id, "local_id": node.drp_id, "ha_id": cfg.ha_id or "",
        "api_port": cfg.api_port, "file_port": cfg.static_port,
        "address": cfg.static_ip or (str(cfg.ha_address.ip) if cfg.ha_address else ""),
        "ha_enabled": cfg.ha_enabled, "ha_is_active": node.is_active,
        "ha_status": node.ha_status,
        "ha_virtual_address": str(cfg.ha_address) if cfg.ha_address else "",
        "ha_active_id": node.ha_active_id or (node.drp_id if node.is_active else ""),
        "ha_passive_state": node.passive_states(),
        "ha_reason": node.ha_reason,
        "stats": stats, "uptime": int(time.time() - node.started),
        "features": ["api-v3", "sane-exit-codes", "ha", "file-sha256", "jsonpatch"],
        "pid": os.getpid(),
    }
