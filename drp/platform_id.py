"""This machine's OS and architecture in Go's spelling (GOOS/GOARCH), as dr-provision reports
them in /api/v3/info and HA peers compare them."""
from __future__ import annotations

import platform

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
          "ppc64le": "ppc64le", "s390x": "s390x"}


def goarch() -> str:
    machine = platform.machine()
    return GOARCH.get(machine, machine)


def goos() -> str:
    return platform.system().lower()
