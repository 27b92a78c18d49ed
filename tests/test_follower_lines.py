"""How the follower words the end of a connection, and the backoff that follows (issue 19:
an expected close is INFO in words, a server that answers is retried soon)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import trio
import trio_websocket

from drp.ha.follower import Follower
from drp.ha.passive_session import PassiveSession
from drp.ha.messages import Handover, Hello, Welcome

URL = "https://198.18.0.100:8092/"


def follower(session=None, welcomed=False) -> Follower:
    f = Follower.__new__(Follower)  # only what _ended reads
    f.cfg = SimpleNamespace(join_url=URL)
    f.session, f.welcomed = session, welcomed
    return f


def handed_over() -> PassiveSession:
    s = PassiveSession(Hello("c", "n2", "4.14.0", "linux", "amd64", 1, 5, ((1, 1, "n1"),)), 0.0)
    s.receive(Welcome("n1", 1, 5, ((1, 1, "n1"),), "stream", 0, 8091), 0.0)
    s.receive(Handover(5), 0.0)
    return s


def closed(code: int) -> trio_websocket.ConnectionClosed:
    return trio_websocket.ConnectionClosed(trio_websocket.CloseReason(code, None))


def test_a_close_after_a_handover_is_info_and_reconnects_at_once(caplog):
    caplog.set_level(logging.INFO, logger="drp.ha.passive")
    assert follower(handed_over(), welcomed=True)._ended(closed(1000), 3.2) == 0.2
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == ("the active handed over at seq 5 and closed the stream; "
                                   f"following whoever takes {URL} next")


def test_an_orderly_close_is_info_a_broken_one_a_warning(caplog):
    caplog.set_level(logging.INFO, logger="drp.ha.passive")
    assert follower(welcomed=True)._ended(closed(1000), 0.4) == 0.4
    assert follower(welcomed=True)._ended(closed(1006), 0.4) == 0.4
    assert follower(welcomed=True)._ended(trio.EndOfChannel(), 0.4) == 0.4
    levels = [(r.levelno, r.getMessage().split(" (")[0].split(":")[0]) for r in caplog.records]
    assert levels == [(logging.INFO, "the active closed the replication stream"),
                      (logging.WARNING, "replication from https"),
                      (logging.INFO, "the active closed the replication stream")]


def test_a_server_that_answers_the_handshake_is_retried_soon(caplog):
    rejected = trio_websocket.ConnectionRejected(503, (), b"starting")
    assert follower()._ended(rejected, 5.0) == 0.5  # the active is (coming) up
    assert follower()._ended(OSError(111, "Connection refused"), 5.0) == 5.0  # nobody there
    assert "rejected with HTTP 503: starting" in caplog.records[0].getMessage()
