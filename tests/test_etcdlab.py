"""The etcd test harness itself, against real etcd 3.4 processes."""

from __future__ import annotations

import os
import time

import pytest

from tests.etcdlab import ETCD, EtcdCluster, EtcdError, etcd3, etcd_floor, get, put  # noqa: F401
from tests.netns import lab, requires_root  # noqa: F401  (lab is a fixture)


def _put_eventually(ec: EtcdCluster, i: int, key: str, value: str, within: float = 10.0) -> None:
    """A put through member i succeeds within `within` s (a new leader may still be elected)."""
    deadline = time.monotonic() + within
    while True:
        try:
            put(ec.endpoints[i], key, value, timeout=2.0)
            return
        except EtcdError:
            if time.monotonic() > deadline:
                raise AssertionError(f"put via {ec.members[i].name} kept failing\n{ec.logs()}")
            time.sleep(0.1)


def test_cluster_starts_healthy(etcd3):
    print(f"3-member loopback cluster healthy after {etcd3.start_seconds:.2f}s")
    assert all(etcd3.healthy(i) for i in range(3)), etcd3.logs()
    assert len(etcd3.endpoints) == 3
    assert all(e.startswith("http://127.0.0.1:") for e in etcd3.endpoints)
    assert etcd3.endpoints_arg == ",".join(etcd3.endpoints)
    assert "m0" in etcd3.log(0)
    assert len({str(m.data_dir) for m in etcd3.members}) == 3


def test_put_on_one_member_is_read_on_another(etcd3):
    put(etcd3.endpoints[0], "/lab/k", "hello")
    assert get(etcd3.endpoints[2], "/lab/k") == "hello"
    assert get(etcd3.endpoints[1], "/lab/absent") is None


def test_one_member_down_keeps_quorum(etcd3):
    etcd3.kill(0)
    assert not etcd3.healthy(0)
    _put_eventually(etcd3, 1, "/lab/k1", "v1")
    assert get(etcd3.endpoints[2], "/lab/k1") == "v1"


def test_two_members_down_lose_quorum_then_recover(etcd3):
    put(etcd3.endpoints[2], "/lab/before", "1")
    etcd3.kill(0)
    etcd3.kill(1)
    t0 = time.monotonic()
    with pytest.raises(EtcdError):
        put(etcd3.endpoints[2], "/lab/k2", "v2", timeout=3.0)
    assert time.monotonic() - t0 < 10
    etcd3.restart(0)
    etcd3.restart(1)
    assert all(etcd3.healthy(i) for i in range(3)), etcd3.logs()
    _put_eventually(etcd3, 0, "/lab/k3", "v3")
    assert get(etcd3.endpoints[1], "/lab/k3") == "v3"
    assert get(etcd3.endpoints[1], "/lab/before") == "1"  # the restarted members kept their data


def test_stop_and_restart_member(etcd3):
    etcd3.stop(2)
    assert not etcd3.healthy(2)
    _put_eventually(etcd3, 0, "/lab/k4", "v4")
    etcd3.restart(2)
    assert get(etcd3.endpoints[2], "/lab/k4") == "v4"
    assert "state=existing" in etcd3.log(2)


def test_etcd_floor(etcd3):
    floor = etcd_floor(etcd3.endpoints[0])
    print("etcd floor:", floor)
    assert floor["min_ttl_s"] == 2
    assert len(floor["expiry_late_s"]) == 3
    assert all(-0.1 <= x <= 1.0 for x in floor["expiry_late_s"]), floor
    assert -0.1 <= floor["expiry_late_median_s"] <= 1.0


@requires_root
@pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason=f"{ETCD} missing")
def test_cluster_in_lab_hosts(lab, tmp_path):
    hosts = [lab.add_host(f"e{i}", f"198.18.0.{21 + i}/24") for i in range(3)]
    client = lab.add_host("c", "198.18.0.24/24")
    with EtcdCluster(tmp_path / "etcd", hosts=hosts) as ec:
        ec.start()
        print(f"3-member lab cluster healthy after {ec.start_seconds:.2f}s")
        assert ec.endpoints == [f"http://198.18.0.{21 + i}:2379" for i in range(3)]
        put(ec.endpoints[0], "/lab/net", "across", host=client)
        assert get(ec.endpoints[2], "/lab/net", host=client) == "across"
        ec.kill(1)
        assert not ec.healthy(1)
        # the two left elect a raft leader first if member 1 led (~1 s at the defaults, more
        # on a loaded machine): a majority takes the write within a few tries
        for attempt in range(4):
            try:
                put(ec.endpoints[2], "/lab/net2", "still", timeout=5.0, host=client)
                break
            except EtcdError:
                if attempt == 3:
                    raise
        ec.restart(1)
        assert get(ec.endpoints[1], "/lab/net2", host=client) == "still"
