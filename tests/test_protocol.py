"""drp.ha.protocol and the passive's session, fed messages directly: no network, no trio,
no clock (times are passed in)."""
import json

import pytest

from drp.ha import protocol as p
from drp.ha.passive_session import PassiveSession
from drp.ha.protocol import (FULL, IN_SYNC, STREAM, SYNCING, CONNECTING, Ack, ActiveTracker,
                             Entries, Handover, Heartbeat, Hello, ProtocolError, Refuse,
                             Snapshot, SnapshotDone, SyncPlan, Welcome, check_hello, decode,
                             encode, plan_sync)
from drp.ha.session_events import Apply, FetchSnapshot, InSync, Send, Welcomed
from drp.store.wire import entries_frame

SHA = "ab" * 32


def entry(seq, epoch=1, time=100.0, kind="machines", key="m1", action="update", body=None,
          **extra):
    return {"seq": seq, "epoch": epoch, "time": time, "kind": kind, "key": key,
            "action": action, "body": {"Name": key} if body is None else body, **extra}


def marker(seq, epoch, drp_id, time=100.0):
    return entry(seq, epoch, time, kind="ha", key=drp_id, action="promote",
                 body={"epoch": epoch, "drp_id": drp_id})


def hello(**kw):
    base = dict(ha_id="cluster-1", drp_id="n2", version="4.14.0", os="linux", arch="amd64",
                epoch=1, seq=10, history=((1, 1, "n1"),), protocol=p.PROTOCOL_VERSION)
    return Hello(**{**base, **kw})


def welcome(head=10, mode=STREAM, divergent=0, history=((1, 1, "n1"),), epoch=None,
            static_port=8091):
    return Welcome("n1", history[-1][0] if epoch is None else epoch, head, history, mode,
                   divergent, static_port)


# --- wire ------------------------------------------------------------------------------------

ALL_MESSAGES = [
    hello(),
    hello(epoch=0, seq=0, history=()),
    Ack(7),
    SnapshotDone(5000),
    Refuse("set RS_HA_ID=x", "ha_id"),
    welcome(head=12, mode=FULL, divergent=3),
    Snapshot(40, "snap-1", 123456, SHA),
    Entries([entry(3), entry(4, data="aGVsbG8="), marker(5, 2, "n1")], head=9),
    Heartbeat(9, 1712.5),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: m.type)
def test_round_trip(msg):
    text = encode(msg)
    assert json.loads(text)["type"] == msg.type
    assert decode(text) == msg
    assert decode(text.encode()) == msg  # bytes frames too


def test_history_decodes_to_named_tuples():
    m = decode(encode(hello(history=[[1, 1, "n1"], [2, 40, "n2"]], epoch=2, seq=41)))
    assert m.history == (p.HistoryEntry(1, 1, "n1"), p.HistoryEntry(2, 40, "n2"))
    assert m.history[1].start_seq == 40


def test_unknown_fields_are_ignored():
    assert decode('{"type":"ack","seq":3,"future":true}') == Ack(3)


def wire(msg, **changes):
    obj = json.loads(encode(msg))
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not DROP})


DROP = object()


@pytest.mark.parametrize("text, words", [
    ("{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"seq": 1}', "unknown message type"),
    ('{"type": ["ack"]}', "unknown message type"),
    ('{"type": "gossip"}', "unknown message type"),
    ('{"type": "ack"}', "missing 'seq'"),
    ('{"type": "ack", "seq": true}', "non-negative integer"),
    ('{"type": "ack", "seq": -1}', "non-negative integer"),
    ('{"type": "ack", "seq": "7"}', "non-negative integer"),
    ('{"type": "heartbeat", "head": 1, "time": "now"}', "number"),
    (wire(hello(), ha_id=7), "hello ha_id: expected a string"),
    (wire(hello(), protocol=DROP), "missing 'protocol'"),
    (wire(hello(), history=[[1, 1]]), "[epoch, start_seq, drp_id]"),
    (wire(hello(), history=[[1, 1, "a"], [1, 5, "b"]], epoch=1), "not ascending"),
    (wire(hello(), history=[[1, 5, "a"], [2, 5, "b"]], epoch=2), "not ascending"),
    (wire(hello(), history=[[0, 1, "a"]], epoch=0), "invalid epoch"),
    (wire(hello(), epoch=2), "not in its history"),
    (wire(hello(history=((1, 5, "n1"),)), seq=3), "not in its history"),
    (wire(hello(), history=[], epoch=1), "empty history"),
    (wire(welcome(), history=[], epoch=0, head=0), "empty history"),
    (wire(welcome(), mode="fast"), "unknown mode"),
    (wire(welcome(), divergent=2), "stream mode with divergent"),
    (wire(welcome(), static_port=70000), "static_port 70000 is not a port"),
    (wire(Refuse("x", "busy"), code=""), "empty code"),
    (wire(Snapshot(4, "s", 1, SHA), sha256="zz"), "sha256"),
    (wire(Snapshot(4, "s", 1, SHA), seq=0), "snapshot"),
    (wire(Entries([entry(1)], 1), items=[]), "non-empty list"),
    (wire(Entries([entry(1)], 1), items=[entry(1), entry(3)], head=3), "seq 3 follows 1"),
    (wire(Entries([entry(1)], 1), items=[entry(2), entry(1)], head=3), "seq 1 follows 2"),
    (wire(Entries([entry(1)], 1), head=0), "head 0 is before seq 1"),
    (wire(Entries([entry(1)], 1), items=[{"seq": 1}]), "missing"),
    (wire(Entries([entry(1)], 1), items=[entry(0)]), "must be >= 1"),
    (wire(Entries([entry(1)], 1), items=[entry(1, data=5)]), "entry data"),
    (wire(Entries([entry(1)], 1), items=[entry(1, time=None)]), "entry time"),
    (wire(Entries([entry(1)], 1), items=["x"]), "expected an object"),
])
def test_malformed_messages_raise_one_line_protocol_errors(text, words):
    with pytest.raises(ProtocolError) as err:
        decode(text)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_pre_ha_log_hello_is_valid():
    # a log written before HA was enabled: entries, but no epoch yet
    assert decode(encode(hello(epoch=0, seq=25, history=()))).seq == 25


# --- handshake -------------------------------------------------------------------------------

CLUSTER = dict(ha_id="cluster-1", os="linux", arch="amd64", version="4.14.0")


def test_matching_hello_is_accepted():
    assert check_hello(hello(), **CLUSTER) is None
    assert check_hello(hello(version="4.9.2"), **CLUSTER) is None  # same major is compatible
    assert check_hello(hello(version="v4.15.0"), **CLUSTER) is None
    assert check_hello(hello(), **CLUSTER, drp_id="n1") is None


def test_refuses_other_ha_id():
    r = check_hello(hello(ha_id="other"), **CLUSTER)
    assert r == Refuse("this node has --ha-id other, the cluster is cluster-1: "
                       "set RS_HA_ID=cluster-1", "ha_id")


def test_a_welcome_from_an_active_that_names_no_static_port_is_still_understood():
    """static_port came later: an active that does not send it is fetched from over the API
    (0), and the other fields stay required."""
    text = encode(welcome(static_port=8091))
    obj = json.loads(text)
    del obj["static_port"]
    assert decode(json.dumps(obj)) == welcome(static_port=0)
    del obj["divergent"]
    with pytest.raises(ProtocolError, match="missing 'divergent'"):
        decode(json.dumps(obj))


@pytest.mark.parametrize("os_, arch", [("linux", "arm64"), ("darwin", "amd64")])
def test_refuses_other_platform(os_, arch):
    r = check_hello(hello(os=os_, arch=arch), **CLUSTER)
    assert r.code == "platform"
    assert r.reason == (f"cluster runs linux/amd64, this node is {os_}/{arch}: "
                        "HA nodes must share OS and architecture")


@pytest.mark.parametrize("version, protocol", [("5.0.0", 0), ("3.13.4", 0), ("4.14.0", 2),
                                               ("tip", 0), ("", 0)])
def test_refuses_incompatible_version(version, protocol):
    """Same major release and same wire protocol, or a clear refusal."""
    protocol = protocol or p.PROTOCOL_VERSION
    r = check_hello(hello(version=version, protocol=protocol), **CLUSTER)
    assert r.code == "version"
    assert ("the active runs 4.14.0; install a 4.x release of drp on this node (protocol "
            f"{p.PROTOCOL_VERSION})") in r.reason


def test_refuses_the_actives_own_drp_id():
    r = check_hello(hello(drp_id="n1"), **CLUSTER, drp_id="n1")
    assert r.code == "drp_id" and "RS_DRP_ID" in r.reason


def test_ha_id_is_checked_first():
    r = check_hello(hello(ha_id="x", os="darwin", version="9.0.0"), **CLUSTER)
    assert r.code == "ha_id"


def test_busy_refusal_and_refusal_alias():
    r = p.busy_refusal("n2")
    assert isinstance(r, p.Refusal) and r.code == "busy" and "n2" in r.reason
    assert decode(encode(r)) == r


def test_a_future_protocol_hello_still_decodes_so_it_can_be_refused():
    text = encode(hello(protocol=7))
    assert check_hello(decode(text), **CLUSTER).code == "version"


# --- plan_sync -------------------------------------------------------------------------------

H1 = [(1, 1, "n1")]
H12 = [(1, 1, "n1"), (2, 50, "n2")]


def plan(active_history=H1, active_head=100, oldest=1, passive_history=H1, passive_head=0):
    return plan_sync(active_history=active_history, active_head=active_head,
                     active_oldest_retained_seq=oldest, passive_history=passive_history,
                     passive_head=passive_head)


def test_fresh_passive_streams_from_1_while_everything_is_retained():
    assert plan(passive_history=[], passive_head=0, oldest=1) == SyncPlan(STREAM, 1, 0)


def test_fresh_passive_gets_a_full_copy_when_the_log_was_trimmed():
    assert plan(passive_history=[], passive_head=0, oldest=2) == SyncPlan(FULL, None, 0)


def test_resume_streams_from_the_next_seq():
    assert plan(passive_head=60, oldest=40) == SyncPlan(STREAM, 61, 0)
    assert plan(passive_head=39, oldest=40) == SyncPlan(STREAM, 40, 0)  # just retained


def test_behind_retention_needs_a_full_copy():
    assert plan(passive_head=38, oldest=40) == SyncPlan(FULL, None, 0)


def test_same_head_streams_even_past_retention():
    assert plan(passive_head=100, oldest=101) == SyncPlan(STREAM, 101, 0)
    assert plan(active_history=H12, passive_history=H12, passive_head=100, oldest=90) \
        == SyncPlan(STREAM, 101, 0)


def test_split_brain_same_epoch_same_start_different_promoter():
    # both nodes promoted themselves to epoch 2 at seq 50; the passive wrote 50..70 there
    result = plan(active_history=H12, passive_history=[(1, 1, "n1"), (2, 50, "n3")],
                  passive_head=70)
    assert result == SyncPlan(FULL, None, 21)
    assert p.divergence_seq(tuple(map(p.HistoryEntry._make, H12)),
                            ((1, 1, "n1"), (2, 50, "n3"))) == 50


def test_divergence_uses_the_earlier_start_of_the_differing_epochs():
    # the passive's epoch 1 ran to 59 while the active's ended at 49
    assert plan(active_history=H12, passive_history=[(1, 1, "n1"), (2, 60, "n3")],
                passive_head=65) == SyncPlan(FULL, None, 16)


def test_passive_ahead_of_the_active_in_the_same_history_is_divergent():
    # e.g. the passive applied entries the old active wrote but never got acked by a new one
    assert plan(active_head=100, passive_head=104, oldest=1) == SyncPlan(FULL, None, 4)


def test_passive_history_prefix_of_actives():
    # the passive stopped in epoch 1 before the active's epoch 2 began: streaming is fine
    assert plan(active_history=H12, passive_history=H1, passive_head=49) \
        == SyncPlan(STREAM, 50, 0)
    # but entries it holds at/after 50 were written in epoch 1, which the active left at 49
    assert plan(active_history=H12, passive_history=H1, passive_head=55) \
        == SyncPlan(FULL, None, 6)


def test_passive_promoted_itself_past_the_actives_history():
    # the passive's history is longer: its epoch 2 (from 80) is unknown to the active
    assert plan(active_history=H1, active_head=100, passive_history=[*H1, (2, 80, "n2")],
                passive_head=85) == SyncPlan(FULL, None, 6)


def test_entries_from_before_any_promotion_cannot_be_matched():
    # a node that ran standalone (epoch 0, no history) holds entries of its own
    assert plan(active_history=[(1, 11, "n1")], passive_history=[], passive_head=5) \
        == SyncPlan(FULL, None, 5)


def test_divergent_with_retention_is_still_full():
    assert plan(active_history=H12, passive_history=[(1, 1, "n1"), (2, 50, "n3")],
                passive_head=50, oldest=1).mode == FULL


def test_helpers_epoch_at_and_identical_histories():
    h = tuple(map(p.HistoryEntry._make, H12))
    assert p.divergence_seq(h, h) is None
    assert [p.epoch_at(h, s) for s in (0, 1, 49, 50, 99)] == [0, 1, 1, 2, 2]


# --- PassiveSession --------------------------------------------------------------------------
# Every call is at T0: progress (Lagging) is reported at most every REPORT_EVERY seconds, so
# none shows here; tests/test_sessions.py covers it and the time-driven parts.

T0 = 0.0


def sent(events):
    """The messages the session asks to send, as the peer would decode them."""
    return [decode(e.frame) for e in events if isinstance(e, Send)]


def in_syncs(events):
    return [e for e in events if isinstance(e, InSync)]


def streaming_session(seq=10, head=12):
    s = PassiveSession(hello(seq=seq), T0)
    s.receive(welcome(head=head), T0)
    return s


def test_nothing_but_welcome_or_refuse_is_accepted_before_welcome():
    s = PassiveSession(hello(), T0)
    assert s.state == CONNECTING
    assert sent(s.start()) == [hello()]
    for msg in (Entries([entry(1)], 1), Heartbeat(1, 1.0), Snapshot(30, "s", 1, SHA),
                Handover(4)):
        with pytest.raises(ProtocolError, match=msg.type):
            s.receive(msg, T0)
    assert s.state == CONNECTING


def test_stream_catch_up_then_realtime_exactly_once():
    s = PassiveSession(hello(seq=10), T0)
    assert s.start() == [Send(encode(hello(seq=10)))]
    assert s.state == CONNECTING
    w = welcome(head=12)
    assert s.receive(w, T0) == [Welcomed(w)]
    assert (s.state, s.mode, s.lag_entries) == (SYNCING, STREAM, 2)

    assert s.receive(Entries([entry(11), entry(12)], head=12), T0) == \
        [Apply([entry(11), entry(12)])]
    assert s.applied(11, T0) == [Send(encode(Ack(11)))]
    assert s.state == SYNCING and s.lag_entries == 1
    assert s.applied(12, T0) == [Send(encode(Ack(12))), InSync(12)]
    assert s.state == IN_SYNC and s.lag_entries == 0

    # later lag going to 0 again does not report again
    events = s.receive(Entries([entry(13)], head=14), T0)
    events += s.receive(Heartbeat(14, 200.0), T0)
    events += s.receive(Entries([entry(14)], head=14), T0)
    events += s.applied(14, T0)
    assert in_syncs(events) == [] and s.state == IN_SYNC
    assert s.status() == {"state": IN_SYNC, "epoch": 1, "seq": 14, "head": 14, "lag": 0,
                          "lag_seconds": 0.0}


def test_realtime_fires_again_after_reconnect():
    """InSync once per connection; a reconnect is a new session built from a new hello."""
    first = streaming_session(seq=10, head=11)
    first.receive(Entries([entry(11)], 11), T0)
    assert in_syncs(first.applied(11, T0)) == [InSync(11)]
    # the connection drops: nothing more comes of this session

    again = PassiveSession(hello(seq=11), T0)
    assert again.state == CONNECTING
    with pytest.raises(ProtocolError):
        again.receive(Entries([entry(12)], 12), T0)  # nothing flows until the welcome
    events = again.receive(welcome(head=13), T0)
    events += again.receive(Entries([entry(12), entry(13)], 13), T0)
    assert in_syncs(again.applied(12, T0)) == [] and in_syncs(events) == []
    assert in_syncs(again.applied(13, T0)) == [InSync(13)] and again.state == IN_SYNC


def test_welcome_at_the_same_head_is_realtime_at_once():
    s = PassiveSession(hello(seq=10), T0)
    w = welcome(head=10)
    assert s.receive(w, T0) == [Welcomed(w), InSync(10)]
    assert s.state == IN_SYNC
    assert s.receive(Heartbeat(10, 5.0), T0) == []  # the event is for one call only


def test_heartbeat_raises_head_and_lag():
    s = streaming_session(seq=10, head=10)
    s.receive(Heartbeat(15, 300.0), T0)
    assert s.lag_entries == 5 and s.lag_seconds is None  # the entries have not arrived yet


@pytest.mark.parametrize("items, words", [
    ([entry(12)], "expected seq 11, got 12"),             # gap
    ([entry(10)], "expected seq 11, got 10"),             # replay / out of order
    ([entry(11), entry(13)], "expected seq 12, got 13"),  # gap inside a batch
    ([entry(11), entry(11)], "expected seq 12, got 11"),
])
def test_contiguity_errors(items, words):
    s = streaming_session(seq=10, head=20)
    with pytest.raises(ProtocolError, match=words):
        s.receive(Entries(items, head=20), T0)
    assert s.received_seq == 10  # a rejected batch is not taken in part


def test_gap_after_an_accepted_batch():
    s = streaming_session(seq=10, head=20)
    s.receive(Entries([entry(11), entry(12)], 20), T0)
    with pytest.raises(ProtocolError, match="expected seq 13, got 14"):
        s.receive(decode(encode(Entries([entry(14)], 20))), T0)


def test_epoch_changes_only_at_promote_markers():
    s = streaming_session(seq=10, head=20)
    with pytest.raises(ProtocolError, match="without a promote marker"):
        s.receive(Entries([entry(11, epoch=2)], 20), T0)
    with pytest.raises(ProtocolError, match="without a promote marker"):
        s.receive(Entries([entry(11, epoch=0)], 20), T0)  # backwards
    with pytest.raises(ProtocolError, match="promotes to epoch 1"):
        s.receive(Entries([marker(11, 1, "n9")], 20), T0)
    s.receive(Entries([entry(11), marker(12, 2, "n2"), entry(13, epoch=2)], 20), T0)
    s.applied(11, T0)
    assert s.epoch == 1
    s.applied(13, T0)
    assert s.epoch == 2
    with pytest.raises(ProtocolError, match="from epoch 2 to 1"):
        s.receive(Entries([entry(14, epoch=1)], 20), T0)


def test_applied_outside_what_was_received_is_a_driver_bug():
    s = streaming_session(seq=10, head=20)
    s.receive(Entries([entry(11)], 20), T0)
    with pytest.raises(ValueError):
        s.applied(12, T0)
    s.applied(11, T0)
    with pytest.raises(ValueError):
        s.applied(10, T0)


def test_stream_welcome_below_our_head_is_rejected():
    s = PassiveSession(hello(seq=10), T0)
    with pytest.raises(ProtocolError, match="past the active's head 8"):
        s.receive(welcome(head=8), T0)


def test_second_welcome_is_rejected():
    s = streaming_session()
    with pytest.raises(ProtocolError, match="unexpected welcome"):
        s.receive(welcome(), T0)


def test_full_catch_up_with_divergent_entries():
    s = PassiveSession(hello(epoch=2, seq=70, history=((1, 1, "n1"), (2, 50, "n3"))), T0)
    w = welcome(head=60, mode=FULL, divergent=21, history=tuple(H12))
    assert s.receive(w, T0) == [Welcomed(w)]
    assert (s.state, s.divergent, s.head) == (SYNCING, 21, 60)
    with pytest.raises(ProtocolError, match="snapshot"):
        s.receive(Entries([entry(71, epoch=2)], 71), T0)
    # the active moved on while the snapshot was taken: no realtime before it is in
    assert s.receive(Heartbeat(64, 10.0), T0) == []
    assert s.state == SYNCING

    snap = Snapshot(62, "snap-62", 4096, SHA)
    assert s.receive(snap, T0) == [FetchSnapshot(snap)]
    with pytest.raises(ProtocolError, match="unexpected snapshot"):
        s.receive(snap, T0)
    with pytest.raises(ValueError):
        s.snapshot_installed(61, T0)
    assert s.snapshot_installed(62, T0) == [Send(encode(SnapshotDone(62)))]
    assert (s.applied_seq, s.epoch, s.state, s.lag_entries) == (62, 2, SYNCING, 2)
    s.receive(Entries([entry(63, epoch=2)], head=64), T0)
    with pytest.raises(ProtocolError, match="expected seq 64, got 63"):
        s.receive(Entries([entry(63, epoch=2)], head=64), T0)
    assert in_syncs(s.applied(63, T0)) == []
    s.receive(Entries([entry(64, epoch=2)], head=64), T0)
    assert in_syncs(s.applied(64, T0)) == [InSync(64)] and s.state == IN_SYNC


def test_snapshot_at_the_head_reaches_realtime_on_install():
    s = PassiveSession(hello(epoch=0, seq=0, history=()), T0)
    s.receive(welcome(head=30, mode=FULL), T0)
    s.receive(Snapshot(30, "s", 1, SHA), T0)
    assert s.snapshot_installed(30, T0) == [Send(encode(SnapshotDone(30))), InSync(30)]
    assert s.state == IN_SYNC


def test_snapshot_in_stream_mode_is_unexpected():
    s = streaming_session()
    with pytest.raises(ProtocolError, match="unexpected snapshot"):
        s.receive(Snapshot(30, "s", 1, SHA), T0)


def test_lag_seconds_is_the_age_of_the_oldest_unapplied_entry_on_the_actives_clock():
    s = streaming_session(seq=10, head=10)
    s.receive(Entries([entry(11, time=1000.0), entry(12, time=1003.0)], head=12), T0)
    assert s.lag_entries == 2 and s.lag_seconds == 3.0
    s.receive(Heartbeat(12, 1010.0), T0)
    assert s.lag_seconds == 10.0
    s.applied(11, T0)
    assert s.lag_seconds == 7.0
    s.applied(12, T0)
    assert s.lag_seconds == 0.0


# --- ActiveTracker ---------------------------------------------------------------------------

def test_add_states_and_snapshot():
    t = ActiveTracker(head=10)
    assert t.add("n2", "198.18.0.12", 11) == IN_SYNC
    assert t.add("n3", "198.18.0.13", 5) == SYNCING
    assert t.add("n4", "198.18.0.14", 1) == SYNCING  # full catch-up: holds nothing
    assert "n2" in t and "n9" not in t
    assert t.snapshot() == [
        {"id": "n2", "address": "198.18.0.12", "state": IN_SYNC, "electable": True, "lag": 0},
        {"id": "n3", "address": "198.18.0.13", "state": SYNCING, "electable": False, "lag": 6},
        {"id": "n4", "address": "198.18.0.14", "state": SYNCING, "electable": False, "lag": 10},
    ]
    with pytest.raises(ValueError):
        t.add("n2", "x", 11)
    with pytest.raises(ValueError):
        t.add("n5", "x", 12)  # claims entries the active does not have


def test_group_commit_one_ack_releases_every_write_at_or_below_it():
    t = ActiveTracker(head=10)
    t.add("n2", "a", 11)
    for seq in (11, 12, 13):
        t.head_advanced(seq, now=1.0)
        t.on_sent("n2", seq, now=1.0)
    waiting = [11, 12, 13]
    assert all(t.must_wait_for(s) == {"n2"} for s in waiting)
    t.on_ack("n2", 12, now=1.1)
    assert [s for s in waiting if not t.must_wait_for(s)] == [11, 12]
    assert t.released_through() == 12
    assert t.on_ack("n2", 13, now=1.2) is False  # already In-Sync: not a (re)join
    assert [s for s in waiting if t.must_wait_for(s)] == []
    assert t.released_through() == 13
    assert t.must_wait_for(10) == set()  # older writes never wait


def test_syncing_passives_hold_nothing_back():
    t = ActiveTracker(head=10)
    t.add("n3", "a", 3)
    t.head_advanced(11, now=0.0)
    assert t.must_wait_for(11) == set()
    assert t.released_through() is None


def test_several_passives_each_must_ack():
    t = ActiveTracker(head=5)
    t.add("n2", "a", 6)
    t.add("n3", "b", 6)
    t.add("n4", "c", 2)  # catching up
    t.head_advanced(8, now=0.0)
    assert t.must_wait_for(7) == {"n2", "n3"}
    t.on_ack("n3", 8, now=0.1)
    assert t.must_wait_for(7) == {"n2"} and t.must_wait_for(8) == {"n2"}
    t.on_ack("n2", 7, now=0.1)
    assert t.must_wait_for(7) == set() and t.must_wait_for(8) == {"n2"}
    assert t.released_through() == 7
    # the catching-up passive joins when it acks the head, and then counts
    assert t.on_ack("n4", 7, now=0.2) is False
    assert t.on_ack("n4", 8, now=0.3) is True
    t.head_advanced(9, now=0.4)
    assert t.must_wait_for(9) == {"n2", "n3", "n4"}
    t.remove("n2")
    t.remove("n2")  # idempotent
    assert t.must_wait_for(9) == {"n3", "n4"}


def test_sync_timeout_drops_to_syncing_and_ack_of_head_rejoins():
    t = ActiveTracker(head=10)
    t.add("n2", "a", 11)
    t.add("n3", "b", 11)
    t.head_advanced(11, now=100.0)
    t.on_sent("n2", 11, now=100.0)
    t.on_sent("n3", 11, now=100.0)
    t.on_ack("n3", 11, now=100.1)
    assert t.expire(now=104.0, sync_timeout=5.0) == []
    assert t.expire(now=105.0, sync_timeout=5.0) == []  # "older than", not "as old as"
    assert t.expire(now=105.5, sync_timeout=5.0) == ["n2"]
    assert t.expire(now=106.0, sync_timeout=5.0) == []  # reported once
    assert t.snapshot()[0]["state"] == SYNCING and t.snapshot()[0]["electable"] is False
    assert t.must_wait_for(11) == set()  # writes no longer wait for n2

    t.head_advanced(12, now=106.0)
    assert t.must_wait_for(12) == {"n3"}
    assert t.on_ack("n2", 11, now=107.0) is False  # behind the head: still Syncing
    assert t.on_ack("n2", 12, now=107.5) is True   # acked the head: In-Sync again
    t.head_advanced(13, now=108.0)
    assert t.must_wait_for(13) == {"n2", "n3"}


def test_timeout_counts_from_the_oldest_unacked_send_after_a_partial_ack():
    t = ActiveTracker(head=0)
    t.add("n2", "a", 1)
    t.head_advanced(1, now=0.0)
    t.on_sent("n2", 1, now=0.0)
    t.head_advanced(2, now=4.0)
    t.on_sent("n2", 2, now=4.0)
    t.on_ack("n2", 1, now=4.5)
    assert t.expire(now=6.0, sync_timeout=5.0) == []     # seq 2 is 2 s old
    assert t.expire(now=9.5, sync_timeout=5.0) == ["n2"]


def test_timeout_also_catches_a_sender_that_never_sent():
    # the connection is stuck: the entry was committed but on_sent was never reached
    t = ActiveTracker(head=0)
    t.add("n2", "a", 1)
    t.head_advanced(1, now=0.0)
    assert t.expire(now=10.0, sync_timeout=5.0) == ["n2"]


def test_idle_in_sync_passive_never_expires():
    t = ActiveTracker(head=3)
    t.add("n2", "a", 4)
    assert t.expire(now=1e9, sync_timeout=5.0) == []


def test_commit_times_are_forgotten_once_acked():
    t = ActiveTracker(head=0)
    t.add("n2", "a", 1)
    for s in range(1, 101):
        t.head_advanced(s, now=float(s))
        t.on_sent("n2", s, now=float(s))
        t.on_ack("n2", s, now=float(s))
    assert len(t._commits) == 0 and len(t._passives["n2"].sends) == 0
    t.remove("n2")
    t.head_advanced(101, now=101.0)
    assert len(t._commits) == 0  # nobody to wait for: nothing recorded


def test_bad_acks_and_driver_mistakes():
    t = ActiveTracker(head=10)
    t.add("n2", "a", 6)
    with pytest.raises(ProtocolError, match="ack 11 outside 5..10"):
        t.on_ack("n2", 11, now=0.0)
    t.on_ack("n2", 8, now=0.0)
    with pytest.raises(ProtocolError, match="ack 7 outside 8..10"):
        t.on_ack("n2", 7, now=0.0)
    t.on_ack("n2", 8, now=0.0)  # a repeated ack is harmless
    with pytest.raises(ValueError):
        t.head_advanced(9, now=0.0)
    with pytest.raises(ValueError):
        t.on_sent("n2", 11, now=0.0)
    with pytest.raises(KeyError):
        t.on_ack("n9", 1, now=0.0)


def test_snapshot_done_counts_as_an_ack():
    t = ActiveTracker(head=40)
    t.add("n2", "a", 1)
    assert t.snapshot()[0]["lag"] == 40
    t.head_advanced(45, now=0.0)
    t.on_ack("n2", 38, now=1.0)  # snapshot taken at 38
    assert t.snapshot()[0] == {"id": "n2", "address": "a", "state": SYNCING,
                               "electable": False, "lag": 7}
    assert t.on_ack("n2", 45, now=2.0) is True


# --- both ends together ----------------------------------------------------------------------

def test_end_to_end_exchange_through_the_wire_format():
    """The passive session and the active's checks talking through the wire format only."""
    active_log = [marker(1, 1, "n1")] + [entry(s, time=float(s)) for s in range(2, 8)]
    tracker = ActiveTracker(head=7)
    session = PassiveSession(hello(seq=3, history=((1, 1, "n1"),)), T0)
    passive_applied = [marker(1, 1, "n1"), entry(2, time=2.0), entry(3, time=3.0)]

    [h] = sent(session.start())
    assert check_hello(h, **CLUSTER, drp_id="n1") is None
    sp = plan_sync(active_history=[(1, 1, "n1")], active_head=7, active_oldest_retained_seq=1,
                   passive_history=h.history, passive_head=h.seq)
    assert sp == SyncPlan(STREAM, 4, 0)
    tracker.add(h.drp_id, "198.18.0.12", sp.start_seq)
    session.receive(decode(encode(Welcome("n1", 1, 7, ((1, 1, "n1"),), sp.mode, 0, 8091))), T0)

    frame = entries_frame([json.dumps(e) for e in active_log[sp.start_seq - 1:]], 7)
    tracker.on_sent("n2", 7, now=10.0)
    [apply] = session.receive(decode(frame), T0)
    passive_applied.extend(apply.entries)
    events = session.applied(apply.entries[-1]["seq"], T0)
    [ack] = sent(events)
    assert in_syncs(events) == [InSync(7)] and passive_applied == active_log
    assert tracker.on_ack("n2", ack.seq, now=10.1) is True
    assert tracker.snapshot()[0]["electable"] is True


def test_passive_joins_in_sync_while_the_head_keeps_moving():
    """Under steady load the head moves on before any ack arrives; a passive that was sent
    everything up to the head then holds writes back, and is In-Sync once it acks that."""
    t = ActiveTracker(head=10)
    t.add("b", "198.18.0.12", 1)
    t.on_sent("b", 5, 0.0)  # not caught up: nothing changes
    assert t.must_wait_for(11) == set()
    t.on_sent("b", 10, 0.1)  # everything up to the head is on its way
    t.head_advanced(11, 0.2)
    assert t.must_wait_for(11) == {"b"}  # new writes now wait for it
    assert t.snapshot()[0]["state"] == "Syncing" and not t.snapshot()[0]["electable"]
    assert t.on_ack("b", 10, 0.3) is True  # not the head (11), but its join point
    assert t.snapshot()[0]["state"] == "In-Sync" and t.snapshot()[0]["electable"]
    assert t.must_wait_for(11) == {"b"}
    t.on_sent("b", 11, 0.4)
    t.on_ack("b", 11, 0.5)
    assert t.must_wait_for(11) == set()


def test_joining_passive_that_stalls_is_dropped():
    t = ActiveTracker(head=3)
    t.add("b", "x", 1)
    t.on_sent("b", 3, 0.0)
    t.head_advanced(4, 0.0)
    assert t.expire(10.0, 5.0) == ["b"]
    assert t.must_wait_for(4) == set()


def test_entries_frame_matches_encode():
    items = [entry(1), entry(2, body={"Name": "x", "Params": {"a": [1, None]}}),
             entry(3, kind="joblog", data="AGFi")]
    frame = entries_frame([json.dumps(i) for i in items], 7)
    assert json.loads(frame) == json.loads(encode(Entries(items, 7)))
    assert decode(frame) == Entries(items, 7)


def test_a_syncing_passive_joins_only_while_it_can_ack_promptly():
    t = ActiveTracker(head=10, prompt=1.0)
    t.add("b", "198.18.0.12", 1)
    t.on_sent("b", 5, 0.0, slow=True)  # a batch that puts a file: fetched before it is acked
    t.on_sent("b", 10, 0.1)  # caught up as of this send, but a file is still to come
    t.head_advanced(11, 0.2)
    assert t.must_wait_for(11) == set()  # so writes do not wait for it
    t.on_ack("b", 5, 3.0)  # the file came
    t.on_sent("b", 11, 3.1)  # seq 10, sent at 0.1, is unacked for 3 s: not prompt yet
    t.head_advanced(12, 3.1)
    assert t.must_wait_for(12) == set()
    t.on_ack("b", 11, 3.2)
    t.on_sent("b", 12, 3.3)  # everything it was sent came back promptly: it joins
    assert t.must_wait_for(12) == {"b"} and t.snapshot()[0]["state"] == SYNCING
    assert t.on_ack("b", 12, 3.4) is True and t.snapshot()[0]["electable"]
