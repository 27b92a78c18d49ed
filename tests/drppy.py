"""RackN's Python client for dr-provision (drppy-client, pinned in pyproject's test extra)
pointed at a real drp process: fixtures for the API-fidelity tests (issue 16).

    def test_x(drppy):                      # a fresh server per module, an ApiClient on it
        machines = drppy.api(MachinesApi)   # any drppy_client.api.*Api class
        m = machines.create_machine(Machine(name="m1"))
        raw = drppy.http.get("/machines")   # httpx, for what the client cannot express
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest
from drppy_client import ApiClient, Configuration
from drppy_client.rest import ApiException

from tests.drpserver import AUTH, DrpServer


@dataclass
class Drppy:
    server: DrpServer
    client: ApiClient
    http: httpx.Client

    def api(self, cls):
        return cls(self.client)


def client_for(server: DrpServer, user: str = AUTH[0], password: str = AUTH[1]) -> ApiClient:
    cfg = Configuration()
    cfg.host = server.url + "/api/v3"
    cfg.username, cfg.password = user, password
    cfg.verify_ssl = False  # the server's certificate is self-signed
    return ApiClient(cfg)


@pytest.fixture(scope="module")
def drppy(module_drp_factory):
    server = module_drp_factory("drppy")
    with server.client() as http:
        yield Drppy(server, client_for(server), http)


def error_body(exc: ApiException) -> dict:
    """The dr-provision error body of a refused call, checked: exactly {Model, Key, Type,
    Messages, Code}, with Code its HTTP status."""
    body = json.loads(exc.body)
    assert set(body) == {"Model", "Key", "Type", "Messages", "Code"}, body
    assert body["Code"] == exc.status, body
    return body


def refused(call) -> ApiException:
    """What a client call that must fail raised."""
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def refusal_status(call) -> int:
    """The status of a refused call; a server refusal carries one message in dr-provision's
    error body (status 0 is the client refusing before it sends anything)."""
    e = refused(call)
    if e.status and e.body:
        assert len(error_body(e)["Messages"]) == 1, e.body
    return e.status


def user_with_claims(http: httpx.Client, user: str, actions: str, scope: str = "machines",
                     password: str = "pw") -> None:
    """A user (`password`) whose one role (named after it) grants `actions` on every object
    of `scope`."""
    http.post("/roles", json={"Name": f"{user}-role", "Claims": [
        {"scope": scope, "action": actions, "specific": "*"}]}).raise_for_status()
    http.post("/users", json={"Name": user, "Password": password, "Roles": [f"{user}-role"]}
              ).raise_for_status()
