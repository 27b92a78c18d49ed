"""The HA drop-in an operator puts on each node: contrib/systemd/20-ha.conf with its values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .hostutil import CONTRIB

if TYPE_CHECKING:
    from .node import SystemdNode

DROPIN_PATH = "/etc/systemd/system/dr-provision.service.d/20-ha.conf"


@dataclass(frozen=True)
class HASettings:
    """Values for /etc/systemd/system/dr-provision.service.d/20-ha.conf."""
    interface: str
    address: str          # the VIP, CIDR
    ha_id: str
    token: str
    passive: bool = False


def render_ha_dropin(settings: HASettings, template: str | None = None) -> str:
    """contrib/systemd/20-ha.conf with the node's values (passive: RS_HA_PASSIVE uncommented)."""
    text = template if template is not None else (CONTRIB / "20-ha.conf").read_text()
    values = {"RS_HA_ENABLED": "true", "RS_HA_INTERFACE": settings.interface,
              "RS_HA_ADDRESS": settings.address, "RS_HA_ID": settings.ha_id,
              "RS_HA_TOKEN": settings.token}
    for var, value in values.items():
        if any(ch in value for ch in "\n\"\\ %"):
            raise ValueError(f"{var}={value!r}: would need quoting in a unit file")
        text, n = re.subn(rf"^Environment={var}=.*$", f"Environment={var}={value}", text, flags=re.M)
        if n == 0:
            text += f"Environment={var}={value}\n"
    if settings.passive:
        text, n = re.subn(r"^#\s*Environment=RS_HA_PASSIVE=.*$", "Environment=RS_HA_PASSIVE=true",
                          text, flags=re.M)
        if n == 0:
            text += "Environment=RS_HA_PASSIVE=true\n"
    return text


def write_ha_dropin(node: SystemdNode, settings: HASettings, *, reload: bool = True) -> str:
    text = render_ha_dropin(settings)
    node.write_file(DROPIN_PATH, text)
    if reload:
        node.systemctl("daemon-reload", check=True)
    return text
