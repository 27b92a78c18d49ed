"""drpcli: `drpcli [flags] KIND VERB [ARGS...]`, printing indented JSON like dr-provision's."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonpatch

# httpx imports its own command line (click and rich, about 0.1 s) whenever those are installed;
# drpcli never uses it and every run would pay for it. A None entry makes that import fail, and
# httpx then goes without (its `except ImportError` fallback).
sys.modules.setdefault("httpx._main", None)

from drp.cli import blobs  # noqa: E402,F401  (registers the file, ISO, log and bundle verbs)
from drp.cli.client import CliError, Client  # noqa: E402
from drp.cli.commands import COMMANDS, command, need  # noqa: E402
from drp.models import KINDS  # noqa: E402

USAGE = """usage: drpcli [-E ENDPOINT] [-U USER] [-P PASSWORD] [-T TOKEN] KIND VERB [ARGS...]

  info get
  users token NAME [ttl DURATION]        users password NAME PASSWORD
  system active|passive
  KIND list [Field=value ...] | show KEY | exists KEY | create JSON | update KEY JSON
       | patch KEY PATCH | destroy KEY
  files|isos upload SRC [as DEST] | download SRC [to DEST] | list [PATH] | exists PATH | destroy PATH
  jobs log UUID | jobs log-append UUID FILE|-
  contents upload FILE | list | show NAME | destroy NAME
  plugin_providers upload NAME from FILE | list | show NAME | destroy NAME
JSON may be literal JSON, a file name, or - for stdin.
Environment: RS_ENDPOINT, RS_KEY (user:password), RS_TOKEN.
KINDS: """ + " ".join(sorted(KINDS))

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


def generic(client: Client, kind: str, verb: str, args: list[str]):
    k = KINDS[kind]
    if verb == "list":
        params = dict(a.split("=", 1) for a in args if "=" in a)
        return client.json("GET", f"/{kind}", params=params)
    if verb == "show":
        need(args, 1, f"{kind} show KEY")
        return client.json("GET", f"/{kind}/{args[0]}")
    if verb == "exists":
        need(args, 1, f"{kind} exists KEY")
        client.request("HEAD", f"/{kind}/{args[0]}")
        return None
    if verb == "create":
        need(args, 1, f"{kind} create JSON")
        try:
            body = read_json(args[0])
        except CliError:
            if args[0] == "-" or args[0].lstrip().startswith(("{", "[")):
                raise
            body = args[0]  # not JSON and not a file: a bare key
        if isinstance(body, str):  # `drpcli profiles create foo` creates by key alone
            body = {k.key: body}
        return client.json("POST", f"/{kind}", body)
    if verb == "update":
        need(args, 2, f"{kind} update KEY JSON")
        current = client.json("GET", f"/{kind}/{args[0]}")
        patch = jsonpatch.make_patch(current, merge(current, read_json(args[1])))
        return client.json("PATCH", f"/{kind}/{args[0]}", list(patch))
    if verb == "patch":
        need(args, 2, f"{kind} patch KEY PATCH")
        return client.json("PATCH", f"/{kind}/{args[0]}", read_json(args[1]))
    if verb == "destroy":
        need(args, 1, f"{kind} destroy KEY")
        client.json("DELETE", f"/{kind}/{args[0]}")
        return f"Deleted {k.model} {args[0]}"
    raise CliError(f"unknown verb {verb!r} for {kind}; see drpcli --help")


@command("info", "get")
def _info(client, args):
    return client.json("GET", "/info")


@command("users", "token")
def _token(client, args):
    need(args, 1, "users token NAME [ttl DURATION]")
    params = {}
    rest = args[1:]
    while rest:
        if rest[0] == "ttl" and len(rest) > 1:
            params["ttl"] = rest[1]
            rest = rest[2:]
        else:
            raise CliError(f"unexpected argument {rest[0]!r}; usage: users token NAME [ttl DURATION]")
    return client.json("GET", f"/users/{args[0]}/token", params=params)


@command("users", "password")
def _password(client, args):
    need(args, 2, "users password NAME PASSWORD")
    return client.json("PUT", f"/users/{args[0]}/password", {"password": args[1]})


@command("system", "active")
def _active(client, args):
    return client.json("POST", "/system/active")


@command("system", "passive")
def _passive(client, args):
    return client.json("POST", "/system/passive")


def parse_globals(argv: list[str]) -> tuple[dict, list[str]]:
    flags = {"-E": "endpoint", "--endpoint": "endpoint", "-U": "username",
             "--username": "username", "-P": "password", "--password": "password",
             "-T": "token", "--token": "token"}
    opts, rest = {}, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in flags and eq:
            opts[flags[name]] = value
        elif arg in flags:
            if i + 1 >= len(argv):
                raise CliError(f"{arg} needs a value")
            opts[flags[arg]] = argv[i + 1]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return opts, rest


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    opts, rest = parse_globals(argv)
    if len(rest) < 2:
        raise CliError("need KIND VERB; see drpcli --help")
    kind, verb, args = rest[0], rest[1], rest[2:]
    client = Client(**opts)
    try:
        fn = COMMANDS.get((kind, verb))
        if fn is not None:
            out = fn(client, args)
        elif kind in KINDS:
            out = generic(client, kind, verb, args)
        else:
            raise CliError(f"unknown command {kind} {verb}; see drpcli --help")
    finally:
        client.close()
    if isinstance(out, str):
        print(out)
    elif out is not None:
        print(json.dumps(out, indent=2))
    return 0


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except CliError as e:
        print(f"Error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `drpcli ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
