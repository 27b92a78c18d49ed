"""Object kinds served under /api/v3: their keys, field types and validation.

Keys follow dr-provision: machines and jobs are keyed by Uuid, reservations by Addr, templates by
ID, everything else by Name.
"""
from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field


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
    fields: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    generated_key: bool = False  # a missing key is generated (uuid4)


_STR, _DICT, _LIST, _BOOL, _INT = str, dict, list, bool, int
_COMMON = {"Meta": _DICT, "Description": _STR, "Documentation": _STR, "Params": _DICT}

KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("machines", "machine", "Uuid",
             {"Name": _STR, "Address": _STR, "Profiles": _LIST, "Workflow": _STR, "Stage": _STR,
              "BootEnv": _STR, "Runnable": _BOOL, "HardwareAddrs": _LIST, "Tasks": _LIST,
              "CurrentTask": _INT, "Context": _STR, "Locked": _BOOL},
             required=("Name",), generated_key=True),
        Kind("jobs", "job", "Uuid",
             {"Machine": _STR, "Task": _STR, "State": _STR, "Stage": _STR, "BootEnv": _STR,
              "ExitState": _STR, "Previous": _STR, "Workflow": _STR, "Archived": _BOOL},
             required=("Machine",), generated_key=True),
        Kind("profiles", "profile", "Name", {"Profiles": _LIST}, required=("Name",)),
        Kind("params", "param", "Name", {"Schema": _DICT, "Secure": _BOOL}, required=("Name",)),
        Kind("subnets", "subnet", "Name",
             {"Subnet": _STR, "ActiveStart": _STR, "ActiveEnd": _STR, "Enabled": _BOOL,
              "Proxy": _BOOL, "ActiveLeaseTime": _INT, "ReservedLeaseTime": _INT,
              "Options": _LIST, "Strategy": _STR},
             required=("Name", "Subnet")),
        Kind("reservations", "reservation", "Addr",
             {"Token": _STR, "Strategy": _STR, "Options": _LIST, "Scoped": _BOOL},
             required=("Addr",)),
        Kind("bootenvs", "bootEnv", "Name",
             {"OS": _DICT, "Templates": _LIST, "Kernel": _STR, "Initrds": _LIST,
              "BootParams": _STR, "OnlyUnknown": _BOOL, "RequiredParams": _LIST,
              "OptionalParams": _LIST},
             required=("Name",)),
        Kind("stages", "stage", "Name",
             {"BootEnv": _STR, "Tasks": _LIST, "Templates": _LIST, "Profiles": _LIST,
              "Reboot": _BOOL, "RunnerWait": _BOOL},
             required=("Name",)),
        Kind("tasks", "task", "Name",
             {"Templates": _LIST, "RequiredParams": _LIST, "OptionalParams": _LIST,
              "Prerequisites": _LIST},
             required=("Name",)),
        Kind("templates", "template", "ID", {"Contents": _STR}, required=("ID",)),
        Kind("workflows", "workflow", "Name", {"Stages": _LIST}, required=("Name",)),
        Kind("users", "user", "Name",
             {"Roles": _LIST, "Secret": _STR, "PasswordHash": _STR}, required=("Name",)),
        Kind("prefs", "pref", "Name", {"Val": _STR}, required=("Name", "Val")),
        Kind("roles", "role", "Name", {"Claims": _LIST}, required=("Name",)),
    ]
}

# Fields the server owns: clients may send them but they are recomputed on every write.
SERVER_FIELDS = ("Validated", "Available", "Errors", "ReadOnly", "Bundle")
CLAIM_FIELDS = {"Scope", "Action", "Specific"}  # a role's claims (dr-provision's Claim)
# Fields never sent to clients.
HIDDEN_FIELDS = {"users": ("PasswordHash", "Secret")}
# A field besides the key that is unique within its kind (machines: Name). The store keeps its
# value in an indexed column (objects.name), so checking it is a lookup, not a scan of bodies.
UNIQUE_FIELDS = {"machines": "Name"}


def kind_or_404(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"no such object type: {name}", model=name) from None


def _type_name(t) -> str:
    names = {str: "string", dict: "object", list: "array", bool: "boolean", int: "number"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def normalize(kind: Kind, obj, *, key: str | None = None, readonly: bool = False,
              bundle: str = "") -> dict:
    """Validate a client's object and return it as stored, or raise Invalid (422) listing
    every problem found (not just the first)."""
    if not isinstance(obj, dict):
        raise NotAnObject(f"{kind.model} must be a JSON object", model=kind.name, key=key or "")
    obj = {k: v for k, v in obj.items() if k not in SERVER_FIELDS}
    if kind.generated_key and not obj.get(kind.key):
        obj[kind.key] = key or str(uuid.uuid4())
    problems = []
    for name in kind.required:
        if obj.get(name) in (None, ""):
            problems.append(f"{name} is required")
    for name, want in {**_COMMON, **kind.fields, kind.key: str}.items():
        value = obj.get(name)
        if value is None:
            continue
        # bool is an int in Python; a number field must not accept true/false.
        bad = not isinstance(value, want) or (want is int and isinstance(value, bool))
        if bad:
            problems.append(f"{name} must be a {_type_name(want)}, not {type(value).__name__}")
    keyval = obj.get(kind.key)
    if key is not None and keyval not in (None, key):
        problems.append(f"{kind.key} {keyval!r} does not match the key in the URL {key!r}")
    if isinstance(keyval, str) and ("/" in keyval or "\x00" in keyval):
        problems.append(f"{kind.key} may not contain '/' or NUL")
    problems += _kind_checks(kind.name, obj)
    if problems:
        raise Invalid(*problems, model=kind.name, key=str(keyval or key or ""))
    for name, default in (("Params", {}), ("Meta", {})):
        obj.setdefault(name, default)
    if kind.name == "users":
        # A user created without Roles is a superuser (only a superuser may create users);
        # Roles: [] means no claims at all. An update without Roles keeps the current ones.
        obj.setdefault("Roles", ["superuser"])
    obj.update(Validated=True, Available=True, Errors=[], ReadOnly=readonly)
    if bundle:
        obj["Bundle"] = bundle
    return obj


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
            if not isinstance(claim, dict) or set(claim) - CLAIM_FIELDS or not all(
                    isinstance(claim.get(f, ""), str) for f in CLAIM_FIELDS):
                problems.append(f"Claims[{i}] must be an object of strings: Scope, Action, "
                                "Specific (each a comma-separated list or *)")
    if kind == "jobs" and obj.get("State") not in (None, "created", "running", "failed",
                                                   "finished", "incomplete"):
        problems.append("State must be one of created, running, failed, finished, incomplete")
    return problems


def public(kind_name: str, obj: dict) -> dict:
    """The object as a client sees it."""
    hidden = HIDDEN_FIELDS.get(kind_name)
    if not hidden:
        return obj
    return {k: v for k, v in obj.items() if k not in hidden}
