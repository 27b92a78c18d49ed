"""Object kinds served under /api/v3: their keys, field types and validation.

Keys follow dr-provision: machines and jobs are keyed by Uuid, reservations by Addr, templates by
ID, everything else by Name.
"""
from __future__ import annotations

import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass, field

from drp.modeldefs import MODELS
from drp.modelvalues import fill


class ObjectError(Exception):
    """An object a client sent (or asked for) that is not one; drp/api answers it."""

    def __init__(self, *messages: str, model: str = "", key: str = ""):
        super().__init__("; ".join(messages))
        self.messages, self.model, self.key = list(messages), model, key


class UnknownKind(ObjectError):
    """No such object type."""


class NotAnObject(ObjectError):
    """The body is not a JSON object."""


class Invalid(ObjectError):
    """Every validation problem found, one message each."""


@dataclass(frozen=True)
class Kind:
    name: str  # the URL segment, e.g. "machines"
    model: str  # dr-provision's model name, e.g. "machine"
    key: str  # the key field, e.g. "Uuid"
    fields: dict[str, str] = field(default_factory=dict)  # its model: field -> type code
    required: tuple[str, ...] = ()
    generated_key: bool = False  # a missing key is generated (uuid4)


def _kind(name: str, model: str, key: str, required: tuple[str, ...], **kw) -> Kind:
    return Kind(name, model, key, dict(MODELS[name]), required=required, **kw)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        _kind("machines", "machine", "Uuid", ("Name",), generated_key=True),
        _kind("jobs", "job", "Uuid", ("Machine",), generated_key=True),
        _kind("profiles", "profile", "Name", ("Name",)),
        _kind("params", "param", "Name", ("Name",)),
        _kind("subnets", "subnet", "Name", ("Name", "Subnet")),
        _kind("reservations", "reservation", "Addr", ("Addr",)),
        _kind("leases", "lease", "Addr", ("Addr",)),
        _kind("bootenvs", "bootEnv", "Name", ("Name",)),
        _kind("stages", "stage", "Name", ("Name",)),
        _kind("tasks", "task", "Name", ("Name",)),
        _kind("templates", "template", "ID", ("ID",)),
        _kind("workflows", "workflow", "Name", ("Name",)),
        _kind("users", "user", "Name", ("Name",)),
        _kind("roles", "role", "Name", ("Name",)),
    ]
}

# A role's claims: dr-provision's Claim (scope, action, specific); the capitalized spelling drp
# used before issue 16 is accepted too (and stored as dr-provision's).
CLAIM_FIELDS = {"scope", "action", "specific"}
_CLAIM_KEYS = CLAIM_FIELDS | {f.capitalize() for f in CLAIM_FIELDS}
# Fields never sent to clients.
HIDDEN_FIELDS = {"users": ("PasswordHash", "Secret")}
# A field besides the key that is unique within its kind (machines: Name). The store keeps its
# value in an indexed column (objects.name), so checking it is a lookup, not a scan of bodies.
UNIQUE_FIELDS = {"machines": "Name"}
# Kinds with /<kind>/<key>/params routes: those of ours whose dr-provision API page lists them.
PARAM_KINDS = ("machines", "profiles", "reservations", "stages", "subnets")


def kind_or_404(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"no such object type: {name}", model=name) from None


def normalize(kind: Kind, obj, *, key: str | None = None, current: dict | None = None,
              user: str = "", readonly: bool = False, bundle: str = "") -> dict:
    """Validate a client's object and return it as stored, or raise Invalid (422) listing
    every problem found (not just the first). The stored object has every field of the
    model (zero values for those not sent) and the server's fields (drp.modeldefs
    SERVER_FIELDS) set here: creation/modification time and user, Validated, ... A client
    may send those only with the value they have (`current`: the object being replaced).
    A content bundle's objects (bundle set) get the server's values whatever they carry."""
    if not isinstance(obj, dict):
        raise NotAnObject(f"{kind.model} must be a JSON object", model=kind.name, key=key or "")
    obj = dict(obj)
    if kind.generated_key and not obj.get(kind.key):
        obj[kind.key] = key or str(uuid.uuid4())
    if kind.name == "machines" and not obj.get("Secret"):
        # dr-provision gives every machine a random Secret (its tokens are signed with it;
        # changing it revokes them); one left out of an update keeps the current one.
        obj["Secret"] = (current or {}).get("Secret") or secrets.token_urlsafe(12)
    if kind.name == "users" and current is None:
        # A user created without Roles is a superuser (only a superuser may create users);
        # Roles: [] means no claims at all. (An update without Roles keeps the current ones.)
        obj.setdefault("Roles", ["superuser"])
    problems = [f"{name} is required" for name in kind.required if obj.get(name) in (None, "")]
    stored, found = fill(kind.name, obj, current=current, user=user, readonly=readonly,
                         bundle=bundle, strict=not bundle)
    problems += found + _key_checks(kind, obj, key) + _kind_checks(kind.name, obj)
    if problems:
        raise Invalid(*problems, model=kind.name, key=str(obj.get(kind.key) or key or ""))
    return stored


def _key_checks(kind: Kind, obj: dict, key: str | None) -> list[str]:
    keyval, problems = obj.get(kind.key), []
    if key is not None and keyval not in (None, key):
        problems.append(f"{kind.key} {keyval!r} does not match the key in the URL {key!r}")
    if isinstance(keyval, str) and ("/" in keyval or "\x00" in keyval):
        problems.append(f"{kind.key} may not contain '/' or NUL")
    return problems


def _kind_checks(kind: str, obj: dict) -> list[str]:
    problems = []
    if kind == "machines" and isinstance(obj.get("Uuid"), str):
        try:
            uuid.UUID(obj["Uuid"])
        except ValueError:
            problems.append(f"Uuid {obj['Uuid']!r} is not a UUID")
    if kind == "jobs" and isinstance(obj.get("Uuid"), str):
        try:
            uuid.UUID(obj["Uuid"])
        except ValueError:
            problems.append(f"Uuid {obj['Uuid']!r} is not a UUID")
    for name in ("Address", "ActiveStart", "ActiveEnd", "Addr"):
        value = obj.get(name)
        if isinstance(value, str) and value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                problems.append(f"{name} {value!r} is not an IP address")
    if kind == "subnets" and isinstance(obj.get("Subnet"), str) and obj["Subnet"]:
        try:
            ipaddress.ip_network(obj["Subnet"], strict=False)
        except ValueError:
            problems.append(f"Subnet {obj['Subnet']!r} is not a CIDR (e.g. 10.0.0.0/24)")
    if kind == "users" and isinstance(obj.get("Roles"), list):
        if not all(isinstance(r, str) and r for r in obj["Roles"]):
            problems.append("Roles must be a list of role names (non-empty strings)")
    if kind == "roles" and isinstance(obj.get("Claims"), list):
        for i, claim in enumerate(obj["Claims"]):
            if not isinstance(claim, dict) or set(claim) - _CLAIM_KEYS or not all(
                    isinstance(v, str) for v in claim.values()):
                problems.append(f"Claims[{i}] must be an object of strings: scope, action, "
                                "specific (each a comma-separated list or *)")
    if kind in ("subnets", "reservations", "leases"):
        problems += dhcp_checks(kind, obj)
    if kind == "jobs" and obj.get("State") not in (None, "created", "running", "failed",
                                                   "finished", "incomplete"):
        problems.append("State must be one of created, running, failed, finished, incomplete")
    return problems


PICKERS = ("none", "hint", "nextFree", "mostExpired")
# Options each message sets itself (the lease times: ActiveLeaseTime, ReservedLeaseTime).
SERVER_OPTIONS = {50: "the requested address", 51: "the lease time", 52: "overload",
                  53: "the message type", 54: "the server identifier", 55: "the client's list",
                  57: "the client's size", 58: "T1, half the lease time",
                  59: "T2, three quarters of the lease time", 61: "the client identifier"}
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def dhcp_checks(kind: str, obj: dict) -> list[str]:
    """What drp's DHCP server (drp.dhcp) can serve: dr-provision's MAC strategy, managed
    subnets, ranges inside their subnet, options whose values are templates it can render."""
    problems = []
    if obj.get("Strategy") not in (None, "", "MAC"):
        problems.append(f"Strategy {obj['Strategy']!r} is not supported: drp leases by MAC")
    for name in ("Proxy", "Unmanaged"):
        if obj.get(name) is True:
            problems.append(f"{name} subnets are not supported by drp; set {name} to false")
    for name in ("ActiveLeaseTime", "ReservedLeaseTime", "Duration"):
        value = obj.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            problems.append(f"{name} must not be negative")
    token = obj.get("Token")
    if kind == "reservations" and isinstance(token, str) and token and not MAC.fullmatch(token):
        problems.append(f"Token {token!r} is not a MAC address like 52:54:00:12:34:56 "
                        "(lower case, colons)")
    for i, option in enumerate(obj.get("Options") or []):
        problems += _option_problems(f"Options[{i}]", option)
    pickers = obj.get("Pickers")
    if kind == "subnets" and isinstance(pickers, list):
        problems += [f"Pickers: {p!r} is not one of {', '.join(PICKERS)}"
                     for p in pickers if p not in PICKERS]
    if kind == "subnets":
        problems += _range_problems(obj)
    return problems


def _option_problems(where: str, option) -> list[str]:
    """What a well-typed option may still get wrong (types: said by modelvalues.fill)."""
    # What DHCP will send is checked here; imported on first use: drp.dhcp sits above the
    # models (its engine reads modelvalues), a module-level import would point upward.
    from drp.dhcp import optvalues, template
    if not isinstance(option, dict):
        return []
    code, value = option.get("Code"), option.get("Value", "")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(value, str):
        return []
    if not 1 <= code <= 254:
        return [f"{where}.Code must be a DHCP option code from 1 to 254"]
    if code in SERVER_OPTIONS:
        return [f"{where}: option {code} ({SERVER_OPTIONS[code]}) is not configurable"]
    try:
        template.check(value)
        if value and "{{" not in value:  # a plain value: its encoding can be checked now
            # (an empty one is not sent, as a template that renders to nothing)
            optvalues.encode(code, value)
    except (template.TemplateError, optvalues.BadOption) as e:
        return [f"{where}.Value: {e}"]
    return []


def _range_problems(obj: dict) -> list[str]:
    try:
        net = ipaddress.ip_network(obj.get("Subnet") or "", strict=False)
    except ValueError:
        return []  # said by the Subnet check
    if net.version != 4:
        return [f"Subnet {obj['Subnet']!r}: drp serves DHCPv4 only"]
    problems, ends = [], {}
    for name in ("ActiveStart", "ActiveEnd"):
        try:
            ends[name] = ipaddress.ip_address(obj.get(name) or "")
        except ValueError:
            continue
        if ends[name] not in net:
            problems.append(f"{name} {obj[name]} is not inside Subnet {obj['Subnet']}")
    if len(ends) == 2 and not problems and ends["ActiveStart"] > ends["ActiveEnd"]:
        problems.append(f"ActiveStart {obj['ActiveStart']} is after ActiveEnd {obj['ActiveEnd']}")
    return problems


def public(kind_name: str, obj: dict) -> dict:
    """The object as a client sees it."""
    hidden = HIDDEN_FIELDS.get(kind_name)
    if not hidden:
        return obj
    return {k: v for k, v in obj.items() if k not in hidden}
