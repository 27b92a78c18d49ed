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


@object_verb("list", "[Field=value ...]", summary="List the {kind}, all or those matching filters",
             arguments=(("Field=value", "only {kind} whose Field equals value (all given must "
                                        "match); offset=N and limit=N page the list"),),
             example="drpcli {kind} list {filter}")
def _list(client, kind, args):
    params = dict(a.split("=", 1) for a in args if "=" in a)
    return client.json("GET", f"/{kind.name}", params=params)


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
