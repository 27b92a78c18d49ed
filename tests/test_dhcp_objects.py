"""DHCP objects through the API (no root): what drp's DHCP server cannot serve is refused with
dr-provision's error body when a subnet or reservation is saved, leases through RackN's client
and drpcli, and two model rules of dr-provision's decoding (unknown fields dropped, a machine's
Secret generated)."""
from __future__ import annotations

import json
import time

import pytest
from drppy_client import api as rackn
from drppy_client import models as rm
from drppy_client.rest import ApiException

from tests.drppy import drppy, error_body  # noqa: F401  (drppy: the fixture)

GOOD = {"Name": "prov", "Subnet": "10.20.0.0/24", "ActiveStart": "10.20.0.10",
        "ActiveEnd": "10.20.0.20", "Enabled": True}


@pytest.mark.parametrize("change, message", [
    ({"Strategy": "hostname"}, "Strategy 'hostname' is not supported: drp leases by MAC"),
    ({"Proxy": True}, "Proxy subnets are not supported by drp; set Proxy to false"),
    ({"Unmanaged": True}, "Unmanaged subnets are not supported by drp; set Unmanaged to false"),
    ({"ActiveStart": "10.21.0.1"}, "ActiveStart 10.21.0.1 is not inside Subnet 10.20.0.0/24"),
    ({"ActiveStart": "10.20.0.30"}, "ActiveStart 10.20.0.30 is after ActiveEnd 10.20.0.20"),
    ({"Subnet": "fd00::/64", "ActiveStart": "", "ActiveEnd": ""},
     "Subnet 'fd00::/64': drp serves DHCPv4 only"),
    ({"Pickers": ["hint", "random"]}, "Pickers: 'random' is not one of none, hint, nextFree, "
                                      "mostExpired"),
    ({"Options": [{"Code": 51, "Value": "60"}]},
     "Options[0]: option 51 (the lease time) is not configurable"),
    ({"Options": [{"Code": 3, "Value": "10.20.0"}]},
     "Options[0].Value: option 3: '10.20.0' is not an IPv4 address"),
    ({"Options": [{"Code": 67, "Value": "{{.ProvisionerURL}}"}]},
     "Options[0].Value: unsupported action {{.ProvisionerURL}}: only index . N prints"),
    ({"Options": [{"Code": 300, "Value": "x"}]},
     "Options[0].Code must be a DHCP option code from 1 to 254"),
])
def test_a_subnet_drp_cannot_serve_is_refused(drppy, change, message):
    r = drppy.http.post("/subnets", json={**GOOD, **change})
    assert r.status_code == 422, r.text
    body = r.json()
    assert (body["Type"], body["Model"], body["Messages"]) == ("ValidationError", "subnets",
                                                               [message]), body
    assert drppy.http.get("/subnets/prov").status_code == 404


def test_a_subnet_gets_dr_provisions_defaults_and_templates_are_kept(drppy):
    template = '{{if eq (index . 77) "iPXE"}}http://10.20.0.2:8091/files/boot.ipxe{{else}}' \
               'ipxe.pxe{{end}}'
    r = drppy.http.post("/subnets", json={
        "Name": "defaults", "Subnet": "10.22.0.0/24", "ActiveStart": "10.22.0.10",
        "ActiveEnd": "10.22.0.20", "Enabled": True, "Options": [{"Code": 67, "Value": template}]})
    assert r.status_code == 201, r.text
    raw = r.json()
    assert (raw["Strategy"], raw["Pickers"], raw["ActiveLeaseTime"], raw["ReservedLeaseTime"]) \
        == ("MAC", ["hint", "nextFree", "mostExpired"], 60, 7200)
    assert raw["Options"] == [{"Code": 67, "Value": template}]
    subnet = drppy.api(rackn.SubnetsApi).get_subnet("defaults")  # parses as RackN's Subnet
    assert subnet.options[0].value == template and subnet.pickers[0] == "hint"
    drppy.http.delete("/subnets/defaults")


def test_a_reservation_token_must_be_a_mac(drppy):
    r = drppy.http.post("/reservations", json={"Addr": "10.20.0.5", "Token": "not-a-mac"})
    assert r.status_code == 422 and r.json()["Messages"] == [
        "Token 'not-a-mac' is not a MAC address like 52:54:00:12:34:56 (lower case, colons)"], \
        r.text
    with pytest.raises(ApiException) as e:
        drppy.api(rackn.ReservationsApi).create_reservation(rm.Reservation(
            addr="10.20.0.6", scoped=False, strategy="MAC", token="52:54:00:AA:BB:CC"))
    assert error_body(e.value)["Code"] == 422


def test_leases_through_rackns_client_and_drpcli(drppy):
    leases = drppy.api(rackn.LeasesApi)
    made = drppy.http.post("/leases", json={
        "Addr": "10.20.0.11", "Token": "52:54:00:00:00:11", "State": "ACK",
        "ExpireTime": "2030-01-01T00:00:00Z", "Duration": 60, "Via": "10.20.0.2"})
    assert made.status_code == 201, made.text
    got = leases.get_lease("10.20.0.11")
    assert (got.token, got.state, got.strategy, got.duration) == (
        "52:54:00:00:00:11", "ACK", "MAC", 60)
    assert [x.addr for x in leases.list_leases(token="52:54:00:00:00:11")] == ["10.20.0.11"]
    listed = drppy.server.drpcli("leases", "list", "State=ACK")
    assert [x["Addr"] for x in json.loads(listed.stdout)] == ["10.20.0.11"]
    shown = json.loads(drppy.server.drpcli("leases", "show", "10.20.0.11").stdout)
    assert shown["Via"] == "10.20.0.2"
    drppy.server.drpcli("leases", "destroy", "10.20.0.11")
    with pytest.raises(ApiException) as e:
        leases.get_lease("10.20.0.11")
    assert error_body(e.value)["Code"] == 404


def test_fields_outside_the_model_are_dropped(drppy):
    """As dr-provision's JSON decoding into its structs: not stored, not served."""
    r = drppy.http.post("/profiles", json={"Name": "extra", "Colour": "blue",
                                           "Meta": {"x": "1"}})
    assert r.status_code == 201, r.text
    assert "Colour" not in r.json() and "Colour" not in drppy.http.get("/profiles/extra").json()
    r = drppy.http.put("/profiles/extra", json={"Name": "extra", "Shape": "round"})
    assert r.status_code == 200 and "Shape" not in r.json()
    drppy.http.delete("/profiles/extra")


def test_a_machine_gets_a_secret_and_keeps_it(drppy):
    machines = drppy.api(rackn.MachinesApi)
    m = machines.create_machine(rm.Machine(name="secret-holder"))
    assert m.secret and len(m.secret) >= 16
    raw = drppy.http.get(f"/machines/{m.uuid}").json()
    r = drppy.http.put(f"/machines/{m.uuid}", json={k: v for k, v in raw.items()
                                                    if k != "Secret"})
    assert r.status_code == 200 and r.json()["Secret"] == m.secret  # left out: kept
    r = drppy.http.patch(f"/machines/{m.uuid}", json=[
        {"op": "replace", "path": "/Secret", "value": "rotated-secret-0001"}])
    assert r.status_code == 200 and r.json()["Secret"] == "rotated-secret-0001"
    other = machines.create_machine(rm.Machine(name="secret-holder-2"))
    assert other.secret != m.secret


def test_a_port_that_cannot_be_bound_is_reported_and_the_api_serves_on(drp_factory):
    """A second node on the same TFTP and DHCP ports: each service says why it is not
    serving in Info's errors (and the log); the API answers."""
    from tests.drpserver import free_port
    tftp, dhcp = str(free_port()), str(free_port())
    plane = ["--disable-tftp", "false", "--tftp-port", tftp,
             "--disable-dhcp", "false", "--dhcp-port", dhcp, "--dhcp-ifs", "lo"]
    first = drp_factory("first", *plane)
    second = drp_factory("second", *plane)
    with first.client() as c:
        info = c.get("/info").json()
        for _ in range(100):
            if info["tftp_enabled"] and info["dhcp_enabled"]:
                break
            time.sleep(0.1)
            info = c.get("/info").json()
        assert (info["tftp_enabled"], info["dhcp_enabled"], info["errors"]) == (True, True, [])
    with second.client() as c:
        for _ in range(100):
            info = c.get("/info").json()
            if len(info["errors"]) == 2:
                break
            time.sleep(0.1)
        assert (info["tftp_enabled"], info["dhcp_enabled"]) == (False, False), info
        assert info["errors"] == [
            f"dhcp: UDP port {dhcp} is in use by another program (another DHCP server?): stop "
            "it, or set --dhcp-port or --disable-dhcp true",
            f"tftp: UDP port {tftp} is in use by another program (another TFTP server?): stop "
            "it, or set --tftp-port or --disable-tftp true"], info
        assert c.post("/profiles", json={"Name": "still-serving"}).status_code == 201
