"""drpcli's param verbs, as dr-provision's drpcli has them, for every kind with params
(models.PARAM_KINDS): `params KEY [JSON]`, `get KEY param NAME`, `set KEY param NAME to VALUE`,
`remove KEY param NAME`. Values print as JSON (an unset param prints null)."""
from __future__ import annotations

import json
import sys
from urllib.parse import quote

from drp.cli.client import CliError, Client
from drp.cli.commands import command, need
from drp.cli.objects import JSON_SOURCES, read_json
from drp.models import KINDS, PARAM_KINDS, Kind

_FLAGS = {"--aggregate": "aggregate", "--decode": "decode"}
_FLAG_HELP = ("; --aggregate adds what its profiles (and the global profile) set; --decode "
              "(secure params decoded) is accepted too")


def _split_flags(args: list[str]) -> tuple[list[str], dict]:
    """The words that are not --aggregate / --decode, and those flags as query arguments."""
    words = [a for a in args if a not in _FLAGS]
    return words, {_FLAGS[a]: "true" for a in args if a in _FLAGS}


def _path(kind: Kind, key: str, name: str | None = None) -> str:
    path = f"/{kind.name}/{quote(key, safe='')}/params"
    return path if name is None else f"{path}/{quote(name, safe='/')}"


def _printed(value) -> str:
    return json.dumps(value, indent=2)  # a string prints quoted, null as null: JSON, as drpcli


def _value(arg: str):
    """VALUE as drpcli reads it: JSON (- for stdin), else the word itself as a string."""
    text = sys.stdin.read() if arg == "-" else arg
    try:
        return json.loads(text)
    except ValueError:
        return text


def _keyword(args: list[str], at: int, word: str, usage: str) -> None:
    if args[at] != word:
        raise CliError(f"expected {word!r}, not {args[at]!r}; usage: drpcli {usage}")


def _params(client: Client, kind: Kind, args: list[str]):
    usage = f"{kind.name} params KEY [JSON] [--aggregate]"
    words, flags = _split_flags(args)
    need(words, 1, usage)
    if len(words) > 2:
        raise CliError(f"unexpected argument {words[2]!r}; usage: drpcli {usage}")
    if len(words) == 2:
        return _printed(client.json("POST", _path(kind, words[0]), read_json(words[1])))
    return _printed(client.json("GET", _path(kind, words[0]), params=flags))


def _get(client: Client, kind: Kind, args: list[str]):
    usage = f"{kind.name} get KEY param NAME [--aggregate]"
    words, flags = _split_flags(args)
    need(words, 3, usage)
    _keyword(words, 1, "param", usage)
    return _printed(client.json("GET", _path(kind, words[0], words[2]), params=flags))


def _set(client: Client, kind: Kind, args: list[str]):
    usage = f"{kind.name} set KEY param NAME to VALUE"
    need(args, 5, usage)
    _keyword(args, 1, "param", usage)
    _keyword(args, 3, "to", usage)
    body = json.dumps(_value(args[4]))  # sent as is: a null value is a value too
    resp = client.request("POST", _path(kind, args[0], args[2]), content=body,
                          headers={"Content-Type": "application/json"})
    return _printed(resp.json())


def _remove(client: Client, kind: Kind, args: list[str]):
    usage = f"{kind.name} remove KEY param NAME"
    need(args, 3, usage)
    _keyword(args, 1, "param", usage)
    return _printed(client.json("DELETE", _path(kind, args[0], args[2])))


def _bound(fn, kind: Kind):
    def run(client: Client, args: list[str]):
        return fn(client, kind, args)
    return run


def _register(kind: Kind) -> None:
    key = ("KEY", f"the {kind.model}'s {kind.key}")
    name = ("NAME", "the param's name, e.g. kernel-console or ipmi/username")
    one = "example" if kind.key == "Name" else f"<{kind.key.lower()}>"
    command(kind.name, "params", "KEY [JSON] [--aggregate]",
            summary=f"Print a {kind.model}'s params, or replace them all with JSON",
            arguments=(key, ("JSON", "the new params, an object of name: value: "
                                     + JSON_SOURCES + _FLAG_HELP)),
            example=f"drpcli {kind.name} params {one} '{{\"kernel-console\": \"ttyS0\"}}'",
            )(_bound(_params, kind))
    command(kind.name, "get", "KEY param NAME [--aggregate]",
            summary=f"Print one param of a {kind.model} (null when it is not set)",
            arguments=(key, (name[0], name[1] + _FLAG_HELP)),
            example=f"drpcli {kind.name} get {one} param kernel-console --aggregate",
            )(_bound(_get, kind))
    command(kind.name, "set", "KEY param NAME to VALUE",
            summary=f"Set one param of a {kind.model} and print it",
            arguments=(key, name, ("VALUE", "the value as JSON (- for stdin); a word that is "
                                            "not JSON is taken as a string")),
            example=f"drpcli {kind.name} set {one} param kernel-console to ttyS1",
            )(_bound(_set, kind))
    command(kind.name, "remove", "KEY param NAME",
            summary=f"Remove one param from a {kind.model} and print its value",
            arguments=(key, name),
            example=f"drpcli {kind.name} remove {one} param kernel-console",
            )(_bound(_remove, kind))


for _name in PARAM_KINDS:
    _register(KINDS[_name])
