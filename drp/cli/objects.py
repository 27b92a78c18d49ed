"""drpcli's verbs for every object kind (list, show, exists, create, update, patch, destroy),
registered once per kind with that kind's own help."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonpatch

from drp.cli.client import CliError, Client
from drp.cli.commands import command, describe, need
from drp.models import KINDS, Kind

JSON_SOURCES = "literal JSON, a file holding it, or - for stdin"
# Sample keys and required-field values for the examples (anything else: "example").
_SAMPLES = {"Subnet": "192.168.124.0/24", "Addr": "192.168.124.10", "ID": "example.tmpl",
            "Machine": "<machine uuid>", "Uuid": "<uuid>"}


def read_json(arg: str):
    if arg == "-":
        text = sys.stdin.read()
    elif not arg.lstrip().startswith(("{", "[")) and Path(arg).is_file():
        text = Path(arg).read_text()
    else:
        text = arg
    try:
        return json.loads(text)
    except ValueError as e:
        raise CliError(f"not valid JSON ({e}): {text[:80]!r}") from None


def merge(current, changes):
    """RFC 7396 JSON merge: drpcli's `update` semantics (null removes a field)."""
    if not isinstance(changes, dict):
        return changes
    out = dict(current) if isinstance(current, dict) else {}
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def _fill(text: str, kind: Kind) -> str:
    sample = {name: _SAMPLES.get(name, "example") for name in kind.required}
    field = "Name" if "Name" in (kind.key, *kind.fields) else kind.key
    return text.format(kind=kind.name, model=kind.model, key=kind.key,
                       one=_SAMPLES.get(kind.key, "example"), sample=json.dumps(sample),
                       filter=f"{field}={_SAMPLES.get(field, 'example')}")


def _bound(fn, kind: Kind):
    def run(client: Client, args: list[str]):
        return fn(client, kind, args)
    return run


def object_verb(verb: str, synopsis: str, *, summary: str,
                arguments: tuple[tuple[str, str], ...] = (), example: str = ""):
    """Register fn(client, kind, args) as `KIND verb` for every object kind. In the texts {kind},
    {model} and {key} name it; {one} is a sample key, {sample} a JSON object with the kind's
    required fields, {filter} a sample Field=value."""
    def register(fn):
        for kind in KINDS.values():
            command(kind.name, verb, synopsis, summary=_fill(summary, kind),
                    arguments=tuple((name, _fill(text, kind)) for name, text in arguments),
                    example=_fill(example, kind))(_bound(fn, kind))
        return fn
    return register


for _kind in KINDS.values():
    describe(_kind.name, f"{_kind.model[0].upper()}{_kind.model[1:]} objects, keyed by {_kind.key}")

KEY = ("KEY", "the {model}'s {key}")


_OPS = ("Eq", "Ne", "Lt", "Lte", "Gt", "Gte", "In", "Nin", "Re", "Between", "Except")


def list_params(args: list[str]) -> list[tuple[str, str]]:
    """The query of `KIND list ARGS` as dr-provision's drpcli builds it: Field=value pairs
    (passed on as they are: Name=Eq(x), sort=Name) when the first argument holds an =, else
    its free form: `Name Eq x`, `Name In a,b`, `Name Between lo hi`, `reverse`, `sort F`,
    `limit N`, `offset N`."""
    if args and "=" in args[0]:
        for arg in args:
            if "=" not in arg:
                raise CliError(f"Filter argument requires an '=' separator: {arg}")
        return [tuple(arg.split("=", 1)) for arg in args]
    params, i = [], 0
    while i < len(args):
        name = args[i]
        if name in ("reverse", "decode"):
            params.append((name, "true"))
            i += 1
        elif name in ("sort", "limit", "offset", "slim", "params"):
            if i + 1 >= len(args):
                raise CliError(f"Invalid Filter: {name} requires exactly one parameter")
            params.append((name, args[i + 1]))
            i += 2
        else:
            if i + 1 >= len(args):
                raise CliError(f"Invalid Filter: {name} requires an op and at least 1 parameter")
            op = args[i + 1].lower().title()
            values = args[i + 2:i + 4]
            if op not in _OPS:
                raise CliError(f"Invalid Filter {name}: unknown op {op}")
            if not values:
                raise CliError(f"Invalid Filter: {name} op {op} requires a parameter")
            if op in ("Between", "Except") and "," not in values[0]:
                if len(values) < 2:
                    raise CliError(f"Invalid Filter: {name} op {op} requires 1 or 2 parameters")
                params.append((name, f"{op}({values[0]},{values[1]})"))
                i += 4
            else:
                params.append((name, f"{op}({values[0]})"))
                i += 3
    return params


@object_verb("list", "[FILTER ...]",
             summary="List the {kind}, all or those matching filters",
             arguments=(("FILTER", "Field=value: only {kind} whose Field is value; value may "
                                   "be an operator: Eq(x) Ne(x) Lt(x) Lte(x) Gt(x) Gte(x) "
                                   "In(a,b) Nin(a,b) Re(regex) Between(lo,hi) Except(lo,hi). "
                                   "Fields given once must all match, a field given twice "
                                   "matches either. sort=Field, reverse=true, offset=N and "
                                   "limit=N order and page the list. Or drpcli's free form: "
                                   "Name Eq x, Name Between a b, reverse, sort Name, limit 2"),),
             example="drpcli {kind} list {filter}")
def _list(client, kind, args):
    return client.json("GET", f"/{kind.name}", params=list_params(args))


@object_verb("show", "KEY", summary="Show one {model} by {key}", arguments=(KEY,),
             example="drpcli {kind} show {one}")
def _show(client, kind, args):
    need(args, 1, f"{kind.name} show KEY")
    return client.json("GET", f"/{kind.name}/{args[0]}")


@object_verb("exists", "KEY", summary="Exit 0 if a {model} exists, else say 404 and exit 1",
             arguments=(KEY,), example="drpcli {kind} exists {one}")
def _exists(client, kind, args):
    need(args, 1, f"{kind.name} exists KEY")
    client.request("HEAD", f"/{kind.name}/{args[0]}")


@object_verb("create", "JSON", summary="Create a {model} and print it as stored",
             arguments=(("JSON", "the new {model} as a JSON object: " + JSON_SOURCES
                                 + "; a bare word that is none of these is taken as its {key}"),),
             example="drpcli {kind} create '{sample}'")
def _create(client, kind, args):
    need(args, 1, f"{kind.name} create JSON")
    try:
        body = read_json(args[0])
    except CliError:
        if args[0] == "-" or args[0].lstrip().startswith(("{", "[")):
            raise
        body = args[0]  # not JSON and not a file: a bare key
    if isinstance(body, str):  # `drpcli profiles create foo` creates by key alone
        body = {kind.key: body}
    return client.json("POST", f"/{kind.name}", body)


@object_verb("update", "KEY JSON", summary="Change fields of a {model} and print the result",
             arguments=(KEY, ("JSON", "the fields to change, merged into the {model} (a null "
                                      "removes a field, objects merge): " + JSON_SOURCES)),
             example="drpcli {kind} update {one} '{{\"Description\": \"updated\"}}'")
def _update(client, kind, args):
    need(args, 2, f"{kind.name} update KEY JSON")
    current = client.json("GET", f"/{kind.name}/{args[0]}")
    patch = jsonpatch.make_patch(current, merge(current, read_json(args[1])))
    return client.json("PATCH", f"/{kind.name}/{args[0]}", list(patch))


@object_verb("patch", "KEY PATCH", summary="Apply a JSON Patch to a {model} and print the result",
             arguments=(KEY, ("PATCH", "a JSON Patch (RFC 6902) array, applied whole or not "
                                       "at all (a failing test op answers 409): " + JSON_SOURCES)),
             example="drpcli {kind} patch {one} "
                     "'[{{\"op\": \"replace\", \"path\": \"/Description\", \"value\": \"x\"}}]'")
def _patch(client, kind, args):
    need(args, 2, f"{kind.name} patch KEY PATCH")
    return client.json("PATCH", f"/{kind.name}/{args[0]}", read_json(args[1]))


@object_verb("destroy", "KEY", summary="Delete a {model}", arguments=(KEY,),
             example="drpcli {kind} destroy {one}")
def _destroy(client, kind, args):
    need(args, 1, f"{kind.name} destroy KEY")
    client.json("DELETE", f"/{kind.name}/{args[0]}")
    return f"Deleted {kind.model} {args[0]}"
