"""Real DHCP clients in lab namespaces (test helper; root): busybox udhcpc and ISC dhclient.

Each client runs in its own lab host whose eth0 starts with no address. Its hook script (both
clients call one on every event) applies the address and appends a JSON line per event to a
file, so a test can wait for "bound", "renew", ... and read what the server sent.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

# udhcpc calls SCRIPT EVENT with ip, mask, router, dns, serverid, lease, boot_file, siaddr ...
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
printf '{"event":"%s","ip":"%s","mask":"%s","router":"%s","dns":"%s","domain":"%s",\
"serverid":"%s","lease":"%s","boot_file":"%s","siaddr":"%s","t":%s}\\n' \
  "$1" "$ip" "$mask" "$router" "$dns" "$domain" "$serverid" "$lease" "$boot_file" "$siaddr" \
  "$(date +%s.%N)" >> "$EVENTS"
exit 0
"""

# dhclient calls SCRIPT with $reason and new_* variables.
DHCLIENT_SCRIPT = """#!/bin/sh
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  RELEASE|EXPIRE|STOP) ip addr flush dev "$interface" ;;
esac
printf '{"event":"%s","ip":"%s","mask":"%s","router":"%s","dns":"%s","domain":"%s",\
"serverid":"%s","lease":"%s","boot_file":"%s","siaddr":"%s","t":%s}\\n' \
  "$(echo "$reason" | tr A-Z a-z)" "$new_ip_address" "$new_subnet_mask" "$new_routers" \
  "$new_domain_name_servers" "$new_domain_name" "$new_dhcp_server_identifier" \
  "$new_dhcp_lease_time" "$new_filename" "$new_next_server" "$(date +%s.%N)" >> "$EVENTS"
exit 0
"""


def client_host(lab, name: str, placeholder: str):
    """A lab host for a DHCP client: made with a placeholder address, which is then removed."""
    host = lab.add_host(name, placeholder)
    host.run(["ip", "addr", "flush", "dev", "eth0"])
    return host


def mac_of(host) -> str:
    out = host.run(["cat", "/sys/class/net/eth0/address"]).stdout
    return out.strip()


class Client:
    """One DHCP client process in `host`; events() reads its hook script's lines."""

    script_text = ""

    def __init__(self, host, workdir: Path):
        self.host, self.dir = host, Path(workdir) / f"dhcp-{host.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.script = self.dir / "hook.sh"
        self.events_path = self.dir / "events.jsonl"
        # the path is written in: dhclient runs its script with a clean environment
        self.script.write_text(self.script_text.replace('"$EVENTS"', f'"{self.events_path}"'))
        self.script.chmod(0o755)
        self.events_path.touch()
        self.proc: subprocess.Popen | None = None

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line]

    def wait_event(self, *names: str, after: int = 0, timeout: float = 20) -> dict:
        """The first event named one of `names` among those after the first `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events()[after:]:
                if event["event"] in names:
                    return event
            time.sleep(0.05)
        raise AssertionError(f"{self.host.name}: no {'/'.join(names)} event after {timeout}s; "
                             f"events {self.events()[-5:]}; log {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.dir / "client.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


class Udhcpc(Client):
    script_text = UDHCPC_SCRIPT

    def start(self, *extra: str) -> "Udhcpc":
        """udhcpc in the foreground: retries every second, renews at T1 by itself."""
        log = open(self.dir / "client.log", "ab")
        self.proc = self.host.popen(
            ["udhcpc", "-f", "-i", "eth0", "-s",
             str(self.script), "-t", "20", "-T", "1", "-A", "1", *extra],
            stdout=log, stderr=subprocess.STDOUT)
        return self

    def renew(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def release(self) -> None:
        self.proc.send_signal(signal.SIGUSR2)


class Dhclient(Client):
    script_text = DHCLIENT_SCRIPT

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        with open(self.dir / "client.log", "ab") as log:
            return self.host.run(
                ["dhclient", "-v", "-sf", str(self.script),
                 "-lf", str(self.dir / "leases"), "-pf", str(self.dir / "pid"), *args, "eth0"],
                stdout=log, stderr=subprocess.STDOUT, timeout=60)

    def start(self) -> "Dhclient":
        """dhclient -d in the background: it binds, then renews at T1 by itself."""
        log = open(self.dir / "client.log", "ab")
        self.proc = self.host.popen(
            ["dhclient", "-d", "-v", "-sf",
             str(self.script), "-lf", str(self.dir / "leases"), "-pf", str(self.dir / "pid"),
             "eth0"], stdout=log, stderr=subprocess.STDOUT)
        return self

    def renew(self) -> None:
        """Nothing to do: dhclient renews by itself at T1 (half the lease)."""

    def release(self) -> None:
        """dhclient -r: sends DHCPRELEASE and stops the running client."""
        self._run("-r")
