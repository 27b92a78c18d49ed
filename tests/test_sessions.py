"""The two sans-IO replication sessions, fed messages and times directly: no trio, no sockets,
no sleeping. drp/ha/passive_session.py (the passive's end), drp/ha/active_session.py (the
active's end, one per passive, with a real ActiveTracker), and both driven against each other
through the wire format."""
import base64
import json
from collections import deque

import pytest

from drp.ha import active_session
from drp.ha.active_session import STREAMING, ActiveSession, Local, Position
from drp.ha.messages import (FULL, IN_SYNC, PROTOCOL_VERSION, STREAM, SYNCING, Ack,
                             Entries, Handover, Heartbeat, Hello, ProtocolError, Refuse,
                             Snapshot, SnapshotDone, Welcome, decode, encode)
from drp.ha.passive_session import PassiveSession
from drp.ha.protocol import JOINING, ActiveTracker, busy_refusal, check_hello
from drp.ha.session_events import (Announced, Apply, FetchSnapshot, HandedOver, InSync, Lagging,
                                   Refused, Send, Stalled, Streaming, TakeSnapshot)
from drp.store.wire import entries_frame, entry_text

SHA = "ab" * 32
H1 = ((1, 1, "n1"),)


def entry(seq, epoch=1, time=100.0, kind="machines", key="m1", action="update", **extra):
    return {"seq": seq, "epoch": epoch, "time": time, "kind": kind, "key": key,
            "action": action, "body": {"Name": key}, **extra}


def hello(**kw):
    base = dict(ha_id="cluster-1", drp_id="n2", version="4.14.0", os="linux", arch="amd64",
                epoch=1, seq=10, history=H1, protocol=PROTOCOL_VERSION)
    return Hello(**{**base, **kw})


def welcome(head=10, mode=STREAM, divergent=0, history=H1):
    return Welcome("n1", history[-1][0], head, history, mode, divergent, 8091)


def sent(events):
    """The messages a session asks to send, as the peer decodes them."""
    return [decode(e.frame) for e in events if isinstance(e, Send)]


def others(events):
    return [e for e in events if not isinstance(e, Send)]


# --- PassiveSession --------------------------------------------------------------------------

def syncing(seq=10, head=20, now=0.0, **kw):
    s = PassiveSession(hello(seq=seq), now, **kw)
    s.receive(welcome(head=head), now)
    return s


def test_a_refuse_before_the_welcome_is_refused():
    s = PassiveSession(hello(), 0.0)
    assert s.receive(Refuse("set RS_HA_ID=x", "ha_id"), 0.0) == [Refused("set RS_HA_ID=x",
                                                                           "ha_id")]


def test_a_refuse_after_the_welcome_is_a_protocol_error():
    s = syncing()
    with pytest.raises(ProtocolError, match="refuse"):
        s.receive(Refuse("no", "busy"), 1.0)


def test_lagging_at_most_every_report_every_seconds_while_syncing_and_never_in_sync():
    s = syncing(seq=10, head=20, report_every=5.0)
    assert others(s.receive(Entries([entry(q) for q in range(11, 21)], 20), 1.0)) \
        == [Apply([entry(q) for q in range(11, 21)])]
    assert s.report(1.0) == []
    assert others(s.applied(12, 5.0)) == []  # applying and receiving report nothing
    assert s.report(5.0) == [Lagging(12, 20, 8)]  # the driver's timer asks
    assert s.report(9.9) == []  # 4.9 s since the last report
    s.applied(13, 9.9)
    assert s.receive(Heartbeat(20, 501.0), 10.0) == []
    assert s.report(10.0) == [Lagging(13, 20, 7)]
    assert others(s.applied(20, 30.0)) == [InSync(20)]
    assert s.state == IN_SYNC
    # In-Sync: however far it falls behind and however long it takes, no more progress
    assert s.receive(Heartbeat(30, 600.0), 100.0) == []
    assert s.report(100.0) == [] and s.report(1000.0) == []


def test_no_lagging_while_the_snapshot_is_awaited():
    s = PassiveSession(hello(seq=0, epoch=0, history=()), 0.0, report_every=1.0)
    s.receive(welcome(head=50, mode=FULL), 0.0)
    assert s.receive(Heartbeat(55, 1.0), 100.0) == [] and s.report(100.0) == []
    s.receive(Snapshot(50, "s", 1, SHA), 200.0)
    assert s.report(250.0) == []  # being fetched: the catch-up reports its own progress
    assert s.snapshot_installed(50, 300.0) == [Send(encode(SnapshotDone(50)))]
    assert s.report(300.5) == []  # the report clock restarted at install
    assert s.report(301.0) == [Lagging(50, 55, 5)]


def test_no_deadline_before_the_welcome():
    s = PassiveSession(hello(), 0.0, stall_timeout=10.0)
    assert s.deadline is None and s.tick(1e9) == []
    assert not s.streaming


def test_no_deadline_while_the_snapshot_is_awaited_then_stalled_once_streaming():
    s = PassiveSession(hello(seq=0, epoch=0, history=()), 0.0, stall_timeout=10.0)
    s.receive(welcome(head=50, mode=FULL), 1.0)
    assert s.deadline is None and s.tick(1e9) == [] and not s.streaming
    s.receive(Snapshot(50, "s", 1, SHA), 2.0)
    assert s.deadline is None and s.tick(1e9) == []  # being fetched and installed
    s.snapshot_installed(50, 100.0)
    assert s.streaming and s.deadline == 110.0
    assert s.tick(109.9) == []
    assert s.tick(110.0) == [Stalled("nothing from the active for 10s")]


def test_any_received_message_pushes_the_deadline():
    s = PassiveSession(hello(seq=10), 0.0, stall_timeout=3.0)
    s.receive(welcome(head=12), 1.0)
    assert s.deadline == 4.0
    s.receive(Heartbeat(12, 50.0), 3.5)
    assert s.deadline == 6.5 and s.tick(6.0) == []
    s.receive(Entries([entry(11)], 12), 6.0)
    assert s.deadline == 9.0
    s.applied(11, 8.0)  # the driver waits again from here: applying is not the active's silence
    assert s.deadline == 11.0
    s.receive(Handover(12), 8.5)
    assert s.deadline == 11.5
    assert s.tick(11.4) == [] and s.tick(11.5) == [Stalled("nothing from the active for 3s")]


def test_handed_over_and_has_final():
    s = syncing(seq=10, head=12)
    s.receive(Entries([entry(11), entry(12)], 12), 0.0)
    assert not s.has_final
    assert others(s.applied(12, 0.0)) == [InSync(12)]
    assert not s.has_final  # everything there is, but no handover was announced
    s.receive(Entries([entry(13), entry(14)], 14), 0.0)
    assert s.receive(Handover(14), 0.0) == [HandedOver(14)]
    assert s.final_head == 14 and not s.has_final
    s.applied(13, 0.0)
    assert not s.has_final
    s.applied(14, 0.0)
    assert s.has_final


def test_a_handover_past_what_arrived_raises_the_head():
    s = syncing(seq=10, head=10)
    assert s.receive(Handover(13), 0.0) == [HandedOver(13)]
    assert s.lag_entries == 3 and not s.has_final


def test_apply_carries_data_as_bytes():
    s = syncing(seq=10, head=12)
    job_log = entry(12, kind="joblog", action="append",
                    data=base64.b64encode(b"line 1\n\x00").decode())
    frame = entries_frame([json.dumps(entry(11)), json.dumps(job_log)], 12)
    [apply] = s.receive(decode(frame), 0.0)
    assert apply == Apply([entry(11), {**job_log, "data": b"line 1\n\x00"}])


def test_bad_base64_data_is_a_protocol_error_and_nothing_is_taken():
    s = syncing(seq=10, head=12)
    frame = entries_frame([json.dumps(entry(11)), json.dumps(entry(12, data="no*base64"))], 12)
    with pytest.raises(ProtocolError, match="entry 12 data: not base64"):
        s.receive(decode(frame), 0.0)
    assert s.received_seq == 10
    s.receive(Entries([entry(11)], 12), 0.0)  # the stream goes on from where it was


# The follower before the sessions (git HEAD drp/ha/follower.py _session, _full,
# _stream_loop) logged these texts ("replication from <url>: <text>; reconnecting in …").


def awaiting_snapshot():
    s = PassiveSession(hello(seq=0, epoch=0, history=()), 0.0)
    s.receive(welcome(head=50, mode=FULL), 0.0)
    return s



@pytest.mark.parametrize("session, msg, text", [
    (lambda: PassiveSession(hello(), 0.0), Entries([entry(11)], 11),
     "expected welcome, got entries"),
    (lambda: PassiveSession(hello(), 0.0), Heartbeat(11, 1.0), "expected welcome, got heartbeat"),
    (awaiting_snapshot, Entries([entry(1)], 1), "expected snapshot, got entries"),
    (syncing, welcome(), "unexpected welcome while streaming"),
    (syncing, Snapshot(30, "s", 1, SHA), "unexpected snapshot while streaming"),
    (syncing, Refuse("x", "busy"), "unexpected refuse while streaming"),
    (syncing, Ack(3), "unexpected ack while streaming"),
], ids=["before-welcome", "heartbeat-before-welcome", "awaiting-snapshot", "welcome",
        "snapshot", "refuse", "ack"])
def test_unexpected_messages_keep_the_followers_text(session, msg, text):
    s = session()
    with pytest.raises(ProtocolError) as err:
        s.receive(msg, 1.0)
    assert str(err.value) == text


# --- ActiveSession ---------------------------------------------------------------------------

LOCAL = Local(ha_id="cluster-1", drp_id="n1", os="linux", arch="amd64", version="4.14.0",
              static_port=8091)
AT_10 = Position(history=H1, head=10, oldest=1)
ADDRESS = "198.18.0.12"


def fresh(head=10):
    tracker = ActiveTracker(head=head)
    return ActiveSession(LOCAL, tracker, ADDRESS), tracker


def streaming(seq=7, head=10):
    a, tracker = fresh(head)
    a.hello(hello(seq=seq), Position(H1, head, 1), 0.0)
    return a, tracker


def wire_batch(first, last):
    return [(q, json.dumps(entry(q))) for q in range(first, last + 1)]


CLUSTER = dict(ha_id="cluster-1", os="linux", arch="amd64", version="4.14.0", drp_id="n1")


@pytest.mark.parametrize("changes, code", [
    (dict(ha_id="other"), "ha_id"),
    (dict(os="darwin"), "platform"),
    (dict(arch="arm64"), "platform"),
    (dict(version="5.0.0"), "version"),
    (dict(protocol=PROTOCOL_VERSION + 1), "version"),
    (dict(drp_id="n1"), "drp_id"),
])
def test_hello_refusals_send_the_refuse_and_leave_the_tracker_alone(changes, code):
    a, tracker = fresh()
    h = hello(**changes)
    refusal = check_hello(h, **CLUSTER)
    assert refusal.code == code
    assert a.hello(h, AT_10, 0.0) == [Send(encode(refusal)), Refused(refusal.reason, code)]
    assert tracker.snapshot() == [] and not a.tracked
    with pytest.raises(ProtocolError, match="unexpected hello in state closed"):
        a.hello(hello(), AT_10, 0.0)


def test_a_passive_already_tracked_is_refused_busy():
    a, tracker = fresh()
    tracker.add("n2", "198.18.0.99", 11)
    before = tracker.snapshot()
    refusal = busy_refusal("n2")
    assert a.hello(hello(), AT_10, 0.0) == [Send(encode(refusal)),
                                             Refused(refusal.reason, "busy")]
    assert tracker.snapshot() == before and not a.tracked


def test_a_hello_during_a_handover_is_refused():
    a, tracker = fresh()
    a.handover_begun(10)
    [refuse] = sent(a.hello(hello(), AT_10, 0.0))
    assert refuse.code == "not_active" and "n1 is handing over" in refuse.reason
    assert tracker.snapshot() == []


def test_the_first_message_must_be_a_hello():
    a, _ = fresh()
    with pytest.raises(ProtocolError, match="expected hello, got ack"):
        a.hello(Ack(3), AT_10, 0.0)


def test_stream_plan_welcomes_and_tracks_the_passive():
    a, tracker = fresh()
    events = a.hello(hello(seq=7), AT_10, 0.0)
    assert events == [Send(encode(Welcome("n1", 1, 10, H1, STREAM, 0, 8091))),
                      Streaming(8, STREAM)]
    assert "n2" in tracker and a.tracked and a.passive_id == "n2"
    assert (a.state, a.sent_seq) == (STREAMING, 7)
    assert tracker.snapshot() == [{"id": "n2", "address": ADDRESS, "state": SYNCING,
                                   "electable": False, "lag": 3}]


def test_a_passive_at_the_head_is_in_sync_at_once():
    a, tracker = fresh()
    assert others(a.hello(hello(seq=10), AT_10, 0.0)) == [Streaming(11, STREAM)]
    assert tracker.snapshot()[0]["electable"] is True


def full_catch_up(a, tracker, snapshot_seq=10, *, divergent=4):
    """From TakeSnapshot to Streaming; the snapshot is taken at snapshot_seq."""
    assert a.snapshot_taken(snapshot_seq, "snap", 4096, SHA, 1.0) == \
        [Send(encode(Snapshot(snapshot_seq, "snap", 4096, SHA)))]
    assert a.tracked and tracker.snapshot()[0]["state"] == SYNCING
    with pytest.raises(ProtocolError, match="no snapshot is due"):
        a.snapshot_taken(snapshot_seq, "again", 1, SHA, 1.0)
    with pytest.raises(ProtocolError, match=f"expected snapshot_done {snapshot_seq}"):
        a.receive(SnapshotDone(snapshot_seq - 1), 2.0)
    return a.receive(SnapshotDone(snapshot_seq), 2.0)


def test_divergent_passive_gets_a_snapshot_then_the_stream():
    a, tracker = fresh()
    h = hello(epoch=2, seq=12, history=((1, 1, "n1"), (2, 9, "n3")))  # its own epoch 2 at 9
    assert a.hello(h, AT_10, 0.0) == [Send(encode(Welcome("n1", 1, 10, H1, FULL, 4, 8091))),
                                      TakeSnapshot(4)]
    assert not a.tracked and "n2" not in tracker
    assert full_catch_up(a, tracker, 10) == [Streaming(11, FULL)]
    assert (a.state, a.sent_seq) == (STREAMING, 10)
    assert tracker.snapshot()[0]["electable"] is True  # the snapshot was the head


def test_behind_retention_gets_a_snapshot_and_entries_after_it():
    a, tracker = fresh()
    events = a.hello(hello(seq=3), Position(H1, 10, 6), 0.0)
    assert events == [Send(encode(Welcome("n1", 1, 10, H1, FULL, 0, 8091))), TakeSnapshot(0)]
    tracker.head_advanced(12, 0.5)  # writes go on while the snapshot is taken
    assert full_catch_up(a, tracker, 11) == [Streaming(12, FULL)]
    assert tracker.snapshot()[0]["state"] == SYNCING  # 12 is still to come
    [frame] = a.entries(wire_batch(12, 12), 12, 3.0)
    assert decode(frame.frame) == Entries([entry(12)], 12)


def test_entries_after_a_gap_say_the_log_was_trimmed():
    a, _ = streaming(seq=7)
    with pytest.raises(ProtocolError, match=r"needs seq 8, .*--ha-log-retention"):
        a.entries(wire_batch(9, 10), 10, 0.0)
    assert a.sent_seq == 7


def test_entries_are_split_by_batch_bytes(monkeypatch):
    a, tracker = streaming(seq=7, head=10)
    batch = wire_batch(8, 10)
    monkeypatch.setattr(active_session, "BATCH_BYTES", len(batch[0][1]) * 2)
    [first] = a.entries(batch, 10, 1.0)
    assert decode(first.frame) == Entries([entry(8), entry(9)], 10)
    assert a.sent_seq == 9
    assert tracker.snapshot()[0]["state"] == SYNCING and tracker._passives["n2"].state \
        == SYNCING  # not all sent yet
    [rest] = a.entries(batch[2:], 10, 1.0)
    assert decode(rest.frame) == Entries([entry(10)], 10)
    assert a.sent_seq == 10


def test_an_entry_bigger_than_batch_bytes_still_goes_alone(monkeypatch):
    a, _ = streaming(seq=7, head=10)
    monkeypatch.setattr(active_session, "BATCH_BYTES", 10)
    [frame] = a.entries(wire_batch(8, 10), 10, 1.0)
    assert decode(frame.frame).items == [entry(8)] and a.sent_seq == 8


def test_sends_reach_the_tracker_joining_then_in_sync_on_the_ack():
    a, tracker = streaming(seq=7, head=10)
    a.entries(wire_batch(8, 10), 10, 1.0)
    assert tracker._passives["n2"].state == JOINING  # sent everything up to the head
    assert tracker.snapshot()[0]["electable"] is False
    tracker.head_advanced(11, 1.5)
    assert tracker.must_wait_for(11) == {"n2"}  # joining: new writes wait for it
    assert a.receive(Ack(9), 2.0) == []
    assert a.receive(Ack(10), 2.1) == [InSync(10)]
    assert tracker.snapshot()[0]["electable"] is True
    assert a.receive(Ack(10), 2.2) == []  # a repeated ack is no news


def test_idle_heartbeats_only_while_streaming():
    a, tracker = fresh()
    assert a.idle(5.0, 1712.5) == []
    a.hello(hello(seq=10), AT_10, 0.0)
    assert sent(a.idle(5.0, 1712.5)) == [Heartbeat(10, 1712.5)]
    tracker.head_advanced(12, 6.0)
    assert sent(a.idle(7.0, 1713.0)) == [Heartbeat(12, 1713.0)]


def test_handover_is_announced_once_and_only_when_everything_was_sent():
    a, tracker = streaming(seq=7, head=10)
    assert a.nothing_to_send() == []  # no handover under way
    a.handover_begun(10)
    assert a.nothing_to_send() == []  # 8..10 still to send
    a.entries(wire_batch(8, 9), 10, 1.0)
    assert a.nothing_to_send() == []
    a.entries(wire_batch(10, 10), 10, 1.0)
    assert a.nothing_to_send() == [Send(encode(Handover(10))), Announced(10)]
    assert a.announced
    assert a.nothing_to_send() == []  # once


def test_no_announcement_before_streaming():
    a, tracker = fresh()
    a.hello(hello(seq=3), Position(H1, 10, 6), 0.0)  # a full catch-up
    a.handover_begun(10)
    assert a.nothing_to_send() == []


def test_an_ack_before_streaming_is_a_protocol_error():
    a, _ = fresh()
    with pytest.raises(ProtocolError, match="expected hello, got ack"):
        a.receive(Ack(1), 0.0)
    a.hello(hello(seq=3), Position(H1, 10, 6), 0.0)  # awaiting the snapshot
    with pytest.raises(ProtocolError, match="expected snapshot_done"):
        a.receive(SnapshotDone(10), 0.0)  # none was sent
    with pytest.raises(ProtocolError, match="expected snapshot_done None, got Ack"):
        a.receive(Ack(10), 0.0)


@pytest.mark.parametrize("msg", [hello(), Heartbeat(3, 1.0), Refuse("x", "busy")],
                         ids=lambda m: m.type)
def test_an_unexpected_message_while_streaming_is_a_protocol_error(msg):
    a, _ = streaming(seq=7)
    with pytest.raises(ProtocolError, match=f"^expected ack, got {msg.type}$"):
        a.receive(msg, 0.0)


# The replication hub before the sessions (git HEAD drp/ha/sender.py _receive_acks and
# _send_snapshot) logged these texts ("replication session with <address> ended: <text>").



def test_a_snapshot_done_while_streaming_keeps_the_hubs_text():
    a, _ = streaming(seq=7)
    with pytest.raises(ProtocolError, match="^expected ack, got snapshot_done$"):
        a.receive(SnapshotDone(10), 0.0)



def test_an_ack_instead_of_the_snapshot_done_keeps_the_hubs_text():
    a, _ = fresh()
    a.hello(hello(seq=3), Position(H1, 10, 6), 0.0)
    a.snapshot_taken(10, "snap", 4096, SHA, 1.0)
    with pytest.raises(ProtocolError) as err:
        a.receive(Ack(10), 2.0)
    assert str(err.value) == "expected snapshot_done 10, got Ack(seq=10)"


def test_an_ack_of_what_the_active_does_not_have_is_a_protocol_error():
    a, _ = streaming(seq=7, head=10)
    with pytest.raises(ProtocolError, match="ack 11 outside 7..10"):
        a.receive(Ack(11), 0.0)


# --- both ends together ----------------------------------------------------------------------

def row(seq, epoch, *, kind="machines", key=None, action="update", body=None, data=None):
    """A change-log row as the store holds it (body as JSON text)."""
    body = json.dumps({"Name": key or f"m{seq}"} if body is None else body)
    return (seq, epoch, 1000.0 + seq, kind, key or f"m{seq}", action, body, data)


def promote(seq, epoch, drp_id):
    return row(seq, epoch, kind="ha", key=drp_id, action="promote",
               body={"epoch": epoch, "drp_id": drp_id})


def applied_form(r):
    """What the passive's store is given for a row: the wire entry, data as bytes."""
    e = json.loads(entry_text(r))
    return {**e, "data": r[7]} if r[7] is not None else e


class Link:
    """An active and a passive session joined by a wire: every frame goes through decode.
    pump() streams the active's log and carries messages both ways until both are quiet; the
    passive "installs" a snapshot by taking the active's rows up to its seq."""

    def __init__(self, active: ActiveSession, passive: PassiveSession, log: list):
        self.active, self.passive, self.log = active, passive, log
        self.to_active, self.to_passive = deque(), deque()
        self.applied: list[dict] = []  # the passive's store
        self.active_events, self.passive_events = [], []

    def commit(self, r):
        self.log.append(r)
        self.active.tracker.head_advanced(r[0], 0.0)

    def from_active(self, events):
        self.active_events += others(events)
        self.to_passive.extend(sent(events))

    def from_passive(self, events, now):
        self.passive_events += others(events)
        self.to_active.extend(sent(events))
        for ev in events:
            if isinstance(ev, Apply):
                self.applied += ev.entries
                self.from_passive(self.passive.applied(ev.entries[-1]["seq"], now), now)
            elif isinstance(ev, FetchSnapshot):
                seq = ev.snapshot.seq
                self.applied = [applied_form(r) for r in self.log if r[0] <= seq]
                self.from_passive(self.passive.snapshot_installed(seq, now), now)

    def pump(self, now=0.0):
        a = self.active
        while True:
            if self.to_passive:
                self.from_passive(self.passive.receive(self.to_passive.popleft(), now), now)
            elif self.to_active:
                self.from_active(a.receive(self.to_active.popleft(), now))
            elif a.state == STREAMING and self.log[-1][0] > a.sent_seq:
                batch = [(r[0], entry_text(r)) for r in self.log if r[0] > a.sent_seq]
                self.from_active(a.entries(batch, a.tracker.head, now))
            elif a.state == STREAMING and (events := a.nothing_to_send()):
                self.from_active(events)
            else:
                return


def connect(log, passive_hello, passive_log):
    """A Link after the hello: the active answered, the answer not yet delivered."""
    tracker = ActiveTracker(head=log[-1][0])
    link = Link(ActiveSession(LOCAL, tracker, ADDRESS), PassiveSession(passive_hello, 0.0), log)
    link.applied = [applied_form(r) for r in passive_log]
    [h] = sent(link.passive.start())
    history = tuple(r[1:2] + (r[0], r[4]) for r in log if r[3] == "ha")  # (epoch, start, id)
    link.from_active(link.active.hello(h, Position(history, log[-1][0], 1), 0.0))
    return link


# n0 was active for epoch 1; n1 (LOCAL) promoted itself at seq 6 and is active now
ACTIVE_LOG = [promote(1, 1, "n0"), row(2, 1), row(3, 1), row(4, 1, kind="joblog",
              key="j1", action="append", data=b"boot ok\n"), row(5, 1),
              promote(6, 2, "n1"), row(7, 2), row(8, 2), row(9, 2)]


def test_stream_catch_up_to_realtime_and_a_handover():
    link = connect(list(ACTIVE_LOG), hello(epoch=1, seq=3, history=((1, 1, "n0"),)),
                   ACTIVE_LOG[:3])
    assert link.active_events == [Streaming(4, STREAM)]
    link.pump()
    p, tracker = link.passive, link.active.tracker
    assert link.applied == [applied_form(r) for r in ACTIVE_LOG]
    assert link.applied[3]["data"] == b"boot ok\n"
    assert (p.state, p.epoch, p.applied_seq) == (IN_SYNC, 2, 9)
    assert [e for e in link.passive_events if isinstance(e, InSync)] == [InSync(9)]
    assert link.active_events[-1] == InSync(9)
    assert tracker.snapshot() == [{"id": "n2", "address": ADDRESS, "state": IN_SYNC,
                                   "electable": True, "lag": 0}]

    # writes go on, each released by the passive's ack; then a planned switch
    link.commit(row(10, 2))
    assert tracker.must_wait_for(10) == {"n2"}
    link.pump()
    assert tracker.must_wait_for(10) == set() and tracker.released_through() == 10
    link.commit(row(11, 2))
    link.active.handover_begun(11)
    link.pump()
    assert link.active_events[-1] == Announced(11)
    assert HandedOver(11) in link.passive_events and p.has_final
    assert link.applied[-1] == applied_form(row(11, 2)) and len(link.applied) == 11
    assert [e for e in link.passive_events if isinstance(e, InSync)] == [InSync(9)]  # once


def test_full_catch_up_of_a_divergent_passive_to_realtime():
    # n2 also promoted itself at seq 6 (split brain) and wrote 6..8 there: all divergent
    mine = ACTIVE_LOG[:5] + [promote(6, 2, "n2"), row(7, 2, key="x"), row(8, 2, key="y")]
    link = connect(list(ACTIVE_LOG), hello(epoch=2, seq=8,
                                           history=((1, 1, "n0"), (2, 6, "n2"))), mine)
    assert link.active_events == [TakeSnapshot(3)]
    link.commit(row(10, 2))  # written while the snapshot is taken
    link.from_active(link.active.snapshot_taken(10, "snap-10", 4096, SHA, 0.0))
    link.commit(row(11, 2))
    link.commit(row(12, 2))
    link.pump()
    p, tracker = link.passive, link.active.tracker
    assert p.divergent == 3 and p.mode == FULL
    assert link.applied == [applied_form(r) for r in link.log]
    assert [e["seq"] for e in link.applied] == list(range(1, 13))
    assert (p.state, p.epoch, p.applied_seq, p.lag_entries) == (IN_SYNC, 2, 12, 0)
    assert [e for e in link.passive_events if isinstance(e, InSync)] == [InSync(10)]
    assert Streaming(11, FULL) in link.active_events and link.active_events[-1] == InSync(12)
    assert tracker.snapshot() == [{"id": "n2", "address": ADDRESS, "state": IN_SYNC,
                                   "electable": True, "lag": 0}]
