"""Every HA role transition in-process: real stores, roles, sessions and supervisors, with the
VIP, the network and the downloads in memory (tests/hafakes.py). Each runs in well under a
second; the namespace and process tests (test_ha_roles, test_ha_replication, test_fault)
stay the end-to-end proof."""
from __future__ import annotations


import pytest
import trio

from drp.ha import follower as follower_module
from drp.ha.follower import REALTIME
from drp.store.errors import NotReplicated, WritesRefused
from tests.hafakes import FakeNode, wait_until

pytestmark = pytest.mark.timeout(30)


def node(segment, tmp_path, drp_id: str, *, passive: bool, **kw) -> FakeNode:
    last = drp_id[-1]
    return FakeNode(segment, tmp_path / drp_id, drp_id, f"02:00:00:00:00:0{last}",
                    passive=passive, **kw)


async def pair(segment, tmp_path, **kw) -> tuple[FakeNode, FakeNode]:
    """n1 active, n2 passive and In-Sync."""
    a, b = node(segment, tmp_path, "n1", passive=False, **kw), \
        node(segment, tmp_path, "n2", passive=True, **kw)
    await a.start()
    await wait_until(lambda: a.status().role == "active", what="n1 active")
    await b.start()
    await wait_until(lambda: b.status().ha_status == "In-Sync", what="n2 In-Sync")
    return a, b


def passive_state(active: FakeNode, drp_id: str) -> dict | None:
    return next((p for p in active.status().passives if p["id"] == drp_id), None)


async def test_catch_up_then_realtime(segment, tmp_path, logs):
    a = node(segment, tmp_path, "n1", passive=False)
    await a.start()
    await wait_until(lambda: a.status().role == "active")
    for i in range(20):  # before any passive: these wait for nobody
        await a.write(f"m{i}")
    b = node(segment, tmp_path, "n2", passive=True)
    await b.start()
    await wait_until(lambda: b.supervisor.role is not None, what="n2 has a role")
    assert b.status().role == "passive"
    with pytest.raises(WritesRefused, match="is passive: send writes to the active"):
        await b.write("nope")
    await wait_until(lambda: b.status().ha_status == "In-Sync")
    assert await b.keys() == await a.keys() and len(await b.keys()) == 20
    assert logs(REALTIME) == [REALTIME]
    # 20 writes after the bootstrap (epoch, token secret, secure-params secret, role, user)
    # and the promotion
    assert logs("connected to active n1: this node is at seq 0, 26 behind its head 26; "
                "replaying from seq 1")
    assert not logs("stopped following")  # n1's first role followed nobody
    assert logs("active: accepting writes (") and \
        "after the node started taking the role" in logs("active: accepting writes (")[0]
    assert passive_state(a, "n2")["state"] == "In-Sync"
    assert passive_state(a, "n2")["electable"]
    # synchronous from now on: when a write returns, the passive has it
    for i in range(5):
        await a.write(f"sync{i}")
        assert f"sync{i}" in await b.keys()
    assert b.status().active_id == "n1" and b.store.head == a.store.head
    assert "passive: in sync with active n1" in b.lines


async def test_resume_after_a_disconnect(segment, tmp_path, logs):
    a, b = await pair(segment, tmp_path)
    await a.write("before")
    segment.cut()  # a network blink: both ends see the connection end
    for i in range(3):  # the passive is gone from the tracker: these wait for nobody
        await a.write(f"gap{i}")
    await wait_until(lambda: b.store.head == a.store.head, what="n2 resumed")
    await wait_until(lambda: b.status().ha_status == "In-Sync")
    assert {"before", "gap0", "gap1", "gap2"} <= set(await b.keys())
    assert len(logs("connected to active n1: this node")) == 2  # resumed, no full catch-up
    assert not logs("full catch-up")
    assert len(logs(REALTIME)) == 2  # once per connection


async def test_crashed_active_rejoins_with_divergent_entries(segment, tmp_path, logs):
    a, b = await pair(segment, tmp_path)
    await a.write("shared")
    b.link().stall(True)  # n2 stops reading: n1's next writes outlive the sync timeout
    await a.write("lost-1")  # returns once n2 is dropped to Syncing
    await a.write("lost-2")
    assert logs("did not ack within --ha-sync-timeout")
    segment.cut()
    await a.crash()  # kill -9: the VIP stays on n1's interface
    await b.switch("active")  # the operator's USR1; nobody answers behind the VIP
    assert b.status().role == "active"
    await b.write("after")
    await a.start()  # ha-state.json says active: the guard refuses, n1 follows instead
    assert a.status().role == "passive"
    assert "refused to become active" in a.status().reason
    await wait_until(lambda: a.status().ha_status == "In-Sync", what="n1 caught up")
    assert logs("change-log entries that the active's history lacks")
    assert logs("connected to active n2: full catch-up")
    assert set(await a.keys()) == set(await b.keys()) == {"shared", "after"}
    assert a.store.head == b.store.head


async def test_planned_handover_with_writes_in_flight(segment, tmp_path, logs):
    a, b = await pair(segment, tmp_path)
    acked, refused = [], []

    async def writer(i: int):
        try:
            await a.write(f"w{i}")
            acked.append(f"w{i}")
        except WritesRefused:
            refused.append(f"w{i}")
    async with trio.open_nursery() as writers:
        for i in range(40):
            writers.start_soon(writer, i)
        await trio.sleep(0)
        await a.switch("passive")
    await b.switch("active")
    assert (a.status().role, b.status().role) == ("passive", "active")
    assert set(acked) <= set(await b.keys())  # no acknowledged write lost
    assert len(acked) + len(refused) == 40 and acked
    assert logs("handover: every In-Sync passive acked")
    assert logs("took every entry of the handing-over active")
    assert logs("the active handed over at seq")  # an expected close, said as such
    assert not [ln for ln in logs("replication from") if "EndOfChannel" in ln]  # not a warning
    await wait_until(lambda: a.status().ha_status == "In-Sync", what="n1 follows n2")
    await b.write("on-n2")
    assert "on-n2" in await a.keys()


async def test_unconfirmed_write_at_a_handover_is_answered_ha_unconfirmed(segment, tmp_path,
                                                                         logs):
    a, b = await pair(segment, tmp_path, sync_timeout="30s", handover_timeout="0.3s")
    b.link().stall(True)  # n2 takes nothing more: the write waits for its ack
    outcome = []

    async def write():
        try:
            await a.write("unconfirmed")
            outcome.append("acked")
        except NotReplicated as e:
            outcome.append(str(e))
    async with trio.open_nursery() as n:
        n.start_soon(write)
        await wait_until(lambda: a.store.head > b.store.head)
        await a.switch("passive")
    assert len(outcome) == 1 and "passives did not confirm it" in outcome[0]
    assert logs("did not ack seq")


async def test_slow_passive_dropped_to_syncing_then_rejoins(segment, tmp_path, logs):
    a, b = await pair(segment, tmp_path, sync_timeout="0.3s")
    b.link().stall(True)
    began = trio.current_time()
    await a.write("slow")  # held back by n2 until the sync timeout drops it
    assert trio.current_time() - began >= 0.25
    assert passive_state(a, "n2")["state"] == "Syncing"
    assert not passive_state(a, "n2")["electable"]
    assert logs("passive n2 did not ack within --ha-sync-timeout 0.3s")
    began = trio.current_time()
    await a.write("fast")  # no longer waits for n2
    assert trio.current_time() - began < 0.25
    b.link().stall(False)
    await wait_until(lambda: passive_state(a, "n2")["state"] == "In-Sync", what="rejoined")
    assert logs("passive n2 is In-Sync at seq")
    await a.write("synced")
    assert "synced" in await b.keys()


async def test_second_switch_queued_mid_switch(segment, tmp_path, logs):
    a, b = await pair(segment, tmp_path)
    first, second = trio.Event(), trio.Event()
    await a.supervisor.request_switch("passive", first)
    await wait_until(lambda: a.supervisor.switching == "passive", what="the switch began")
    await a.supervisor.request_switch("active", second)  # while the first is carried out
    await first.wait()
    await second.wait()
    assert logs("switch to active queued: the switch to passive is still in progress")
    assert a.status().role == "active"
    assert logs("switching from active to passive") and logs("switching from passive to active")
    await wait_until(lambda: b.status().ha_status == "In-Sync", what="n2 follows n1 again")
    await a.write("again")
    assert "again" in await b.keys()


async def test_guard_refuses_while_another_active_holds_the_vip(segment, tmp_path, logs):
    a, b = await pair(segment, tmp_path)
    await b.switch("active")
    assert b.status().role == "passive"
    assert b.status().reason.startswith("refused to become active: VIP 198.18.0.100 is "
                                        "answered by 02:00:00:00:00:01, where n1 serves")
    assert logs("This node stays passive")
    await a.write("still-replicated")  # n2 kept following throughout
    assert "still-replicated" in await b.keys()
    assert segment.vip_holder is a


async def test_active_that_cannot_take_the_vip_stays_passive(segment, tmp_path, logs):
    segment.fail_vip_add.add("n1")
    a = node(segment, tmp_path, "n1", passive=False)
    await a.start()
    await wait_until(lambda: a.supervisor.role is not None, what="n1 has a role")
    assert a.status().role == "passive"
    assert a.status().reason.startswith("could not add VIP 198.18.0.100/24")
    assert a.vip.calls[-2:] == ["add", "remove"]  # a half-done add is undone
    assert (tmp_path / "n1" / "ha-state.json").read_text() == '{"Passive": true}'
    with pytest.raises(WritesRefused):
        await a.write("x")


async def test_stop_releases_the_vip_and_refuses_writes(segment, tmp_path):
    a, b = await pair(segment, tmp_path)
    assert segment.vip_holder is a
    await a.stop()
    assert segment.vip_holder is None and a.vip.calls[-1] == "remove"


async def test_a_passive_fetching_files_holds_no_write_back(segment, tmp_path, logs):
    """A passive that is a big file behind counts as caught up only once it can ack promptly:
    writes meanwhile do not wait for it (nor drop it once per write)."""
    a, b = await pair(segment, tmp_path, sync_timeout="0.3s")
    await b.stop()
    await a.put_file("big.iso", b"x" * 4096)
    b.fetch_delay = 1.0  # the file takes a second to come
    await b.start()
    await wait_until(lambda: b.fetcher.fetched == ["files/big.iso"], what="n2 fetching")
    for i in range(10):
        began = trio.current_time()
        await a.write(f"during{i}")
        assert trio.current_time() - began < 0.2, f"write {i} waited for the fetching passive"
        await trio.sleep(0.05)
    assert not logs("did not ack within")  # never held back, so never dropped
    await wait_until(lambda: passive_state(a, "n2")["state"] == "In-Sync", what="n2 In-Sync")
    await a.write("after")
    assert "after" in await b.keys()  # synchronous again
    assert (b.base / "tftpboot" / "files" / "big.iso").read_bytes() == b"x" * 4096


async def test_a_disconnected_passive_stays_in_view(segment, tmp_path):
    a, b = await pair(segment, tmp_path)
    await b.stop()
    gone = passive_state(a, "n2")
    assert gone["state"] == "Disconnected" and not gone["electable"]
    assert gone["since"].endswith("Z") and gone["lag"] == 0
    await a.write("while-away")  # waits for nobody
    assert passive_state(a, "n2")["lag"] == 1
    await b.start()
    await wait_until(lambda: passive_state(a, "n2")["state"] == "In-Sync", what="back")
    assert "since" not in passive_state(a, "n2")


async def test_no_active_for_a_while_says_what_to_do_once(segment, tmp_path, logs,
                                                          monkeypatch):
    monkeypatch.setattr(follower_module, "NO_ACTIVE_AFTER", 0.5)
    a, b = await pair(segment, tmp_path)
    await a.write("last")
    head = b.store.head
    await a.crash()
    await wait_until(lambda: logs("no active at"), timeout=5, what="the no-active line")
    await trio.sleep(1.0)  # more failed attempts: said once
    lines = logs("no active at")
    assert len(lines) == 1
    assert "promote an electable passive: `drpcli system active` against that node" in lines[0]
    assert f"This node is electable: it was In-Sync with n1 at seq {head}" in lines[0]
