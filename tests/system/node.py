"""SystemdNode: one booted node (systemd as PID 1 in its own namespaces), its teardown, and
running things inside it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .boot import Console, copy_mode, render_boot_script
from .cgroups import cgroup_base, cgroup_destroy
from .hostutil import (LOGS_DIR, NODES_DIR, SBIN, die_with_parent, owner_record, proc_start_time,
                       safe_rmtree, tail)
from .rootfs import ensure_rootfs
from .stale import cleanup_stale_once

NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NODE_ENV = {"PATH": NODE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
            "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "USER": "root", "LOGNAME": "root"}


class NodeError(RuntimeError):
    """A node failed to boot or misbehaved; the message carries its console/boot log tail."""


class NodeCommandError(AssertionError):
    """A command inside a node exited non-zero (check=True)."""

    def __init__(self, node: str, cmd, result: subprocess.CompletedProcess):
        self.result = result
        shown = cmd if isinstance(cmd, str) else shlex.join(map(str, cmd))
        super().__init__(f"[{node}] {shown} exited {result.returncode}\n"
                         f"--- stdout ---\n{tail(result.stdout)}\n--- stderr ---\n{tail(result.stderr)}")


class SystemdNode:
    """One machine: a copy of `rootfs` booted with systemd as PID 1 inside network namespace `netns`.

    Use as a context manager; leaving it (even through an exception or KeyboardInterrupt) kills
    every process of the node, removes its cgroup and its directory; mounts never leave the node's
    private mount namespace.  On an exception the journal and console are saved to LOGS_DIR and
    their tail is printed (pytest shows it with the failure)."""

    def __init__(self, name: str, *, netns: str, rootfs: Path | None = None,
                 boot_timeout: float = 90, mode: str | None = None):
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
            raise ValueError(f"node name {name!r}: use [a-z0-9-], at most 31 characters")
        self.name, self.netns = name, netns
        self.rootfs = Path(rootfs) if rootfs else None
        self.boot_timeout = boot_timeout
        self.mode = mode
        self.id = f"{name}-{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = NODES_DIR / self.id
        self.pid: int | None = None          # host pid of the node's systemd (PID 1 inside)
        self.boot_state: str | None = None   # "running" or "degraded"
        self.boot_seconds: float | None = None
        self.failed_units: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._console: Console | None = None
        self._cgroup: Path | None = None
        self._popens: list[subprocess.Popen] = []
        self._stopped = False

    def __repr__(self) -> str:
        return f"<SystemdNode {self.name} pid={self.pid} netns={self.netns} {self.boot_state}>"

    # ---- lifecycle
    def __enter__(self) -> "SystemdNode":
        try:
            self.start()
        except BaseException:
            self.save_diagnostics("boot failed")
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.save_diagnostics(f"{exc_type.__name__}: {exc}")
        finally:
            try:
                self.stop()
            except NodeError as e:
                if exc_type is None:
                    raise
                print(e, file=sys.stderr)  # the test's own failure is the one to report

    def start(self) -> None:
        cleanup_stale_once()
        t0 = time.monotonic()
        rootfs = self.rootfs or ensure_rootfs()
        mode = self.mode or copy_mode()
        self.dir.mkdir(parents=True)
        (self.dir / "owner.json").write_text(json.dumps(owner_record()))
        for d in ("root", "rw"):
            (self.dir / d).mkdir()
        self._cgroup = cgroup_base() / self.id
        self._cgroup.mkdir(parents=True)
        self._console = Console(self.dir / "console.log")
        script = render_boot_script(self.dir, self.name, rootfs, mode, self._console.path)
        (self.dir / "boot.sh").write_text(script)
        cgroup_procs = str(self._cgroup / "cgroup.procs")

        def preexec() -> None:
            os.setsid()  # ^C goes to pytest (which tears us down), not straight to the node
            with open(cgroup_procs, "w") as f:
                f.write(str(os.getpid()))
            die_with_parent()

        argv = ["ip", "netns", "exec", self.netns,
                "unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
                "--uts", "--ipc", "--cgroup", "--", "/bin/sh", str(self.dir / "boot.sh")]
        with open(self.dir / "boot.log", "wb") as bootlog:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=bootlog,
                                          stderr=subprocess.STDOUT, preexec_fn=preexec,
                                          close_fds=True, env={"PATH": os.environ.get("PATH", "") + ":" + SBIN})
        self.pid = self._find_pid1()
        (self.dir / "pids.json").write_text(json.dumps({
            "unshare": self._proc.pid, "pid1": self.pid,
            str(self._proc.pid): proc_start_time(self._proc.pid), str(self.pid): proc_start_time(self.pid)}))
        self.wait_running(self.boot_timeout)
        self.boot_seconds = time.monotonic() - t0

    def _find_pid1(self, timeout: float = 30) -> int:
        upid = self._proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NodeError(f"[{self.name}] boot script exited {self._proc.returncode}\n{self.boot_log()}")
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{upid}/task/{upid}/children").read_text().split()
                if children:
                    pid = int(children[0])
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return pid
            time.sleep(0.02)
        raise NodeError(f"[{self.name}] systemd did not start within {timeout}s\n{self.boot_log()}")

    def wait_running(self, timeout: float = 90) -> str:
        """Wait until `systemctl is-system-running` says running or degraded; returns it."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None or not self.alive():
                raise NodeError(f"[{self.name}] systemd died during boot\n{self.boot_log()}")
            r = self.exec(["systemctl", "is-system-running"], check=False, timeout=15)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                self.boot_state = state
                if state == "degraded":
                    self.failed_units = self.systemctl("list-units", "--failed", "--plain",
                                                       "--no-legend").stdout.split("\n")
                    self.failed_units = [u.split()[0] for u in self.failed_units if u.strip()]
                return state
            if state in ("maintenance", "stopping"):
                break
            time.sleep(0.1)
        raise NodeError(f"[{self.name}] not running after {timeout}s (is-system-running: {state!r})\n"
                        f"{self.boot_log()}")

    def alive(self) -> bool:
        return self.pid is not None and proc_start_time(self.pid) is not None and not self._stopped

    def stop(self) -> None:
        """Kill the node (its PID 1, hence its whole pid namespace) and remove all its traces."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # PID 1: the kernel kills the whole pid namespace
        # unshare reaps the dead PID 1 and exits by itself (killing it first, e.g. through
        # cgroup.kill, would leave the zombie to the host's init, which reaps it only later)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        if self._cgroup is not None:
            try:
                cgroup_destroy(self._cgroup)
            except Exception as e:  # noqa: BLE001 - keep tearing down
                errors.append(str(e))
        for p in [*self._popens, *([self._proc] if self._proc else [])]:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append(f"pid {p.pid} did not exit")
        if self.pid is not None:
            deadline = time.monotonic() + 10
            while proc_start_time(self.pid) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc_start_time(self.pid) is not None:
                errors.append(f"PID 1 ({self.pid}) still there")
        if self._console is not None:
            self._console.close()
        try:
            if self.dir.exists():
                safe_rmtree(self.dir)
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))
        if errors:
            raise NodeError(f"[{self.name}] teardown: " + "; ".join(errors))

    # ---- diagnostics
    def boot_log(self, lines: int = 40) -> str:
        parts = []
        for f in ("boot.log", "console.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {f} ---\n" + tail((self.dir / f).read_bytes(), lines))
        return "\n".join(parts)

    def save_diagnostics(self, why: str) -> Path | None:
        """Journal + console + boot log of a failed node to LOGS_DIR; prints where, and the tail."""
        try:
            LOGS_DIR.mkdir(parents=True, exist_ok=True)
            path = LOGS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.id}.log"
            journal = ""
            if self.alive():
                with contextlib.suppress(Exception):
                    journal = self.exec(["journalctl", "-b", "--no-pager", "-o", "short-monotonic"],
                                        check=False, timeout=30).stdout
                with contextlib.suppress(Exception):
                    journal += "\n--- systemctl --failed ---\n" + self.systemctl("--failed").stdout
            path.write_text(f"node {self.name} ({self.id}): {why}\n{self.boot_log(400)}\n"
                            f"--- journal ---\n{journal}\n")
            print(f"\n[{self.name}] diagnostics saved to {path}; journal tail:\n{tail(journal, 40)}",
                  file=sys.stderr)
            return path
        except Exception as e:  # noqa: BLE001 - diagnostics must not mask the real error
            print(f"[{self.name}] could not save diagnostics: {e}", file=sys.stderr)
            return None

    # ---- running things inside
    def _argv(self, cmd: str | Sequence[str], env: dict | None = None) -> list[str]:
        if self.pid is None or self._stopped:
            raise NodeError(f"[{self.name}] node is not running")
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd]
        envs = [f"{k}={v}" for k, v in {**NODE_ENV, **(env or {})}.items()]
        return ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--",
                "/usr/bin/env", "-i", *envs, *map(str, cmd)]

    def exec(self, cmd: str | Sequence[str], *, check: bool = True, timeout: float = 120,
             input: str | bytes | None = None, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        """Run cmd inside the node (all its namespaces, its root) as root with a login-like env.

        A str runs under /bin/sh -c.  Output is captured as text unless input is bytes."""
        kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
        kw.setdefault("text", not isinstance(input, bytes))
        r = subprocess.run(self._argv(cmd, env), input=input, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise NodeCommandError(self.name, cmd, r)
        return r

    def popen(self, cmd: str | Sequence[str], *, env: dict | None = None, **kw) -> subprocess.Popen:
        """Start cmd inside the node in the background; killed with the node at the latest."""
        kw.setdefault("text", True)
        p = subprocess.Popen(self._argv(cmd, env), **kw)
        self._popens.append(p)
        return p

    def systemctl(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.exec(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def journalctl(self, *args: str, timeout: float = 60) -> str:
        return self.exec(["journalctl", "--no-pager", *args], timeout=timeout).stdout

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside the node (through the node's own view of its filesystem)."""
        data = content.encode() if isinstance(content, str) else content
        self.exec(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                   "sh", path, f"{mode:o}"], input=data)

    def read_file(self, path: str) -> str:
        return self.exec(["cat", path]).stdout

    def copy_in(self, src: Path, dest: str, timeout: float = 300) -> None:
        """Copy a host directory's contents into the node at dest (tar through a pipe)."""
        tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE)
        try:
            self.exec(["sh", "-c", 'mkdir -p "$1" && tar -C "$1" -xf -', "sh", dest],
                      stdin=tar.stdout, timeout=timeout, text=False)
        finally:
            tar.stdout.close()
            tar.wait(timeout=30)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit, check=True).stdout.strip()

    def pid_of_unit(self, unit: str, *, host: bool = False) -> int | None:
        """MainPID of unit as the node sees it (host=True: as the host sees it); None if none."""
        pid = int(self.unit_property(unit, "MainPID") or 0)
        if not pid:
            return None
        return self.host_pid(pid) if host else pid

    def host_pid(self, node_pid: int) -> int | None:
        """Translate a pid inside the node into the host's pid for that process."""
        my_ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(d / "ns/pid") != my_ns:
                    continue
                for line in (d / "status").read_text().splitlines():
                    if line.startswith("NSpid:"):
                        if int(line.split()[-1]) == node_pid:
                            return int(d.name)
        return None

    def processes(self) -> list[int]:
        """Host pids of every process in the node's pid namespace."""
        my_ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(d / "ns/pid") == my_ns:
                        out.append(int(d.name))
        return out

