"""The rules of automatic failover (issue 14), in-process: drp.ha.leadership, drp.ha.consensus
and drp.ha.autopilot against an in-memory etcd (tests/fakekv.py). No network, no etcd process;
the clocks are trio's MockClock (autojump) or a FakeClock, so every deadline is exact."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from drp.ha.autopilot import Autopilot
from drp.ha.consensus import Cluster, Keys, SyncSet
from drp.ha.etcd import Delete, Kv, Put
from drp.ha.leadership import RETRY_AFTER_FAILURE, Leadership, campaign, margin_for
from drp.node import RoleStatus
from drp.store.errors import NotReplicated
from tests.fakekv import FakeClock, FakeKv

pytestmark = pytest.mark.timeout(30)
KEYS = Keys("/drp/t/")


async def read(kv: FakeKv) -> Cluster:
    return Cluster.read(KEYS, await kv.get_prefix(KEYS.prefix))


async def win(kv: FakeKv, drp_id: str = "n1", ttl: int = 2, clock=trio.current_time):
    lead = await campaign(kv, KEYS, drp_id, ttl, await read(kv), clock)
    assert lead is not None, "the campaign should have won"
    return lead


async def hold_key(kv: FakeKv, drp_id: str, ttl: int = 10) -> int:
    """Another node holds `leader` (returns its lease)."""
    lease, _ = await kv.grant(ttl)
    await kv.put(KEYS.leader, drp_id, lease)
    return lease


async def put_sync(kv: FakeKv, leader: str, epoch: int, *members: str) -> None:
    await kv.put(KEYS.sync, SyncSet(leader, epoch, members).text())


def committed(kv: FakeKv) -> frozenset[str]:
    text = kv.value(KEYS.sync)
    return frozenset(SyncSet.parse(text).members) if text else frozenset()


def timed_keepalives(kv: FakeKv, answer_after: float = 0.0) -> list[tuple[float, bool]]:
    """Record (send time, answered) of every keepalive; etcd answers answer_after later."""
    sends: list[tuple[float, bool]] = []
    real = kv.keepalive

    async def keepalive(lease: int) -> int:
        at = trio.current_time()
        try:
            ttl = await real(lease)
        except Exception:
            sends.append((at, False))
            raise
        await trio.sleep(answer_after)
        sends.append((at, True))
        return ttl
    kv.keepalive = keepalive
    return sends


# ---- rule 2: the write gate ----------------------------------------------------------------------
async def test_check_passes_before_the_deadline_and_fences_once_at_it():
    clock = FakeClock()
    kv = FakeKv(clock)
    lead = await win(kv, clock=clock.now)
    assert lead.deadline == clock.now() + 2 - margin_for(2)
    lost: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead.keep, lost.append)
        await wait_all_tasks_blocked()
        # The process "pauses": the monotonic clock moves, no trio task runs.
        clock.t = lead.deadline - 1e-6
        lead.check()  # a write acknowledged just before the deadline
        clock.t = lead.deadline
        with pytest.raises(NotReplicated, match="stopped being the active"):
            lead.check()
        assert len(lost) == 1 and "not renewed in time" in lost[0]
        with pytest.raises(NotReplicated):
            lead.check()
        assert len(lost) == 1, "on_lost is called once"
        nursery.cancel_scope.cancel()


async def test_gate_refuses_a_write_whose_acks_came_after_the_deadline():
    clock = FakeClock()
    kv = FakeKv(clock)
    lead = await win(kv, clock=clock.now)
    acked = trio.Event()

    async def wait_synced(seq: int) -> None:
        await acked.wait()
    gate = lead.gate(wait_synced)
    acked.set()
    await gate(1)  # acks before the deadline: acknowledged
    acked = trio.Event()
    async with trio.open_nursery() as nursery:
        result: list = []

        async def write() -> None:
            try:
                await gate(2)
                result.append("acknowledged")
            except NotReplicated as e:
                result.append(e)
        nursery.start_soon(write)
        await wait_all_tasks_blocked()
        clock.t = lead.deadline + 0.5  # the passives answer after a pause past the deadline
        acked.set()
    assert isinstance(result[0], NotReplicated)
    assert lead.lost


async def test_a_keepalive_answered_after_the_fence_does_not_unfence():
    clock = FakeClock()
    kv = FakeKv(clock)
    lead = await win(kv, clock=clock.now)
    old_deadline = lead.deadline
    clock.advance(0.5)
    held = kv.block("keepalive", applied=True)  # etcd renews it; the answer is slow
    lost: list[str] = []
    done = trio.Event()

    async def keep() -> None:
        await lead.keep(lost.append)
        done.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep)
        await held.entered.wait()
        clock.t = old_deadline + 0.05  # past the old deadline; the lease lives on in etcd
        with pytest.raises(NotReplicated):
            lead.check()
        held.release()  # this answer alone would move the deadline past now
        with trio.fail_after(5):
            await done.wait()
        assert lead.deadline > clock.now()
        with pytest.raises(NotReplicated):
            lead.check()
        assert len(lost) == 1


# ---- rules 1 and 2: keeping the lease ------------------------------------------------------------
async def test_keep_renews_every_third_of_the_ttl_and_the_deadline_follows_send_times(
        autojump_clock):
    kv = FakeKv()
    lead = await win(kv, ttl=3)
    sends = timed_keepalives(kv, answer_after=0.2)  # etcd answers 0.2 s after each send
    lost: list[str] = []
    with trio.move_on_after(10.1):
        await lead.keep(lost.append)
    assert not lost
    times = [t for t, ok in sends if ok]
    assert len(times) >= 10
    for a, b in zip(times, times[1:]):
        assert b - a == pytest.approx(1.0)
    # Measured from when it was sent, not from when etcd answered.
    assert lead.deadline == pytest.approx(times[-1] + 3 - margin_for(3))
    assert lead.lease in kv.leases and kv.value(KEYS.leader) == "n1"


async def test_keepalive_answered_minus_one_fences(autojump_clock):
    kv = FakeKv()
    lead = await win(kv)
    lost: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead.keep, lambda why: lost.append((trio.current_time(), why)))
        await trio.sleep(1.0)
        assert not lost
        await kv.revoke(lead.lease)  # etcd lost the lease (say, restored from a backup)
        revoked = trio.current_time()
        await trio.sleep(1.0)
    assert len(lost) == 1 and "expired" in lost[0][1]
    assert lost[0][0] - revoked <= 2 / 3 + 1e-9  # at the next renewal
    with pytest.raises(NotReplicated):
        lead.check()


async def test_a_short_etcd_outage_is_ridden_out_by_retrying_soon(autojump_clock):
    """etcd unreachable for 0.8 s (a raft election), back before the deadline: the keeper
    retries every RETRY_AFTER_FAILURE instead of waiting a third of the TTL, so it renews
    within that of etcd's return and never fences."""
    kv = FakeKv()
    lead = await win(kv)
    sends = timed_keepalives(kv)
    lost: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead.keep, lambda why: lost.append(trio.current_time()))
        await trio.sleep(0.7)  # just after the renewal at 2/3 s
        kv.cut()
        await trio.sleep(0.8)
        kv.heal()
        healed = trio.current_time()
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert not lost
    first_after = min(t for t, ok in sends if ok and t >= healed)
    assert first_after - healed <= RETRY_AFTER_FAILURE + 1e-9
    assert lead.deadline > healed + 1.0


async def test_etcd_unreachable_fences_exactly_at_the_deadline(autojump_clock):
    kv = FakeKv()
    lead = await win(kv)
    sends = timed_keepalives(kv)
    lost: list[float] = []
    checks: list[float] = []

    async def writes() -> None:  # a write every 10 ms until one is refused
        while True:
            try:
                lead.check()
            except NotReplicated:
                return
            checks.append(trio.current_time())
            await trio.sleep(0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead.keep, lambda why: lost.append(trio.current_time()))
        await trio.sleep(1.1)
        kv.cut()
        nursery.start_soon(writes)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    last_ok = max(t for t, ok in sends if ok)
    assert any(not ok for _, ok in sends), "keepalives were tried while etcd was cut off"
    deadline = last_ok + 2 - margin_for(2)
    assert lost == [pytest.approx(deadline, abs=1e-9)]
    assert checks and max(checks) < deadline
    # ... while etcd still holds the lease: nobody else can have the key yet.
    assert kv.leases[lead.lease].expires > deadline


@pytest.mark.parametrize("by", ["deleted", "re-created"])
async def test_leader_key_gone_or_taken_fences(autojump_clock, by):
    kv = FakeKv()
    lead = await win(kv)
    lost: list[str] = []
    seen: list[Cluster] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead.keep, lost.append, seen.append)
        await trio.sleep(1.0)
        assert seen and seen[-1].leader.value == "n1" and not lost
        await kv.txn([], [Delete(KEYS.leader)])
        if by == "re-created":
            await hold_key(kv, "n2")
        await trio.sleep(1.0)
    assert len(lost) == 1
    assert ("taken by n2" if by == "re-created" else "taken by nobody") in lost[0]
    with pytest.raises(NotReplicated):
        lead.check()


# ---- rules 1 and 4: the campaign ------------------------------------------------------------------
async def test_campaign_wins_when_leader_is_absent():
    clock = FakeClock()
    kv = FakeKv(clock)
    await put_sync(kv, "n0", 3, "n1")
    lead = await win(kv, clock=clock.now)
    key = await kv.get(KEYS.leader)
    assert key.value == "n1" and key.lease == lead.lease
    assert key.create_revision == lead.revision
    assert lead.deadline == clock.now() + 2 - margin_for(2)


async def test_campaign_loses_while_leader_is_held_and_revokes_its_lease():
    kv = FakeKv()
    other = await hold_key(kv, "n2")
    assert await campaign(kv, KEYS, "n1", 2, await read(kv)) is None
    assert set(kv.leases) == {other}, "the loser's lease is revoked"
    assert kv.value(KEYS.leader) == "n2"


async def test_campaign_loses_when_sync_changed_since_it_was_read():
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1", "n2")
    cluster = await read(kv)
    assert cluster.eligible("n1") is None
    await put_sync(kv, "n0", 3, "n2")  # the old active dropped n1 meanwhile
    assert await campaign(kv, KEYS, "n1", 2, cluster) is None
    assert kv.value(KEYS.leader) is None and not kv.leases


async def test_two_campaigns_at_once_one_wins():
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1", "n2")
    cluster = await read(kv)
    won: dict[str, Leadership | None] = {}

    async def run(drp_id: str) -> None:
        won[drp_id] = await campaign(kv, KEYS, drp_id, 2, cluster)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "n1")
        nursery.start_soon(run, "n2")
    winners = [d for d, lead in won.items() if lead is not None]
    assert len(winners) == 1 and kv.value(KEYS.leader) == winners[0]
    assert set(kv.leases) == {won[winners[0]].lease}


@pytest.mark.parametrize("landed", [True, False])
async def test_campaign_whose_answer_is_lost_reads_back(landed):
    kv = FakeKv()
    gate = kv.block_txn(applied=landed)
    result: list = []

    async def run() -> None:
        result.append(await campaign(kv, KEYS, "n1", 2, await read(kv)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await gate.entered.wait()
        gate.lose()
    lead = result[0]
    if landed:
        assert lead is not None and lead.revision == (await kv.get(KEYS.leader)).create_revision
    else:
        assert lead is None and not kv.leases


# ---- rules 1 and 3: who may take it ---------------------------------------------------------------
def test_eligible():
    assert Cluster().eligible("anyone") is None  # never had an active
    cluster = Cluster(sync=SyncSet("n1", 7, ("n2", "n4")))
    assert cluster.eligible("n2") is None
    assert cluster.eligible("n1") is None  # the last active holds every write too
    why = cluster.eligible("n3")
    assert why and "n2" in why and "n4" in why and "epoch 7" in why
    assert "none" in Cluster(sync=SyncSet("n1", 7, ())).eligible("n3")
    unreadable = Cluster.read(KEYS, {KEYS.sync: Kv("{not json", 5, 5, 0)})
    assert unreadable.eligible("n2") and unreadable.eligible("n1")


# ---- the passive's campaign loop ------------------------------------------------------------------
class StandInNode:
    """What Autopilot reads of a node."""
    drp_id = "n1"
    cfg = SimpleNamespace(api_port=8092, static_ip=None)
    store = SimpleNamespace(head=0, epoch=0)

    def status(self) -> RoleStatus:
        return RoleStatus("passive", "In-Sync", "n0")


class Loop:
    """An Autopilot's campaign_loop in the background; `taken` gets (time, Leadership)."""

    def __init__(self, kv: FakeKv, nursery: trio.Nursery):
        self.ap = Autopilot(StandInNode(), kv, KEYS, 2, clock=trio.current_time)
        self.taken: list[tuple[float, Leadership]] = []
        self.nursery = nursery

    def start(self) -> "Loop":
        self.nursery.start_soon(self._run)
        return self

    async def _run(self) -> None:
        with trio.move_on_after(60):  # (virtual seconds) a loop that never takes ends too
            await self.ap.campaign_loop(self._take)

    async def _take(self, lead: Leadership) -> None:
        self.taken.append((trio.current_time(), lead))


async def test_eligible_passive_takes_the_key(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1")
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery).start()
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1
    lead = loop.taken[0][1]
    assert isinstance(lead, Leadership) and lead.drp_id == "n1"
    assert kv.value(KEYS.leader) == "n1" and (await kv.get(KEYS.leader)).lease == lead.lease


async def test_a_passive_outside_sync_waits_and_says_why(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n2", "n3")
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery).start()
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert not loop.taken and kv.value(KEYS.leader) is None
    assert "not in the sync set" in loop.ap.why_waiting and "n2, n3" in loop.ap.why_waiting


async def test_paused_waits_until_resumed(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1")
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery)
        await loop.ap.pause("alice")
        loop.start()
        await trio.sleep(5)
        assert not loop.taken and "paused (by alice" in loop.ap.why_waiting
        await loop.ap.resume("alice")
        resumed = trio.current_time()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1 and loop.taken[0][0] - resumed <= 0.2


async def test_a_switchover_to_another_waits(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1", "n2")
    await kv.put(KEYS.switchover, json.dumps({"From": "n0", "To": "n2"}))
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery).start()
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert not loop.taken and "switchover to n2" in loop.ap.why_waiting


async def test_a_switchover_to_this_node_skips_the_holdoff(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1", "n2")
    await kv.put(KEYS.switchover, json.dumps({"From": "n0", "To": "n1"}))
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery)
        loop.ap.holdoff_until = trio.current_time() + 10
        loop.start()
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1


async def test_holdoff_after_handing_over(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n1", 3, "n2")  # n1 was the active
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery)
        until = loop.ap.holdoff_until = trio.current_time() + 4
        loop.start()
        await trio.sleep(2)
        assert not loop.taken and "just handed over" in loop.ap.why_waiting
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1 and until <= loop.taken[0][0] <= until + 0.2


async def test_first_start_delay_only_while_the_cluster_never_had_an_active(autojump_clock):
    kv = FakeKv()
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery)
        until = loop.ap.first_start_delay = trio.current_time() + 2
        loop.start()
        await trio.sleep(1)
        assert not loop.taken and "never had an active" in loop.ap.why_waiting
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1 and until <= loop.taken[0][0] <= until + 0.2

    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1")
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery)
        loop.ap.first_start_delay = trio.current_time() + 2
        loop.start()
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1, "a cluster that had an active: no first-start delay"


async def test_own_stale_leader_key_is_deleted_then_taken(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n1", 3, "n2")
    old = await hold_key(kv, "n1", ttl=30)  # from before a crash and restart of n1
    old_created = (await kv.get(KEYS.leader)).create_revision
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery).start()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1, "taken long before the old lease's 30 s"
    key = await kv.get(KEYS.leader)
    assert key.value == "n1" and key.lease != old and key.create_revision > old_created


async def test_another_nodes_leader_key_is_left_alone(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n2", 3, "n1")
    lease = await hold_key(kv, "n2", ttl=30)
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery).start()
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert not loop.taken and "n2 is the active" in loop.ap.why_waiting
    assert (await kv.get(KEYS.leader)).lease == lease


async def test_etcd_unreachable_stays_passive_then_takes(autojump_clock):
    kv = FakeKv()
    await put_sync(kv, "n0", 3, "n1")
    kv.cut()
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery).start()
        await trio.sleep(5)
        assert not loop.taken and loop.ap.reachable is False
        kv.heal()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1 and loop.ap.reachable is True


async def test_expired_leader_key_is_raced_for_after_etcd_deletes_it(autojump_clock):
    kv = FakeKv(lateness=0.4)
    await put_sync(kv, "n0", 3, "n1")
    await hold_key(kv, "n0", ttl=2)  # the active crashed: nobody renews it
    async with trio.open_nursery() as nursery:
        loop = Loop(kv, nursery).start()
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert len(loop.taken) == 1 and 2.4 <= loop.taken[0][0] <= 2.6


# ---- rule 3: the sync set and the hub's pinned members -------------------------------------------
class StandInHub:
    """What _sync_loop uses of drp.ha.sender.Hub; each pin() records what etcd held then."""

    def __init__(self, kv: FakeKv, members: frozenset[str]):
        self.kv = kv
        self.tracker = SimpleNamespace(in_sync=lambda: self.in_sync)
        self.in_sync = members
        self.pinned = members
        self.pins: list[tuple[frozenset[str], frozenset[str], int]] = []
        self._changed = trio.Event()

    def pin(self, members: frozenset[str]) -> None:
        self.pinned = frozenset(members)
        self.pins.append((self.pinned, committed(self.kv), len(self.kv.txns)))

    async def changed(self) -> None:
        await self._changed.wait()

    def set_in_sync(self, *members: str) -> None:
        self.in_sync = frozenset(members)
        self._changed.set()
        self._changed = trio.Event()


async def synced_leader(kv: FakeKv, *members: str):
    lead = await win(kv)
    await lead.set_sync(frozenset(members), epoch=5)
    ap = Autopilot(StandInNode(), kv, KEYS, 2, clock=trio.current_time)
    return lead, ap, StandInHub(kv, frozenset(members))


async def until(pred, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


@pytest.mark.parametrize("applied", [False, True], ids=["in-flight", "answer-slow"])
async def test_a_removed_member_stays_pinned_until_etcd_committed_its_removal(
        autojump_clock, applied):
    kv = FakeKv()
    lead, ap, hub = await synced_leader(kv, "n2", "n3")
    gate = kv.block_txn(applied=applied)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ap._sync_loop, lead, hub)
        hub.set_in_sync("n2")  # n3 missed the sync timeout
        await gate.entered.wait()
        await trio.sleep(1)  # etcd is slow to answer
        assert "n3" in hub.pinned, "writes must still wait for n3"
        gate.release()
        await gate.done.wait()
        await until(lambda: hub.pinned == {"n2"})
        nursery.cancel_scope.cancel()
    assert committed(kv) == {"n2"} and lead.members == {"n2"}
    for pinned, in_etcd, _ in hub.pins:
        assert in_etcd <= pinned, f"pinned {set(pinned)} while etcd listed {set(in_etcd)}"


async def test_an_added_member_is_pinned_before_the_txn_is_sent(autojump_clock):
    kv = FakeKv()
    lead, ap, hub = await synced_leader(kv, "n2")
    before = len(kv.txns)
    gate = kv.block_txn()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ap._sync_loop, lead, hub)
        hub.set_in_sync("n2", "n4")
        await gate.entered.wait()
        assert hub.pinned == {"n2", "n4"} and committed(kv) == {"n2"}
        first = next(p for p in hub.pins if "n4" in p[0])
        assert first[2] == before, "pinned before the transaction went out"
        gate.release()
        await until(lambda: committed(kv) == {"n2", "n4"})
        nursery.cancel_scope.cancel()
    assert hub.pinned == {"n2", "n4"} and lead.members == {"n2", "n4"}


async def test_sync_is_never_written_once_the_leader_key_is_not_ours(autojump_clock):
    kv = FakeKv()
    lead, ap, hub = await synced_leader(kv, "n2", "n3")
    await kv.txn([], [Delete(KEYS.leader)])
    await hold_key(kv, "n2")  # n2 won meanwhile, on the strength of this sync set
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ap._sync_loop, lead, hub)
            hub.set_in_sync("n2")
    assert lead.lost and committed(kv) == {"n2", "n3"}
    assert "n3" in hub.pinned


async def test_sync_loop_retries_while_etcd_is_unreachable_keeping_the_pin(autojump_clock):
    kv = FakeKv()
    lead, ap, hub = await synced_leader(kv, "n2", "n3")
    async with trio.open_nursery() as nursery:
        kv.cut()
        nursery.start_soon(ap._sync_loop, lead, hub)
        hub.set_in_sync("n2")
        await trio.sleep(1)
        assert "n3" in hub.pinned and committed(kv) == {"n2", "n3"}
        kv.heal()
        await until(lambda: hub.pinned == {"n2"})
        nursery.cancel_scope.cancel()
    assert committed(kv) == {"n2"}


async def test_sync_set_converges_after_a_lost_answer(autojump_clock):
    """The addition of n4 lands in etcd but its answer is lost; n4 then drops out. etcd must
    not go on listing n4 (it could be promoted) nor writes wait for it for ever."""
    kv = FakeKv()
    lead, ap, hub = await synced_leader(kv, "n2")
    gate = kv.block_txn(applied=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ap._sync_loop, lead, hub)
        hub.set_in_sync("n2", "n4")
        await gate.entered.wait()
        hub.set_in_sync("n2")  # n4 misses the sync timeout meanwhile
        gate.lose()
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    for pinned, in_etcd, _ in hub.pins:
        assert in_etcd <= pinned
    assert committed(kv) == {"n2"}, "etcd still lists n4 in the sync set"
    assert hub.pinned == {"n2"}, "writes still wait for n4"


async def test_a_member_etcd_may_list_stays_pinned_after_a_lost_answer(autojump_clock):
    """The addition of n4 lands but its answer is lost; n4 drops out and n3 comes in. While
    the next write is in flight etcd still lists n4, so writes must still wait for n4 (else
    n4 could be promoted without them)."""
    kv = FakeKv()
    lead, ap, hub = await synced_leader(kv, "n2")
    lost = kv.block_txn(applied=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ap._sync_loop, lead, hub)
        hub.set_in_sync("n2", "n4")
        await lost.entered.wait()
        held = kv.block_txn()
        hub.set_in_sync("n2", "n3")
        lost.lose()
        await held.entered.wait()
        assert "n4" in committed(kv)
        assert "n4" in hub.pinned, (f"pinned {set(hub.pinned)} while etcd lists "
                                    f"{set(committed(kv))}")
        held.release()
        nursery.cancel_scope.cancel()
