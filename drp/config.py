"""Startup flags and their RS_* environment variables, validated into one frozen Config.

Every option is a --flag and an RS_ variable (--ha-id <-> RS_HA_ID); the flag wins. Bad input
raises ConfigError with one line naming the flag and what a good value looks like; the server
turns it into exit status 2 before anything is written to the base root.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from drp import __version__


class ConfigError(Exception):
    pass


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off", ""}
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected true/false/1/0/yes/no")


def parse_duration(text: str) -> float:
    """Seconds from '90', '1.5', '30s', '10m', '3h', '7d', '3y' or compounds like '1h30m'."""
    s = str(text).strip().lower()
    try:
        value = float(s)
    except ValueError:
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", s)
        if not parts or "".join(n + u for n, u in parts) != s:
            raise ValueError("expected seconds or a duration like 30s, 10m, 3h, 7d, 3y") from None
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value < 0:
        raise ValueError("a duration cannot be negative")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("out of range")
    return value


def _cidr(text: str) -> ipaddress.IPv4Interface:
    if "/" not in text:
        raise ValueError("no prefix length")
    return ipaddress.IPv4Interface(text)


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _url(text: str) -> str:
    u = urlparse(text)
    if u.scheme not in ("https", "http") or not u.hostname:
        raise ValueError("not an https:// URL")
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


# name, parser, default, what a good value looks like, help
OPTIONS = [
    ("base-root", Path, "/var/lib/dr-provision", "a directory path", "where all data is kept"),
    ("api-port", _port, "8092", "a port number 0-65535", "HTTPS API port"),
    ("static-port", _port, "8091", "a port number 0-65535", "plain HTTP static file port"),
    ("metrics-port", _port, "8080", "a port number 0-65535 (0 = off)", "Prometheus metrics port"),
    ("static-ip", _ip, None, "an IP address like 192.168.124.10", "this node's own address"),
    ("drp-id", str, None, "a non-empty id", "this node's id (default: lowest NIC MAC)"),
    ("tls-cert", Path, None, "a PEM certificate file", "TLS certificate"),
    ("tls-key", Path, None, "a PEM key file", "TLS private key"),
    ("log-level", str, "info", "one of debug, info, warn, error", "log level"),
    ("ha-enabled", parse_bool, "false", "true or false", "run in high-availability mode"),
    ("ha-id", str, None, "the cluster id, the same on all nodes", "HA cluster id"),
    ("ha-address", _cidr, None, "an IPv4 CIDR like 192.168.124.200/24", "virtual IP in CIDR"),
    ("ha-interface", str, None, "an existing network interface like eth0", "interface for the VIP"),
    ("ha-interface-script", Path, None, "an executable file", "script run as SCRIPT add|remove IFACE ADDR/PREFIX"),
    ("ha-passive", parse_bool, "false", "true or false", "start as a passive node"),
    ("ha-token", str, None, "a superuser token (drpcli users token rocketskates ttl 3y)", "token HA nodes use with each other"),
    ("ha-join", _url, None, "an URL like https://192.168.124.200:8092/", "where a passive finds the active"),
    ("ha-sync-timeout", parse_duration, "5s", "a duration like 5s", "how long an In-Sync passive may hold a write"),
    ("ha-handover-timeout", parse_duration, "10s", "a duration like 10s", "how long a graceful switch to passive waits for passives"),
    ("ha-log-retention", _positive_int, "100000", "a number of entries, at least 1", "change-log entries kept for resuming passives"),
]

_LEVELS = {"debug", "info", "warn", "warning", "error"}


@dataclass(frozen=True)
class Config:
    base_root: Path
    api_port: int
    static_port: int
    metrics_port: int
    static_ip: str | None
    drp_id: str | None
    tls_cert: Path | None
    tls_key: Path | None
    log_level: str
    ha_enabled: bool
    ha_id: str | None
    ha_address: ipaddress.IPv4Interface | None
    ha_interface: str | None
    ha_interface_script: Path | None
    ha_passive: bool
    ha_token: str | None
    ha_join: str | None
    ha_sync_timeout: float
    ha_handover_timeout: float
    ha_log_retention: int

    @property
    def join_url(self) -> str | None:
        """Where a passive dials the active: --ha-join or https://<VIP>:<api-port>/."""
        if self.ha_join:
            return self.ha_join
        if self.ha_address is not None:
            return f"https://{self.ha_address.ip}:{self.api_port}/"
        return None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dr-provision", description="Digital Rebar Provision server (drp)")
    p.add_argument("--version", action="version", version=f"dr-provision {__version__}")
    for name, _, default, good, help_ in OPTIONS:
        env = "RS_" + name.upper().replace("-", "_")
        p.add_argument(f"--{name}", dest=name.replace("-", "_"), default=None, metavar="VALUE",
                       help=f"{help_} [{env}] (default {default})")
    return p


def load(argv: list[str] | None = None, environ: dict | None = None) -> Config:
    environ = os.environ if environ is None else environ
    args = vars(_parser().parse_args(argv))
    values = {}
    for name, parse, default, good, _ in OPTIONS:
        dest = name.replace("-", "_")
        env = "RS_" + dest.upper()
        raw, source = args.get(dest), f"--{name}"
        if raw is None and env in environ:
            raw, source = environ[env], f"--{name} (from {env})"
        if raw is None:
            raw = default
        if raw is None:
            values[dest] = None
            continue
        try:
            values[dest] = parse(raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {raw!r} is not valid ({e}); want {good}") from None
    cfg = Config(**values)
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    if cfg.log_level.lower() not in _LEVELS:
        raise ConfigError(f"--log-level: {cfg.log_level!r} is not valid; want debug, info, warn or error")
    if cfg.drp_id is not None and not cfg.drp_id.strip():
        raise ConfigError("--drp-id: must not be empty")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    for flag, path in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag}: {str(path)!r} does not exist; want a PEM file")
    if cfg.base_root.exists() and not cfg.base_root.is_dir():
        raise ConfigError(f"--base-root: {str(cfg.base_root)!r} is not a directory")
    ports = [(f, p) for f, p in (("--api-port", cfg.api_port), ("--static-port", cfg.static_port),
                                 ("--metrics-port", cfg.metrics_port)) if p]
    for i, (f1, p1) in enumerate(ports):
        for f2, p2 in ports[i + 1:]:
            if p1 == p2:
                raise ConfigError(f"{f2}: {p2} is already used by {f1}; want a different port")
    if cfg.ha_interface and not interface_exists(cfg.ha_interface):
        raise ConfigError(f"--ha-interface: no network interface named {cfg.ha_interface!r}; "
                          "want an existing interface like eth0 (see `ip link`)")
    script = cfg.ha_interface_script
    if script is not None and not (script.is_file() and os.access(script, os.X_OK)):
        raise ConfigError(f"--ha-interface-script: {str(script)!r} is not an executable file")
    if not cfg.ha_enabled:
        return
    for flag, value in (("--ha-id", cfg.ha_id), ("--ha-address", cfg.ha_address),
                        ("--ha-token", cfg.ha_token), ("--ha-interface", cfg.ha_interface)):
        if not value:
            env = "RS_" + flag[2:].upper().replace("-", "_")
            good = next(o[3] for o in OPTIONS if o[0] == flag[2:])
            raise ConfigError(f"{flag} (or {env}) is required with --ha-enabled; want {good}")


def interface_exists(name: str) -> bool:
    return bool(name) and "/" not in name and os.path.exists(f"/sys/class/net/{name}")
