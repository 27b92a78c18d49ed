# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
BASE_ROOT ?= ./drp-data

.PHONY: run test venv test-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/dr-provision --base-root $(BASE_ROOT)

# System packages the root-only tests use (netns, debootstrap for the systemd test, jq for the
# operator tour, etcd, DHCP and TFTP clients, QEMU with iPXE for the PXE boot, tftpd-hpa and
# Kea for the benchmarks); installed only when missing and when we are root. A daemon a package
# started on install would hold ports 67 and 69: it is stopped.
test-deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  for p in ip:iproute2 jq:jq debootstrap:debootstrap etcd:etcd-server tftp:tftp-hpa curl:curl \
	           udhcpc:udhcpc dhclient:isc-dhcp-client in.tftpd:tftpd-hpa perfdhcp:kea-admin \
	           kea-dhcp4:kea-dhcp4-server qemu-system-x86_64:qemu-system-x86 \
	           /usr/lib/ipxe/qemu/efi-virtio.rom:ipxe-qemu; do \
	    [ -e "$${p%%:*}" ] || command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p#*:}"; \
	  done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	  pkill -x in.tftpd || true; pkill -x kea-dhcp4 || true; \
	fi

test: venv test-deps
	$(PY) -m pytest -ra

# The offline install archive (README, "Running under systemd"): drp and every dependency as
# wheels for $(PYTHON), install.sh and the unit, in dist/.  Needs the package index on the first
# build only (dependency wheels are cached in build/dist-cache).  Another Python:
# `make dist PYTHON=python3.12` on a machine that has it.
.PHONY: dist
dist:
	$(PYTHON) contrib/make_dist.py --out-dir dist --cache build/dist-cache

bench: venv
	$(PY) -m bench replication --quick

# Automatic failover on one machine (root): 3 etcd members and 3 nodes in network namespaces,
# kill -9 of the active, the takeover and how long it took; everything is removed at the end.
.PHONY: demo-failover
demo-failover: venv test-deps
	$(PY) contrib/demo_failover.py

clean:
	rm -rf $(VENV) drp-data
