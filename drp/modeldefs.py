"""dr-provision's models, one description each: every field, its JSON type and zero value, and
which fields the server keeps (read-only to clients).

Taken from RackN's drppy-client 4.17.0 (docs/<Model>.md; the JSON names are its attribute_map).
A field's type is a short code:
    s string   i integer   b boolean   t time (RFC 3339; Go's zero time when unset)
    o any JSON object      m map of name -> any JSON      ms map of name -> string (Meta)
    [x] a list of x        Name  a nested model (its zero is its own zero object)
Go marshals every struct field, so dr-provision sends each one, zero values included; so do we.
"""
from __future__ import annotations

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's time.Time{} as JSON

# Kept by the server on every write. A client may send the value the object already has (a
# GET, edit, PUT round trip) but not another one (dr-provision: 422 ValidationError).
SERVER_FIELDS = ("Available", "Bundle", "CreatedAt", "CreatedBy", "Endpoint", "Errors",
                 "LastModifiedAt", "LastModifiedBy", "Partial", "ReadOnly", "Validated")

_AUDIT = {"Available": "b", "Bundle": "s", "CreatedAt": "t", "CreatedBy": "s", "Endpoint": "s",
          "Errors": "[s]", "LastModifiedAt": "t", "LastModifiedBy": "s", "Meta": "ms",
          "ReadOnly": "b", "Validated": "b"}

# Nested models (objects inside an object; not kinds of their own).
NESTED: dict[str, dict[str, str]] = {
    "Action": {"Command": "s", "CommandSet": "s", "Job": "s", "Model": "o", "Params": "m",
               "Plugin": "s"},
    "ArchInfo": {"BootParams": "s", "Initrds": "[s]", "IsoFile": "s", "IsoUrl": "s",
                 "Kernel": "s", "Loader": "s", "Sha256": "s"},
    "Claim": {"action": "s", "scope": "s", "specific": "s"},
    "DhcpOption": {"Code": "i", "Value": "s"},
    "MachineFingerprint": {"CSNHash": "s", "CloudInstanceID": "s", "MemoryIds": "[s]",
                           "SSNHash": "s", "SystemUUID": "s"},
    "OsInfo": {"Codename": "s", "Family": "s", "IsoFile": "s", "IsoSha256": "s", "IsoUrl": "s",
               "Name": "s", "SupportedArchitectures": "m", "Version": "s"},
    "TaskStack": {"CurrentJob": "s", "CurrentTask": "i", "TaskList": "[s]"},
    "TemplateInfo": {"Contents": "s", "EndDelimiter": "s", "ID": "s", "Link": "s", "Meta": "ms",
                     "Name": "s", "Path": "s", "StartDelimiter": "s"},
    # The record a content bundle is served as (GET /contents: ContentSummary's meta).
    "ContentMetaData": {f: "s" for f in (
        "Author", "CodeSource", "Color", "Copyright", "Description", "DisplayName", "DocUrl",
        "Documentation", "Icon", "License", "Name", "Order", "Prerequisites",
        "RequiredFeatures", "Source", "Tags", "Type", "Version")} | {
        "Overwritable": "b", "Writable": "b"},
}

# One model per kind we serve, keyed by the kind's URL segment.
MODELS: dict[str, dict[str, str]] = {
    "machines": _AUDIT | {
        "Address": "s", "Arch": "s", "BootEnv": "s", "Context": "s", "CurrentJob": "s",
        "CurrentTask": "i", "Description": "s", "Fingerprint": "MachineFingerprint",
        "HardwareAddrs": "[s]", "JobExitState": "s", "JobResultErrors": "[s]", "JobState": "s",
        "Locked": "b", "Name": "s", "OS": "s", "Params": "m", "Partial": "b",
        "PendingWorkOrders": "i", "Pipeline": "s", "Pool": "s", "PoolAllocated": "b",
        "PoolStatus": "s",  # a Go string type (swagger shows it as an empty model)
        "Profiles": "[s]", "RetryTaskAttempt": "i", "Runnable": "b", "RunningWorkOrders": "i",
        "Secret": "s", "Stage": "s", "TaskErrorStacks": "[TaskStack]", "Tasks": "[s]",
        "Uuid": "s", "WorkOrderMode": "b", "Workflow": "s", "WorkflowComplete": "b"},
    "jobs": _AUDIT | {
        "Action": "Action", "Archived": "b", "BootEnv": "s", "Context": "s", "Current": "b",
        "CurrentIndex": "i", "EndTime": "t", "ExitState": "s", "ExtraClaims": "[Claim]",
        "Independent": "b", "Machine": "s", "NextIndex": "i", "Pipeline": "s", "Previous": "s",
        "ResultErrors": "[s]", "Stage": "s", "StartTime": "t", "State": "s", "TargetKey": "s",
        "TargetPrefix": "s", "Task": "s", "Token": "s", "Uuid": "s", "WorkOrder": "s",
        "Workflow": "s"},
    "profiles": _AUDIT | {
        "Description": "s", "Documentation": "s", "Name": "s", "Params": "m", "Partial": "b",
        "Profiles": "[s]"},
    "params": _AUDIT | {
        "Description": "s", "Documentation": "s", "Name": "s", "Schema": "o", "Secure": "b"},
    "subnets": _AUDIT | {
        "ActiveEnd": "s", "ActiveLeaseTime": "i", "ActiveStart": "s", "AllocateEnd": "s",
        "AllocateStart": "s", "Description": "s", "Documentation": "s", "Enabled": "b",
        "Name": "s", "NextServer": "s", "OnlyReservations": "b", "Options": "[DhcpOption]",
        "Params": "m", "Pickers": "[s]", "PrefixParameter": "s", "Profiles": "[s]",
        "Proxy": "b", "ReservedLeaseTime": "i", "SkipDAD": "b", "Strategy": "s", "Subnet": "s",
        "Unmanaged": "b"},
    "reservations": _AUDIT | {
        "Addr": "s", "Allocated": "b", "Description": "s", "Documentation": "s",
        "Duration": "i", "Machine": "s", "NextServer": "s", "Options": "[DhcpOption]",
        "Parameter": "s", "Params": "m", "PrefixParameter": "s", "Profiles": "[s]",
        "Scoped": "b", "SkipDAD": "b", "Strategy": "s", "Subnet": "s", "Token": "s"},
    "leases": _AUDIT | {
        "Addr": "s", "Duration": "i", "ExpireTime": "t", "MachineUuid": "s", "NextServer": "s",
        "Options": "[DhcpOption]", "ProvidedOptions": "[DhcpOption]", "SkipBoot": "b",
        "State": "s", "Strategy": "s", "Token": "s", "Via": "s"},
    "bootenvs": _AUDIT | {
        "BootParams": "s", "Description": "s", "Documentation": "s", "EndDelimiter": "s",
        "Initrds": "[s]", "Kernel": "s", "Loaders": "ms", "Name": "s", "OS": "OsInfo",
        "OnlyUnknown": "b", "OptionalParams": "[s]", "RequiredParams": "[s]",
        "StartDelimiter": "s", "Templates": "[TemplateInfo]"},
    "stages": _AUDIT | {
        "BootEnv": "s", "Description": "s", "Documentation": "s", "Name": "s",
        "OptionalParams": "[s]", "OutputParams": "[s]", "Params": "m", "Partial": "b",
        "Profiles": "[s]", "Reboot": "b", "RequiredParams": "[s]", "RunnerWait": "b",
        "Tasks": "[s]", "Templates": "[TemplateInfo]"},
    "tasks": _AUDIT | {
        "Description": "s", "Documentation": "s", "ExtraClaims": "[Claim]",
        "ExtraDuration": "i", "ExtraRoles": "[s]", "Name": "s", "OptionalParams": "[s]",
        "OutputParams": "[s]", "Prerequisites": "[s]", "RequiredParams": "[s]",
        "Templates": "[TemplateInfo]"},
    "templates": _AUDIT | {
        "Contents": "s", "Description": "s", "EndDelimiter": "s", "ID": "s",
        "StartDelimiter": "s"},
    "workflows": _AUDIT | {
        "Description": "s", "Documentation": "s", "Name": "s", "Stages": "[s]"},
    "users": _AUDIT | {
        "Description": "s", "Name": "s", "PasswordHash": "s", "Roles": "[s]", "Secret": "s"},
    "roles": _AUDIT | {
        "Claims": "[Claim]", "Description": "s", "Documentation": "s", "Name": "s"},
}
# Where a field left out is not its zero value: dr-provision creates a job "created".
# dr-provision fills a subnet's lease times, strategy and pickers when they are left out.
DEFAULTS: dict[str, dict] = {
    "jobs": {"State": "created"},
    "subnets": {"ActiveLeaseTime": 60, "ReservedLeaseTime": 7200, "Strategy": "MAC",
                "Pickers": ["hint", "nextFree", "mostExpired"]},
    "reservations": {"Strategy": "MAC"},
    "leases": {"Strategy": "MAC"},
}

# Fields in the order they are stored and served (the docs' order): one order on every node.
MODELS = {kind: dict(sorted(spec.items())) for kind, spec in MODELS.items()}


def zero(code: str):
    """A fresh zero value for a field type code."""
    if code.startswith("["):
        return []
    if code in ("o", "m", "ms"):
        return {}
    if code in NESTED:
        return {name: zero(c) for name, c in NESTED[code].items()}
    return {"s": "", "i": 0, "b": False, "t": ZERO_TIME}[code]


def type_name(code: str) -> str:
    if code.startswith("["):
        return f"a list of {type_name(code[1:-1]).split(' ', 1)[1]}s"
    if code in NESTED:
        return f"{'an' if code[0] in 'AEIOU' else 'a'} {code} object"
    if code in ("o", "m", "ms"):
        return "an object" + (" of strings" if code == "ms" else "")
    return {"s": "a string", "i": "an integer", "b": "a boolean",
            "t": "an RFC 3339 time string"}[code]
