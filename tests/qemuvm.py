"""A QEMU VM that boots by PXE on a lab's bridge (test helper; needs root, qemu and ipxe-qemu).

    with Lab() as lab:
        vm = Vm(lab, "vm1", "52:54:00:12:34:77", tmp_path)
        try:
            vm.start()
            vm.wait_console("iPXE", timeout=60)
            vm.reset()
        finally:
            vm.close()

The VM: TCG (no KVM), 256 MiB, `-nodefaults -display none`, one NIC with a fixed MAC and
Debian's iPXE option ROM, `-boot n`.  Its NIC is a tap device created in the lab's bridge
namespace and enslaved to br0, so the VM sits on the same L2 as the lab hosts; QEMU runs in that
namespace (a tap is looked up by name in the caller's namespace).

The console: with no VGA, nothing the BIOS or iPXE prints (iPXE writes through INT 10h) would
reach us.  `-machine graphics=off` tells SeaBIOS (fw_cfg etc/sercon-port) to run its serial
console: every INT 10h text call goes to COM1 as well.  (`-device sga`, the sgabios ROM, does the
same but is deprecated in QEMU 7.2 and draws bold text as "c BS c".)  COM1 is a file; `console()`
reads it with ANSI escapes stripped and backspaces applied.
A QMP socket (a Unix socket, so reachable from any namespace) does system_reset and quit.

`close()` quits QEMU (kill after a bound), deletes the tap; the lab's close kills anything left.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"
ROM_DIR = Path("/usr/lib/ipxe/qemu")
ROMS = {"virtio-net-pci": "pxe-virtio.rom", "e1000": "pxe-e1000.rom"}
# Debian's pxe-virtio.rom names the modern virtio-net id (1af4:1041) in its PCI header, and
# SeaBIOS runs a PCI ROM only when that id matches: a transitional device (1af4:1000) would
# never PXE-boot ("Booting from Hard Disk..." and nothing from iPXE), so legacy is turned off.
NIC_FLAGS = {"virtio-net-pci": ",disable-legacy=on", "e1000": ""}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78cDEHM]")


def missing() -> str | None:
    """Why a VM cannot run here (None when it can): the reason a test skips with."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (Debian qemu-system-x86)"
    for rom in ROMS.values():
        if not (ROM_DIR / rom).exists():
            return f"{ROM_DIR / rom} missing (Debian ipxe-qemu)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun missing: no tap devices"
    return None


def _overstrike(text: str) -> str:
    """Apply backspaces as a terminal would (sgabios draws bold text as c, BS, c)."""
    out: list[str] = []
    for line in text.split("\n"):
        cells: list[str] = []
        col = 0
        for ch in line:
            if ch == "\b":
                col = max(0, col - 1)
                continue
            if col < len(cells):
                cells[col] = ch
            else:
                cells.append(ch)
            col += 1
        out.append("".join(cells))
    return "\n".join(out)


class Qmp:
    """A tiny QMP client: one command at a time over the monitor's Unix socket."""

    def __init__(self, path: Path, alive=lambda: True, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if not alive() or time.monotonic() > deadline:
                    raise ConnectionError(f"no QMP socket at {path}") from None
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("QMP closed")
            msg = json.loads(line)
            if "event" not in msg:  # events (RESET, ...) are not answers
                return msg

    def execute(self, command: str, **arguments) -> dict:
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"QMP {command}: {answer['error']}")
        return answer.get("return", {})

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


class Vm:
    def __init__(self, lab, name: str, mac: str, workdir: Path, nic: str = "virtio-net-pci",
                 memory: int = 256):
        if not re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac):
            raise ValueError(f"{mac}: use a fixed 52:54:00:xx:xx:xx MAC")
        if nic not in ROMS:
            raise ValueError(f"{nic}: one of {sorted(ROMS)}")
        self.lab, self.name, self.mac, self.nic, self.memory = lab, name, mac, nic, memory
        self.dir = Path(workdir) / f"vm-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console_path = self.dir / "serial.log"
        self.qmp_path = self.dir / "qmp.sock"
        if len(str(self.qmp_path)) > 100:  # sun_path holds 108 bytes
            self.qmp_path = Path(tempfile.mkdtemp(prefix="qmp-")) / "qmp.sock"
        self.log_path = self.dir / "qemu.log"
        self.tap = f"tap{name}"[:15]
        self.proc: subprocess.Popen | None = None
        self._qmp: Qmp | None = None
        self._tap_made = False

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "-n", self.lab.bridge_ns, *args], check=check,
                              capture_output=True, text=True)

    def command(self) -> list[str]:
        rom = ROM_DIR / ROMS[self.nic]
        return ["ip", "netns", "exec", self.lab.bridge_ns, QEMU,
                "-accel", "tcg", "-m", str(self.memory), "-nodefaults", "-display", "none",
                "-name", self.name, "-no-user-config",
                "-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
                "-device", f"{self.nic}{NIC_FLAGS[self.nic]},netdev=net0,mac={self.mac},"
                           f"romfile={rom}",
                "-boot", "n", "-machine", "graphics=off",
                "-chardev", f"file,id=com1,path={self.console_path}", "-serial", "chardev:com1",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]

    def start(self) -> "Vm":
        try:
            self._ip("tuntap", "add", "dev", self.tap, "mode", "tap")
            self._tap_made = True
            self._ip("link", "set", self.tap, "master", "br0", "up")
            self.console_path.write_bytes(b"")
            self.qmp_path.unlink(missing_ok=True)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.command(), stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                self._qmp = Qmp(self.qmp_path, alive=lambda: self.proc.poll() is None)
            except ConnectionError as e:
                raise AssertionError(f"{self.name}: QEMU did not start: {e}\n"
                                     f"{self.qemu_log()[-2000:]}") from None
        except BaseException:
            self.close()
            raise
        return self

    def console(self) -> str:
        """What the VM printed on COM1 so far, ANSI escapes and CRs removed."""
        try:
            raw = self.console_path.read_bytes().decode("latin-1")
        except FileNotFoundError:
            return ""
        return _overstrike(_ANSI.sub("", raw).replace("\r", ""))

    def wait_console(self, text: str, timeout: float = 60, after: int = 0) -> int:
        """Wait until `text` shows in console()[after:]; returns the index just past it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.console()
            if (i := out.find(text, after)) >= 0:
                return i + len(text)
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        state = "running" if self.proc and self.proc.poll() is None else "exited"
        raise AssertionError(f"{self.name}: {text!r} not on the console after {timeout}s (qemu "
                             f"{state})\n--- console ---\n{self.console()[after:][-3000:]}"
                             f"\n--- qemu ---\n{self.qemu_log()[-1000:]}")

    def qemu_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reset(self) -> int:
        """system_reset: the VM reboots (by PXE again). Returns the console length before it,
        for wait_console(after=...)."""
        mark = len(self.console())
        self._qmp.execute("system_reset")
        return mark

    def close(self) -> None:
        if self._qmp is not None:
            try:
                self._qmp.execute("quit")
            except (OSError, RuntimeError, ValueError):
                pass
            self._qmp.close()
            self._qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc = None
        if self._tap_made:
            self._ip("link", "delete", self.tap, check=False)
            self._tap_made = False

    def __enter__(self) -> "Vm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
