"""Start real dr-provision processes for tests: free ports, temp base roots, HTTPS clients."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AUTH = ("rocketskates", "r0cketsk8ts")
# Inherited from whoever runs the tests, these would change what a server or drpcli does.
_LEAKY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS")


def clean_environ() -> dict:
    """os.environ without RS_* settings and systemd hand-offs; tests add what they need."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("RS_") and k not in _LEAKY_ENV}


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and not handed out before in this process: the kernel may give the
    same ephemeral port to two binds in a row (an API and a static port once collided)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class DrpServer:
    """One dr-provision process. `args` are extra flags; env extra RS_* variables."""

    def __init__(self, base_root: Path, args: list[str] = (), env: dict | None = None,
                 host: str = "127.0.0.1", prefix: list[str] = ()):
        self.base_root = Path(base_root)
        self.host = host
        self.api_port = free_port()
        self.static_port = free_port()
        self.metrics_port = 0
        self.args = list(args)
        self.env = {**clean_environ(), **(env or {})}
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", "ns1"]
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_root.with_name(self.base_root.name + ".log")

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.api_port}"

    def command(self) -> list[str]:
        # DHCP and TFTP stay off unless a test asks for them: many nodes share one namespace,
        # and DHCP must never answer outside the namespaces a test made.
        plane = [arg for flag in ("--disable-dhcp", "--disable-tftp")
                 if not any(a.startswith(flag) for a in self.args) for arg in (flag, "true")]
        return [*self.prefix, str(BIN / "dr-provision"), "--base-root", str(self.base_root),
                "--api-port", str(self.api_port), "--static-port", str(self.static_port),
                "--metrics-port", str(self.metrics_port), *plane, *self.args]

    def start(self, wait: bool = True) -> "DrpServer":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=REPO)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dr-provision exited {self.proc.returncode}:\n{self.logs()}")
            try:
                self.ping()
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"dr-provision not ready after {timeout}s:\n{self.logs()}")

    def ping(self) -> None:
        """One quick request to the API; raises httpx.HTTPError while the server does not answer."""
        httpx.get(self.url + "/api/v3/info", verify=False, timeout=1)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return
            if self.proc and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the log after {timeout}s:\n{self.logs()[-4000:]}")

    def client(self, auth=AUTH, token: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + "/api/v3", verify=False, timeout=timeout,
                            auth=None if token else auth, headers=headers)

    def drpcli_env(self, env: dict | None = None) -> dict:
        """The environment drpcli runs in: RS_ENDPOINT of this server, the venv first on PATH."""
        return {**clean_environ(), "RS_ENDPOINT": self.url,
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}

    def drpcli(self, *args: str, token: str | None = None, input: str | None = None,
               check: bool = True, env: dict | None = None,
               cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        env = self.drpcli_env(env)
        if token:
            env["RS_TOKEN"] = token
        return subprocess.run([str(BIN / "drpcli"), *args], env=env, input=input, text=True,
                              capture_output=True, check=check, timeout=60, cwd=cwd)

    def bash(self, script: str, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell snippet (pipes and all) as an operator would, against this server."""
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script],
                              env=self.drpcli_env(env), text=True, capture_output=True,
                              check=check, timeout=60)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"dr-provision ignored SIGTERM for {timeout}s:\n{self.logs()[-3000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _factory(root: Path):
    servers: list[DrpServer] = []

    def make(name: str = "drp", *args: str, env: dict | None = None, start: bool = True,
             **kw) -> DrpServer:
        server = DrpServer(root / name, list(args), env, **kw)
        servers.append(server)
        return server.start() if start else server
    return make, servers


@pytest.fixture
def drp_factory(tmp_path):
    """drp_factory(name, *args, env=...) -> a started DrpServer; all are stopped at the end."""
    make, servers = _factory(tmp_path)
    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def drp(drp_factory) -> DrpServer:
    return drp_factory()


@pytest.fixture(scope="module")
def module_drp_factory(tmp_path_factory):
    """Like drp_factory, but the servers live for the whole test module (for tests that can
    share one server without stepping on each other)."""
    make, servers = _factory(tmp_path_factory.mktemp("drp"))
    yield make
    for server in servers:
        server.kill()


@pytest.fixture(scope="module")
def module_drp(module_drp_factory) -> DrpServer:
    """One server shared by a test module."""
    return module_drp_factory()
