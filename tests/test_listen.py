"""Where the ports listen (--api-address, --static-address, --metrics-address), what the metrics
port counts, and one symlink rule for the API and the static file server."""
from __future__ import annotations

import hashlib
import os
import re
import socket

import httpx
import pytest

from drp import config
from drp.config import ConfigError
from tests.drpserver import free_port


def _refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) != 0


def test_each_port_listens_only_where_it_is_told(drp_factory):
    metrics_port = free_port()
    server = drp_factory("drp", "--api-address", "127.0.0.2", "--static-address", "127.0.0.3",
                         "--metrics-address", "127.0.0.4", "--metrics-port", str(metrics_port),
                         host="127.0.0.2", start=False)
    server.metrics_port = metrics_port
    server.start()
    assert httpx.get(f"https://127.0.0.2:{server.api_port}/api/v3/info", verify=False,
                     auth=("rocketskates", "r0cketsk8ts")).status_code == 200
    assert httpx.get(f"http://127.0.0.3:{server.static_port}/nothing").status_code == 404
    assert httpx.get(f"http://127.0.0.4:{metrics_port}/metrics").status_code == 200
    for port in (server.api_port, server.static_port, metrics_port):
        assert _refused("127.0.0.1", port), f"port {port} answers on 127.0.0.1 too"
    assert "static files on http://127.0.0.3:" in server.logs()


def test_address_flags_are_validated_and_env_works():
    cfg = config.load([], environ={"RS_API_ADDRESS": "127.0.0.1", "RS_METRICS_ADDRESS": "::1"})
    assert (cfg.api_address, cfg.static_address, cfg.metrics_address) == \
        ("127.0.0.1", "0.0.0.0", "::1")
    with pytest.raises(ConfigError, match="--static-address.*want an IP address"):
        config.load(["--static-address", "localhost"], environ={})
    # one port on two addresses is fine; on a wildcard and anything else it clashes
    config.load(["--api-port", "9000", "--static-port", "9000", "--api-address", "127.0.0.1",
                 "--static-address", "127.0.0.2"], environ={})
    with pytest.raises(ConfigError, match="--static-port: 9000 is already used by --api-port"):
        config.load(["--api-port", "9000", "--static-port", "9000",
                     "--api-address", "127.0.0.1"], environ={})


def _writes_total(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return float(re.search(r"^drp_writes_total (\S+)$", text, re.M).group(1))


def test_writes_total_counts_committed_changes(drp_factory):
    metrics_port = free_port()
    server = drp_factory("drp", start=False)
    server.metrics_port = metrics_port
    server.start()
    before = _writes_total(metrics_port)
    with server.client() as c:
        for i in range(3):
            assert c.post("/machines", json={"Name": f"m{i}"}).status_code == 201
        assert c.post("/machines", json={"Name": "m0"}).status_code == 409  # nothing committed
    assert _writes_total(metrics_port) == before + 3


def test_an_area_root_may_be_a_symlink_but_nothing_below_it(drp_factory, tmp_path):
    """tftpboot/isos on another disk is an operator's choice: the API and the static port both
    serve it. A symlink inside an area that leads out is refused by both."""
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    outside = tmp_path / "secret"
    outside.write_bytes(b"not for machines")
    server = drp_factory("drp", start=False)
    (server.base_root / "tftpboot").mkdir(parents=True)
    os.symlink(elsewhere, server.base_root / "tftpboot" / "isos")
    server.start()
    body = os.urandom(100_000)
    with server.client() as c:
        assert c.post("/isos/a.iso", content=body).status_code == 201
        assert (elsewhere / "a.iso").read_bytes() == body
        assert c.get("/isos").json() == ["a.iso"]
        assert c.get("/isos/a.iso").content == body
    static = httpx.get(f"http://127.0.0.1:{server.static_port}/isos/a.iso")
    assert static.status_code == 200 and hashlib.sha256(static.content).digest() == \
        hashlib.sha256(body).digest()

    os.symlink(outside, elsewhere / "leak.iso")
    with server.client() as c:
        api = c.get("/isos/leak.iso")
    static = httpx.get(f"http://127.0.0.1:{server.static_port}/isos/leak.iso")
    assert api.status_code == 403 and static.status_code == 403, (api.text, static.text)
    assert b"not for machines" not in api.content + static.content
