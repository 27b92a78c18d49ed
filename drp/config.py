"""Startup flags and their RS_* environment variables, validated into one frozen Config.

Every option is a --flag and an RS_ variable (--ha-id <-> RS_HA_ID); the flag wins. Bad input
raises ConfigError with one line naming the flag and what a good value looks like; the server
turns it into exit status 2 before anything is written to the base root.
"""
from __future__ import annotations

import argparse
import ipaddress
import math
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
    if not math.isfinite(value):  # inf, nan, 1e400: no real duration (and nan < 0 is False)
        raise ValueError(f"{s[:40]} is not a finite duration")
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


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not urls:
        raise ValueError("no URL given")
    for url in urls:
        u = urlparse(url)
        if u.scheme not in ("https", "http") or not u.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        try:
            u.port
        except ValueError:
            raise ValueError(f"{url!r} has a bad port") from None
    return urls


def _lease_ttl(text: str) -> int:
    """Whole seconds: etcd leases are granted in seconds, and etcd's shortest (at its
    default 100 ms heartbeat, 1 s election) is 2 s."""
    value = parse_duration(text)
    if value != int(value) or not 2 <= value <= 60:
        raise ValueError("must be a whole number of seconds from 2s to 60s")
    return int(value)


def _prefix(text: str) -> str:
    if not text.startswith("/") or not text.endswith("/") or len(text) < 3:
        raise ValueError("must start and end with / (like /drp/cluster1/)")
    return text


def _ifnames(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise ValueError("no interface named")
    for name in names:
        if not interface_exists(name):
            raise ValueError(f"no network interface named {name!r} (see `ip link`)")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
               "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes from '1048576', '512KiB', '4MiB', '1GiB' (K/M/G are powers of 1024)."""
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", str(text).strip().lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError("expected bytes or a size like 512KiB, 4MiB, 1GiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def _limit_size(text: str) -> int:
    value = parse_size(text)
    if not 1 << 10 <= value <= 1 << 40:
        raise ValueError("must be from 1KiB to 1TiB")
    return value


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if not 0 < value < float("inf"):
        raise ValueError("must be more than 0 and finite")
    return value


def _cert_life(text: str) -> float:
    value = parse_duration(text)
    if not 10 <= value <= 90 * 86400:  # renewed at half life; never past its 90-day root
        raise ValueError("must be from 10s to 90d")
    return value


def _threads(text: str) -> int:
    """A thread count, or "auto": half the CPUs (at least 1), leaving the rest for serving."""
    if str(text).strip().lower() == "auto":
        return max(1, (os.cpu_count() or 2) // 2)
    return _positive_int(text)


# name, parser, default, what a good value looks like, help
OPTIONS = [
    ("base-root", Path, "/var/lib/dr-provision", "a directory path", "where all data is kept"),
    ("api-port", _port, "8092", "a port number 0-65535", "HTTPS API port"),
    ("static-port", _port, "8091", "a port number 0-65535", "plain HTTP static file port"),
    ("metrics-port", _port, "8080", "a port number 0-65535 (0 = off)", "Prometheus metrics port"),
    ("api-address", _ip, "0.0.0.0", "an IP address to listen on like 127.0.0.1 (0.0.0.0 = all)", "address the API listens on"),
    ("static-address", _ip, "0.0.0.0", "an IP address to listen on like 127.0.0.1 (0.0.0.0 = all)", "address the static file server listens on"),
    ("metrics-address", _ip, "0.0.0.0", "an IP address to listen on like 127.0.0.1 (0.0.0.0 = all)", "address the metrics port listens on"),
    # the provisioning plane (drp/dhcp, drp/tftp): served by the active or a standalone node
    ("disable-dhcp", parse_bool, "false", "true or false", "do not serve DHCP"),
    ("dhcp-port", _port, "67", "a port number 1-65535", "UDP port the DHCP server listens on"),
    ("dhcp-ifs", _ifnames, None, "comma-separated interfaces like eth0,eth1", "interfaces DHCP answers on (default: all)"),
    ("disable-tftp", parse_bool, "false", "true or false", "do not serve TFTP"),
    ("tftp-port", _port, "69", "a port number 0-65535 (0 = any free port)", "UDP port the TFTP server listens on"),
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
    ("ha-cert-life", _cert_life, "24h", "a duration like 24h, from 10s to 90d", "life of the node certificates the cluster CA issues (renewed at half life)"),
    ("ha-log-retention", _positive_int, "100000", "a number of entries, at least 1", "change-log entries kept for resuming passives"),
    # automatic failover through etcd (drp/ha/autopilot.py); no endpoints = manual HA
    ("ha-etcd-endpoints", _urls, None, "comma-separated URLs like http://10.0.0.1:2379,http://10.0.0.2:2379", "etcd members for automatic failover (none: switch by hand)"),
    ("ha-etcd-ca", Path, None, "a PEM CA certificate file", "CA that signs the etcd members' certificates"),
    ("ha-etcd-cert", Path, None, "a PEM certificate file", "client certificate for etcd"),
    ("ha-etcd-key", Path, None, "a PEM key file", "client key for etcd"),
    ("ha-etcd-prefix", _prefix, None, "a key prefix like /drp/cluster1/", "where this cluster's keys live in etcd (default /drp/<ha-id>/)"),
    ("ha-lease-ttl", _lease_ttl, "2s", "a whole number of seconds from 2s to 60s", "leader lease: a crashed active is replaced about this long after it stops renewing"),
    # input bounds (drp/api/limits.py): each refusal names its flag
    ("max-object-size", _limit_size, "4MiB", "a size like 4MiB (1KiB to 1TiB)", "largest JSON body (objects, users, passwords, patches) and largest patched object"),
    ("max-content-size", _limit_size, "32MiB", "a size like 32MiB (1KiB to 1TiB)", "largest content bundle body (a bundle holds many objects)"),
    ("max-yaml-alias-nodes", _positive_int, "100000", "a number of nodes, at least 1", "nodes YAML aliases may add to a content bundle once expanded"),
    ("max-patch-ops", _positive_int, "1000", "a number of operations, at least 1", "operations one JSON Patch may hold"),
    ("max-log-append", _limit_size, "4MiB", "a size like 4MiB (1KiB to 1TiB)", "largest job-log append (one PUT /jobs/<uuid>/log)"),
    ("max-log-appends-in-flight", _positive_int, "8", "a number of appends, at least 1", "job-log appends received at once; more wait, then get 429"),
    ("body-timeout", parse_duration, "30s", "a duration like 30s (0 = never)", "a request body that sends nothing for this long is refused (408)"),
    ("send-timeout", parse_duration, "30s", "a duration like 30s (0 = never)", "an API connection whose peer takes none of a reply's bytes for this long is closed (e.g. a /ws subscriber that stopped reading)"),
    # password guessing (drp/api/throttle.py) and tokens
    ("max-token-ttl", _positive_duration, "3y", "a duration like 3y or 90d", "longest ttl a token may be made with"),
    ("auth-hash-threads", _threads, "auto", "a number of threads, at least 1, or auto (half the CPUs)", "password hashes (scrypt, 16 MiB each) run at once"),
    ("auth-hash-queue", _positive_int, "16", "a number of logins, at least 1", "password checks waiting for a hash thread before 429"),
    ("auth-user-failures", _positive_int, "5", "a number of logins, at least 1", "failed logins per user name per minute before backoff"),
    ("auth-source-failures", _positive_int, "10", "a number of logins, at least 1", "failed logins per source address per minute before backoff"),
    ("auth-max-backoff", _positive_duration, "30s", "a duration like 30s", "longest wait (Retry-After) imposed after failed logins"),
]

_LEVELS = {"debug", "info", "warn", "warning", "error"}


@dataclass(frozen=True)
class Config:
    base_root: Path
    api_port: int
    static_port: int
    metrics_port: int
    api_address: str
    static_address: str
    metrics_address: str
    disable_dhcp: bool
    dhcp_port: int
    dhcp_ifs: tuple[str, ...] | None
    disable_tftp: bool
    tftp_port: int
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
    ha_cert_life: float
    ha_log_retention: int
    ha_etcd_endpoints: tuple[str, ...] | None
    ha_etcd_ca: Path | None
    ha_etcd_cert: Path | None
    ha_etcd_key: Path | None
    ha_etcd_prefix: str | None
    ha_lease_ttl: int
    max_object_size: int
    max_content_size: int
    max_yaml_alias_nodes: int
    max_patch_ops: int
    max_log_append: int
    max_log_appends_in_flight: int
    body_timeout: float
    send_timeout: float
    max_token_ttl: float
    auth_hash_threads: int
    auth_hash_queue: int
    auth_user_failures: int
    auth_source_failures: int
    auth_max_backoff: float

    @property
    def join_url(self) -> str | None:
        """Where a passive dials the active: --ha-join or https://<VIP>:<api-port>/."""
        if self.ha_join:
            return self.ha_join
        if self.ha_address is not None:
            return f"https://{self.ha_address.ip}:{self.api_port}/"
        return None

    @property
    def etcd_prefix(self) -> str:
        return self.ha_etcd_prefix or f"/drp/{self.ha_id}/"


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
    ports = [(f, p, a) for f, p, a in (("--api-port", cfg.api_port, cfg.api_address),
                                       ("--static-port", cfg.static_port, cfg.static_address),
                                       ("--metrics-port", cfg.metrics_port, cfg.metrics_address))
             if p]
    for i, (f1, p1, a1) in enumerate(ports):
        for f2, p2, a2 in ports[i + 1:]:
            # one port on two different addresses is fine; a wildcard address takes them all
            if p1 == p2 and (a1 == a2 or _wildcard(a1) or _wildcard(a2)):
                raise ConfigError(f"{f2}: {p2} is already used by {f1}; want a different port")
    if not cfg.disable_dhcp and cfg.dhcp_port == 0:
        raise ConfigError("--dhcp-port: 0 is not valid; want a port number 1-65535 (clients "
                          "send to 67), or --disable-dhcp true")
    if not (cfg.disable_dhcp or cfg.disable_tftp) and cfg.tftp_port == cfg.dhcp_port:
        raise ConfigError(f"--tftp-port: {cfg.tftp_port} is already used by --dhcp-port; want "
                          "a different port")
    if cfg.ha_interface and not interface_exists(cfg.ha_interface):
        raise ConfigError(f"--ha-interface: no network interface named {cfg.ha_interface!r}; "
                          "want an existing interface like eth0 (see `ip link`)")
    script = cfg.ha_interface_script
    if script is not None and not (script.is_file() and os.access(script, os.X_OK)):
        raise ConfigError(f"--ha-interface-script: {str(script)!r} is not an executable file")
    if (cfg.ha_etcd_cert is None) != (cfg.ha_etcd_key is None):
        raise ConfigError("--ha-etcd-cert and --ha-etcd-key go together: give both or neither")
    for flag, path in (("--ha-etcd-ca", cfg.ha_etcd_ca), ("--ha-etcd-cert", cfg.ha_etcd_cert),
                       ("--ha-etcd-key", cfg.ha_etcd_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag}: {str(path)!r} is not a readable file")
    if not cfg.ha_enabled:
        if cfg.ha_etcd_endpoints:
            raise ConfigError("--ha-etcd-endpoints needs --ha-enabled true (automatic failover "
                              "is for HA clusters)")
        return
    for flag, value in (("--ha-id", cfg.ha_id), ("--ha-address", cfg.ha_address),
                        ("--ha-token", cfg.ha_token), ("--ha-interface", cfg.ha_interface)):
        if not value:
            env = "RS_" + flag[2:].upper().replace("-", "_")
            good = next(o[3] for o in OPTIONS if o[0] == flag[2:])
            raise ConfigError(f"{flag} (or {env}) is required with --ha-enabled; want {good}")


def _wildcard(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def interface_exists(name: str) -> bool:
    return bool(name) and "/" not in name and os.path.exists(f"/sys/class/net/{name}")
