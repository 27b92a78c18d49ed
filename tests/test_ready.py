"""READY=1 means serving in its role: an active once its VIP is up and it accepts writes, a
passive once it follows (or has said why it cannot). STATUS= from the first moment. Real
processes; the VIP on loopback through an interface script; the notify socket read here."""
from __future__ import annotations

import pytest

from tests.drpserver import DrpServer
from tests.hanet import make_token
from tests.notify import Notifications

pytestmark = pytest.mark.timeout(60)

# "add" takes half a second and is recorded only once it is done
SLOW_ADD = ("#!/bin/sh\n[ \"$1\" = add ] && sleep 0.5\necho \"$1\" >> \"$VIP_LOG\"\nexit 0\n")


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    return make_token(tmp_path_factory.mktemp("seed"))[1]


def ha_server(tmp_path, name, token, *extra, env=None):
    script = tmp_path / "vip-script"
    script.write_text(SLOW_ADD)
    script.chmod(0o755)
    return DrpServer(tmp_path / name, [
        "--ha-enabled", "true", "--ha-id", "ready-test", "--ha-address", "127.0.0.100/8",
        "--ha-interface", "lo", "--ha-interface-script", str(script), "--ha-token", token,
        "--drp-id", name, *extra], env=env)


def test_active_is_ready_only_once_its_vip_is_up(tmp_path, token):
    calls = tmp_path / "vip.calls"
    server = ha_server(tmp_path, "a", token, "--ha-join", "https://127.0.0.1:9/",
                       env={"VIP_LOG": str(calls), "NOTIFY_SOCKET": str(tmp_path / "notify")})
    seen = Notifications(tmp_path / "notify",
                         lambda: (calls.read_text().split() if calls.exists() else [],
                                  server.logs()))
    try:
        server.start(wait=False)
        vip_calls, logs = seen.wait("READY=1")
        assert "add" in vip_calls  # the VIP was up before READY
        assert "active: accepting writes" in logs
        assert "CTRL + C" not in server.logs()  # hypercorn's banner stays out of the journal
        first = seen.got[0][0]
        assert first.startswith("STATUS=starting"), seen.got  # STATUS from the first moment
    finally:
        seen.close()
        server.stop()


def test_passive_is_ready_once_it_has_said_why_it_cannot_follow(tmp_path, token):
    server = ha_server(tmp_path, "b", token, "--ha-passive", "true",
                       "--ha-join", "https://127.0.0.1:9/",  # nobody answers there
                       env={"VIP_LOG": str(tmp_path / "vip.calls"),
                            "NOTIFY_SOCKET": str(tmp_path / "notify")})
    seen = Notifications(tmp_path / "notify", lambda: server.logs())
    try:
        server.start(wait=False)
        logs = seen.wait("READY=1")
        assert "passive: following the active at https://127.0.0.1:9/" in logs
        assert "replication from https://127.0.0.1:9/" in logs  # it said why it cannot
        statuses = [line for line, _ in seen.got if line.startswith("STATUS=")]
        assert "STATUS=passive: connecting to https://127.0.0.1:9/" in statuses
    finally:
        seen.close()
        server.stop()
