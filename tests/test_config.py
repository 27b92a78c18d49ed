"""Startup configuration: flags, RS_* variables, and refusing bad input with status 2."""
from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from drp import config
from drp.config import ConfigError, parse_bool, parse_duration
from tests.drpserver import BIN, clean_environ

HA_OK = ["--ha-enabled", "true", "--ha-id", "c1", "--ha-address", "192.168.124.200/24",
         "--ha-token", "tok", "--ha-interface", "lo"]


def without(args: list[str], flag: str) -> list[str]:
    i = args.index(flag)
    return args[:i] + args[i + 2:]


# ---- the process: exit status 2, one line, nothing written ------------------------------------
# id -> (flags, environment, what the line must contain)
BAD = {
    "ha-address-not-cidr": (["--ha-address", "192.168.124.200"], {},
                            ["--ha-address", "192.168.124.200/24"]),
    "ha-interface-missing-nic": (["--ha-interface", "nosuchnic0"], {},
                                 ["--ha-interface", "nosuchnic0", "eth0"]),
    "port-not-a-number": (["--api-port", "http"], {}, ["--api-port", "0-65535"]),
    "port-out-of-range": (["--static-port", "70000"], {}, ["--static-port", "0-65535"]),
    "bad-boolean": (["--ha-passive", "maybe"], {}, ["--ha-passive", "true or false"]),
    "bad-duration": (["--ha-sync-timeout", "5 parsecs"], {}, ["--ha-sync-timeout", "5s"]),
    "ha-without-id": (without(HA_OK, "--ha-id"), {}, ["--ha-id", "RS_HA_ID", "--ha-enabled"]),
    "ha-without-address": (without(HA_OK, "--ha-address"), {},
                           ["--ha-address", "192.168.124.200/24"]),
    "ha-without-token": (without(HA_OK, "--ha-token"), {},
                         ["--ha-token", "drpcli users token"]),
    "ha-without-interface": (without(HA_OK, "--ha-interface"), {}, ["--ha-interface", "eth0"]),
    "bad-env-value": ([], {"RS_HA_ADDRESS": "10.0.0.1"},
                      ["--ha-address", "RS_HA_ADDRESS", "/24"]),
    "ha-enabled-from-env-without-token": (
        [], {"RS_HA_ENABLED": "yes", "RS_HA_ID": "c1", "RS_HA_ADDRESS": "192.168.124.200/24",
             "RS_HA_INTERFACE": "lo"}, ["--ha-token", "RS_HA_TOKEN"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad start at once (each costs an interpreter start): id -> (proc, stdout, stderr,
    base root)."""
    root = tmp_path_factory.mktemp("bad")
    procs = {}
    for name, (args, env, _) in BAD.items():
        base = root / name / "never-created"
        procs[name] = (subprocess.Popen(
            [str(BIN / "dr-provision"), "--base-root", str(base), *args],
            env={**clean_environ(), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True), base)
    results = {}
    for name, (proc, base) in procs.items():
        out, err = proc.communicate(timeout=60)
        results[name] = (proc.returncode, out, err, base)
    return results


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(bad_runs, case):
    code, out, err, base = bad_runs[case]
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert out == ""
    assert not base.exists(), "the base root was created before the config was checked"
    assert lines[0].startswith("dr-provision: ")
    for needle in BAD[case][2]:
        assert needle in lines[0], (needle, lines[0])


def test_environment_is_used_and_flags_win(drp_factory):
    """RS_STATIC_IP is honoured; where a flag is given too (--drp-id, and the harness's
    --api-port and --log-level), the flag wins, even over values that would refuse to start."""
    server = drp_factory("envtest", "--log-level", "info", "--drp-id", "from-flag",
                         env={"RS_STATIC_IP": "192.0.2.7", "RS_DRP_ID": "from-env",
                              "RS_API_PORT": "not-a-port", "RS_LOG_LEVEL": "chatty",
                              "RS_HA_PASSIVE": "no"})
    with server.client() as c:
        info = c.get("/info").json()
    assert info["address"] == "192.0.2.7"
    assert info["id"] == "from-flag"
    assert (info["api_port"], info["file_port"]) == (server.api_port, server.static_port)
    assert (server.base_root / "drp.db").is_file()  # --base-root from the harness's flag
    assert info["ha_enabled"] is False and info["ha_is_active"] is True


# ---- drp.config.load -------------------------------------------------------------------------
def test_defaults():
    cfg = config.load([], environ={})
    assert cfg.base_root == Path("/var/lib/dr-provision")
    assert (cfg.api_port, cfg.static_port, cfg.metrics_port) == (8092, 8091, 8080)
    assert cfg.ha_enabled is False and cfg.ha_passive is False
    assert cfg.ha_address is None and cfg.drp_id is None
    assert cfg.ha_sync_timeout == 5.0


def test_every_option_has_an_rs_variable():
    env = {"RS_BASE_ROOT": "/srv/drp", "RS_API_PORT": "9092", "RS_STATIC_PORT": "9091",
           "RS_METRICS_PORT": "0", "RS_STATIC_IP": "10.1.2.3", "RS_DRP_ID": "n1",
           "RS_LOG_LEVEL": "debug", "RS_HA_ENABLED": "1", "RS_HA_ID": "cluster",
           "RS_HA_ADDRESS": "192.168.124.200/24", "RS_HA_INTERFACE": "lo",
           "RS_HA_PASSIVE": "yes", "RS_HA_TOKEN": "t0k", "RS_HA_JOIN": "https://10.0.0.1:8092/",
           "RS_HA_SYNC_TIMEOUT": "10m"}
    cfg = config.load([], environ=env)
    assert cfg.base_root == Path("/srv/drp")
    assert (cfg.api_port, cfg.static_port, cfg.metrics_port) == (9092, 9091, 0)
    assert cfg.static_ip == "10.1.2.3" and cfg.drp_id == "n1" and cfg.log_level == "debug"
    assert cfg.ha_enabled is True and cfg.ha_passive is True
    assert cfg.ha_id == "cluster" and cfg.ha_token == "t0k" and cfg.ha_interface == "lo"
    assert cfg.ha_address == ipaddress.IPv4Interface("192.168.124.200/24")
    assert cfg.ha_join == "https://10.0.0.1:8092/"
    assert cfg.ha_sync_timeout == 600


def test_flag_wins_over_environment():
    cfg = config.load(["--api-port", "7000", "--ha-passive", "false", "--drp-id", "flag"],
                      environ={"RS_API_PORT": "7001", "RS_HA_PASSIVE": "true",
                               "RS_DRP_ID": "env"})
    assert (cfg.api_port, cfg.ha_passive, cfg.drp_id) == (7000, False, "flag")


def test_flag_wins_even_over_a_bad_environment_value():
    assert config.load(["--api-port", "7000"], environ={"RS_API_PORT": "junk"}).api_port == 7000


@pytest.mark.parametrize("text, value", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False)])
def test_booleans(text, value):
    assert parse_bool(text) is value
    assert config.load(["--ha-passive", text], environ={}).ha_passive is value


@pytest.mark.parametrize("text", ["maybe", "2", "tru", "enabled"])
def test_bad_booleans(text):
    with pytest.raises(ValueError):
        parse_bool(text)
    with pytest.raises(ConfigError, match="--ha-passive.*true or false"):
        config.load(["--ha-passive", text], environ={})


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("10m", 600), ("3h", 3 * 3600), ("7d", 7 * 86400), ("3y", 3 * 365 * 86400),
    ("90", 90), ("1.5", 1.5), ("1h30m", 5400), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)
    assert config.load(["--ha-sync-timeout", text], environ={}).ha_sync_timeout == \
        pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10 minutes", "3x", "-5s", "-1", "1h-30m", "h1"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)
    with pytest.raises(ConfigError, match="--ha-sync-timeout.*5s"):
        config.load([f"--ha-sync-timeout={text}"], environ={})


@pytest.mark.parametrize("port", ["-1", "65536", "80a", ""])
def test_bad_ports(port):
    with pytest.raises(ConfigError, match="--metrics-port.*0-65535"):
        config.load(["--metrics-port", port], environ={})


def test_same_port_twice_is_refused():
    with pytest.raises(ConfigError, match="--static-port"):
        config.load(["--api-port", "9000", "--static-port", "9000"], environ={})


def test_ha_address_needs_an_ipv4_cidr():
    for bad in ("192.168.124.200", "192.168.124.200/33", "fe80::1/64", "vip/24"):
        with pytest.raises(ConfigError, match="--ha-address.*192.168.124.200/24"):
            config.load(["--ha-address", bad], environ={})
    cfg = config.load(["--ha-address", "192.168.124.200/24"], environ={})
    assert str(cfg.ha_address.ip) == "192.168.124.200" and cfg.ha_address.network.prefixlen == 24


def test_ha_enabled_with_everything_loads():
    cfg = config.load(HA_OK, environ={})
    assert cfg.ha_enabled and cfg.ha_id == "c1" and cfg.ha_interface == "lo"
    assert cfg.join_url == f"https://192.168.124.200:{cfg.api_port}/"


@pytest.mark.parametrize("flag", ["--ha-id", "--ha-address", "--ha-token", "--ha-interface"])
def test_ha_enabled_requires(flag):
    with pytest.raises(ConfigError, match=f"{flag} .*required with --ha-enabled"):
        config.load(without(HA_OK, flag), environ={})


def test_missing_interface_is_refused_even_without_ha():
    with pytest.raises(ConfigError, match="--ha-interface.*nosuchnic0"):
        config.load(["--ha-interface", "nosuchnic0"], environ={})


def test_tls_cert_and_key_go_together(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key"):
        config.load(["--tls-cert", str(cert)], environ={})
    with pytest.raises(ConfigError, match="--tls-key.*does not exist"):
        config.load(["--tls-cert", str(cert), "--tls-key", str(tmp_path / "nokey")], environ={})


def test_bad_log_level_and_unknown_flag():
    with pytest.raises(ConfigError, match="--log-level"):
        config.load(["--log-level", "chatty"], environ={})
    with pytest.raises(ConfigError, match="--bogus"):
        config.load(["--bogus", "1"], environ={})
