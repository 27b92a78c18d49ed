"""Loopback HA clusters of real dr-provision processes (no root needed).

Every node gets --ha-join pointing at a loopback URL (never the VIP: in a loopback test nothing
may be sent to 198.18.x), `--ha-interface lo` and an interface script that records its calls.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.drpserver import BIN, DrpServer

HA_ID = "test-cluster"
VIP = "198.18.0.100/24"
RECORDER = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/vip-calls.log"
"""


def make_token(tmp: Path) -> tuple[Path, str]:
    """A base root bootstrapped standalone, and a 3-year superuser token from it."""
    seed = DrpServer(tmp / "seed").start()
    try:
        out = seed.drpcli("users", "token", "rocketskates", "ttl", "3y").stdout
        return seed.base_root, json.loads(out)["Token"]
    finally:
        seed.stop()


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """(seed base root, token): one per test module (import it with `cluster`)."""
    return make_token(tmp_path_factory.mktemp("seed"))


@pytest.fixture
def cluster(tmp_path, seed):
    """A Cluster on the module's seed, every node stopped at the end, pass or fail."""
    seed_root, token = seed
    c = Cluster(tmp_path, token, seed_root)
    yield c
    c.stop_all()


def recorder(tmp: Path) -> Path:
    script = tmp / "vip-script.sh"
    script.write_text(RECORDER)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


class Cluster:
    """Nodes named a, b, c...: `a` starts active, the others passive, all joined to `a`."""

    def __init__(self, tmp: Path, token: str, seed_root: Path | None = None):
        self.tmp = tmp
        self.token = token
        self.script = recorder(tmp)
        self.seed_root = seed_root
        self.nodes: dict[str, DrpServer] = {}

    def node(self, name: str, *, passive: bool, join: str | None = None, extra=(),
             start: bool = True, base_root: Path | None = None, script=None) -> DrpServer:
        """`script(server) -> Path` picks the node's interface script (default: a recorder)."""
        server = DrpServer(base_root or self.tmp / name)
        script_path = script(server) if script else self.script
        if base_root is None and name == "a" and self.seed_root is not None:
            # the seed's data (users, secret) becomes the first active's
            subprocess.run(["cp", "-a", str(self.seed_root), str(server.base_root)], check=True)
        server.ha_args = lambda: [
            "--drp-id", f"node-{name}", "--ha-enabled", "true", "--ha-id", HA_ID,
            "--ha-address", VIP, "--ha-interface", "lo",
            "--ha-interface-script", str(script_path), "--ha-token", self.token,
            "--ha-passive", "true" if passive else "false",
            "--ha-join", join or self.join_url(), *extra]
        server.args = server.ha_args()
        self.nodes[name] = server
        return self.start(server) if start else server

    @staticmethod
    def start(server: DrpServer) -> DrpServer:
        """Start and wait until the node took a role (writes before that get a 503)."""
        mark = len(server.logs())
        server.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tail = server.logs()[mark:]
            if "accepting writes" in tail or "passive: following the active" in tail:
                return server
            time.sleep(0.02)
        raise AssertionError(f"node took no role:\n{server.logs()[-3000:]}")

    def join_url(self) -> str:
        return self.nodes["a"].url + "/" if "a" in self.nodes else "https://127.0.0.1:9/"

    def stop_all(self) -> None:
        for server in self.nodes.values():
            server.kill()


def info(server: DrpServer, token: str) -> dict:
    with server.client(token=token) as c:
        return c.get("/info").json()


def wait_in_sync(active: DrpServer, token: str, passives: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    states = []
    while time.monotonic() < deadline:
        states = info(active, token)["ha_passive_state"]
        if len([s for s in states if s["state"] == "In-Sync"]) >= passives:
            return states
        time.sleep(0.05)
    raise AssertionError(f"passives not In-Sync after {timeout}s: {states}\n{active.logs()[-3000:]}")


@contextlib.contextmanager
def in_sync_pair(tmp: Path):
    """A loopback active `a` and passive `b`, b caught up and In-Sync: yields (a, b, token);
    both are stopped at the end, pass or fail."""
    seed_root, token = make_token(tmp)
    cluster = Cluster(tmp, token, seed_root)
    try:
        a = cluster.node("a", passive=False)
        b = cluster.node("b", passive=True)
        b.wait_log("Stream switch to realtime streaming")
        wait_in_sync(a, token, 1)
        yield a, b, token
    finally:
        cluster.stop_all()


def data_digest(server: DrpServer) -> dict:
    """Everything a node holds, comparable across nodes: objects, blob rows, file bytes."""
    db = sqlite3.connect(f"file:{server.base_root / 'drp.db'}?mode=ro", uri=True)
    try:
        objects = db.execute("SELECT kind, key, body FROM objects ORDER BY kind, key").fetchall()
        blobs = db.execute("SELECT path, size, sha256 FROM blobs ORDER BY path").fetchall()
        head = db.execute("SELECT MAX(seq) FROM changes").fetchone()[0]
        epochs = db.execute("SELECT * FROM epochs ORDER BY epoch").fetchall()
    finally:
        db.close()
    files = {}
    for area in ("tftpboot/files", "tftpboot/isos", "plugins", "job-logs"):
        root = server.base_root / area
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath, name)
                files[str(path.relative_to(server.base_root))] = hashlib.sha256(
                    path.read_bytes()).hexdigest()
    return {"objects": objects, "blobs": blobs, "files": files, "head": head, "epochs": epochs}


def drpcli_env(server: DrpServer, token: str) -> dict:
    return {**os.environ, "RS_ENDPOINT": server.url, "RS_TOKEN": token}


def drpcli(server: DrpServer, token: str, *args: str, check: bool = True):
    return subprocess.run([str(BIN / "drpcli"), *args], env=drpcli_env(server, token),
                          capture_output=True, text=True, check=check, timeout=120)


def http(server: DrpServer, token: str, timeout: float = 30) -> httpx.Client:
    return server.client(token=token, timeout=timeout)
