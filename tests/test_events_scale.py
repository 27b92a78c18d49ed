"""Issue 18 item 6, the event stream: 2000 /api/v3/ws subscribers on a real server cost the
writers little (the figure against the 2x target: bench/events.py), readers get every event in
order, and one that never reads is dropped with one log line (not one per event it missed)."""
from __future__ import annotations

import json
import os
import resource
import subprocess

import trio

from tests.eventsubs import Subscriber, connect_all, create_machines, token

SUBSCRIBERS = 2000
READERS = 4  # each costs the server ~0.2 ms per event it is sent: hypercorn's send
ROUNDS = 5
NOT_MATCHING = ("profiles.*.*", "machines.delete.*", "machines.create.no-such-key",
                "*.update.*")


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def server_holds(server, client_port: int) -> bool:
    """Does the server still hold a connection from this client port?"""
    out = subprocess.run(["ss", "-Htn", "state", "established",
                          f"( sport = :{server.api_port} and dport = :{client_port} )"],
                         capture_output=True, text=True, check=True).stdout
    return bool(out.strip())


async def until(predicate, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {timeout}s: {what}")


def server_cpu(server) -> float:
    """utime + stime of the server process so far, in seconds."""
    with open(f"/proc/{server.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_creates(server, bearer: str, prefix: str) -> tuple[float, float, list[str]]:
    """100 creates in turn: the seconds they took, the server CPU they cost and the
    machines' Uuids in order."""
    before = server_cpu(server)
    seconds, uuids = await create_machines(server, bearer, prefix, 100)
    return seconds, server_cpu(server) - before, uuids


async def test_2000_subscribers(drp_factory):
    raise_fd_limit(2 * SUBSCRIBERS + 500)  # the server inherits it: its end of each socket
    # a peer that takes no bytes for 20s is let go: after its queue of 1000 overflows, which
    # takes the 1300 creates below ~10s (the default, 30s, would only slow this test)
    server = drp_factory("drp", "--send-timeout", "20s", start=False)
    await trio.to_thread.run_sync(server.start)
    bearer = await trio.to_thread.run_sync(token, server)
    await create_machines(server, bearer, "warm", 50)
    # best of ROUNDS on both sides: the machine is shared, and a round can be unlucky
    alone = [await timed_creates(server, bearer, f"alone{i}") for i in range(ROUNDS)]

    readers = [Subscriber("machines.*.*", reads=True) for _ in range(READERS)]
    slow = Subscriber("machines.*.*", reads=False)  # registers, then never reads again
    idle = [Subscriber(NOT_MATCHING[i % len(NOT_MATCHING)], reads=False)
            for i in range(SUBSCRIBERS - READERS - 1)]
    fds_before = len(os.listdir("/proc/self/fd"))
    try:
        await _subscribe_and_write(server, bearer, alone, readers, slow, idle)
    finally:
        # Cancelling a trio-websocket reader does not close its socket: close every one, or
        # the tests after this one get descriptors past 1024, which select() refuses.
        for sub in (*readers, slow, *idle):
            if sub.ws is not None:
                await trio.aclose_forcefully(sub.ws._stream)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 10


async def _subscribe_and_write(server, bearer: str, alone: float, readers, slow, idle) -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(240):
            await connect_all(nursery, server, bearer, [*readers, slow, *idle])
        rounds = [await timed_creates(server, bearer, f"loaded{i}") for i in range(ROUNDS)]
        for name, runs in (("alone", alone), (f"with {SUBSCRIBERS} subscribers", rounds)):
            print(f"100 creates {name}: " + ", ".join(f"{s:.3f}s (server CPU {cpu:.2f}s)"
                                                       for s, cpu, _ in runs))
        # A regression guard, not the target: the target (writers slowed less than 2x) is
        # measured by `python -m bench events`, where load elsewhere hits both sides alike.
        # Before the fan-out was indexed, every subscriber cost every write: 3.9x the server
        # CPU per create with 2000 of them (bench/events.py); now those whose patterns do
        # not match cost nothing, and each that matches ~0.2 ms per event.
        best_alone, best_loaded = min(r[1] for r in alone), min(r[1] for r in rounds)
        assert best_loaded < 3 * best_alone, (
            f"100 creates cost the server {best_loaded:.2f}s of CPU with {SUBSCRIBERS} "
            f"subscribers, {best_alone:.2f}s with none (best of {ROUNDS})")
        uuids = [u for _, _, batch in rounds for u in batch]
        await until(lambda: all(len(r.events) >= len(uuids) for r in readers), 30,
                    "readers have every event")
        for r in readers:
            assert [(e["Type"], e["Action"], e["Key"]) for e in r.events] == \
                [("machines", "create", u) for u in uuids]
        # a subscriber whose patterns match none of those got none of them
        for sub in idle[:len(NOT_MATCHING)]:
            await sub.ws.send_message("sync")
            assert "Error" in json.loads(await sub.ws.get_message()), sub.pattern

        # more events than a subscriber's queue holds: the one that never reads is dropped
        _, more = await create_machines(server, bearer, "more", 1300)
        await until(lambda: "fell 1000 events behind" in server.logs(), 30, "slow dropped")
        everything = uuids + more
        await until(lambda: all(len(r.events) >= len(everything) for r in readers), 60,
                    "readers have every event")
        for r in readers:
            assert [e["Key"] for e in r.events] == everything and r.closed is None
        # the server lets go of its end although the client never reads
        await until(lambda: not server_holds(server, slow.ws.local.port), 40,
                    "the server closes the slow subscriber's connection")
        nursery.start_soon(slow.read)  # it reads at last: what had got through, then the end
        await until(lambda: slow.closed is not None, 30, "slow sees its connection closed")
        got = [e["Key"] for e in slow.events]
        assert got == everything[:len(got)] and len(got) < len(everything)
        logs = server.logs()
        assert logs.count("fell 1000 events behind") == 1, logs[-3000:]
        assert "dropping an event" not in logs
        assert logs.count("event subscriber") == 1, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(server.stop)  # a graceful stop: nothing left stuck
