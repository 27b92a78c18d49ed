"""Automatic failover, shown on one machine (root): `make demo-failover`.

Three etcd members (e0..e2, 198.18.0.21-23) and three dr-provision nodes (n1..n3, 198.18.0.11-13,
VIP 198.18.0.100) in network namespaces on one bridge, a client host (198.18.0.50) writing through
the VIP. Prints the cluster state, kills the active with SIGKILL, prints the takeover and how long
it took (the kill -> the first write accepted through the VIP), restarts the old active (it comes
back passive and resyncs), and removes every namespace and process it made, also on Ctrl-C.
Nothing leaves the namespaces; the test harness in tests/ is used as is (the repo is the install).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.autofailover import LeaderWatch, first_ack  # noqa: E402
from tests.autocluster import PREFIX, AutoCluster  # noqa: E402
from tests.etcdlab import ETCD  # noqa: E402
from tests.hanet import API_PORT, VIP, Writer  # noqa: E402
from tests.netns import Lab  # noqa: E402

DRPCLI = Path(sys.executable).parent / "drpcli"


def say(text: str = "") -> None:
    print(text, flush=True)


def show_state(auto: AutoCluster) -> None:
    """`drpcli system ha state` from the client host; the raw etcd keys if drpcli lacks it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RS_")}
    env["RS_ENDPOINT"] = f"https://{VIP}:{API_PORT}"
    cmd = ["ip", "netns", "exec", auto.client_host.ns, str(DRPCLI), "system", "ha", "state"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    if p.returncode == 0:
        say("$ drpcli system ha state")
        say(p.stdout.rstrip())
        return
    say(f"(drpcli system ha state not available here: {p.stderr.strip().splitlines()[-1:]}; "
        f"the etcd keys under {PREFIX} instead)")
    say(f"  leader  = {auto.leader()}")
    say(f"  sync    = {auto.sync()}")
    for node in auto.nodes:
        say(f"  members/{node.drp_id} = {auto.etcd_get('members/' + node.drp_id)}")


def demo(workdir: Path) -> None:
    with Lab() as lab:
        auto = AutoCluster(lab, workdir)
        writer = None
        try:
            say("starting 3 etcd members and 3 dr-provision nodes in network namespaces ...")
            t = time.monotonic()
            auto.start()
            say(f"cluster up in {time.monotonic() - t:.1f} s (lease TTL 2 s, the default)\n")
            show_state(auto)
            watch = LeaderWatch(auto.client_host.ns, auto.etcd.endpoints[0])
            writer = Writer(auto.client_host.ns, loops=4, prefix="demo")
            time.sleep(1)
            old_id = auto.leader()
            by = {writer.nodes.get(name) for _, _, name in writer.acked}
            say(f"\nclient: {len(writer.acked)} writes through the VIP in 1 s, acknowledged by "
                f"{sorted(x for x in by if x)}")

            say(f"\nkill -9 the active ({old_id}) ...")
            offset = time.time() - time.monotonic()
            t0 = time.monotonic()
            auto.node(old_id).kill()
            acked, new_id = first_ack(writer, t0, old_id)
            gone = watch.first(t0 + offset, lambda v: v is None)
            put = watch.first(gone, lambda v: v is not None)
            say(f"  leader key gone after  {gone - offset - t0:6.2f} s (the lease expired in etcd)")
            say(f"  {new_id} took the key after {put - offset - t0:6.2f} s")
            say(f"  first write through the VIP after {acked - t0:.2f} s, acknowledged by {new_id}")
            say(f"\ntakeover: {old_id} -> {new_id} in {acked - t0:.2f} s "
                "(kill -9 -> first write accepted through the VIP)\n")
            show_state(auto)

            say(f"\nrestarting {old_id}: it finds the leader key held, stays passive, resyncs ...")
            auto.node(old_id).start(wait=True)
            sync = auto.wait_sync({n.drp_id for n in auto.nodes} - {new_id}, timeout=60)
            say(f"  back in the sync set: {sync}")
            writer.stop()
            have = {p["Name"] for p in auto.api("GET", "/params").json()}
            lost = [n for n in writer.nodes if n not in have]
            say(f"  {len(writer.acked)} writes acknowledged in all, {len(lost)} missing on "
                f"{new_id}")
        finally:
            if writer is not None:
                writer.stop()
            say("\ncleaning up (processes, namespaces) ...")
            auto.close()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    if os.geteuid() != 0:
        print("demo-failover needs root (network namespaces)", file=sys.stderr)
        return 2
    if not os.access(ETCD, os.X_OK):
        print(f"{ETCD} missing: apt-get install etcd-server", file=sys.stderr)
        return 2
    # SIGTERM ends the demo like Ctrl-C does: through every finally (Lab.close included)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="drp-demo-failover-"))
    try:
        demo(workdir)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
