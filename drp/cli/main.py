"""drpcli: `drpcli [flags] KIND VERB [ARGS...]`, printing indented JSON like dr-provision's."""
from __future__ import annotations

import json
import os
import sys

# httpx imports its own command line (click and rich, about 0.1 s) whenever those are installed;
# drpcli never uses it and every run would pay for it. A None entry makes that import fail, and
# httpx then goes without (its `except ImportError` fallback).
sys.modules.setdefault("httpx._main", None)

from drp.cli import blobs, ha, objects, params, system  # noqa: E402,F401  (register their verbs)
from drp.cli.client import CliError, Client  # noqa: E402
from drp.cli.commands import GLOBAL_FLAGS, HELP_FLAGS, command, describe, lookup, need  # noqa: E402
from drp.cli.help import help_text  # noqa: E402

describe("info", "What the server says about itself (version, ports, HA state)")
describe("system", "The HA role of the node at the endpoint (not the VIP's), and system "
         "actions")


@command("info", "get", summary="Show the server's info: id, version, ports, HA role and status",
         example="drpcli info get")
def _info(client, args):
    return client.json("GET", "/info")


@command("users", "token", "NAME [ttl DURATION]",
         summary="Issue a token for a user (a superuser may ask for anyone's)",
         arguments=(("NAME", "the user the token logs in as"),
                    ("DURATION", "how long it is valid: seconds or 30s, 10m, 3h, 7d, 3y, 1h30m "
                                 "(default 3600; at most --max-token-ttl)")),
         example="drpcli users token rocketskates ttl 3y | jq -r .Token")
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


@command("users", "password", "NAME PASSWORD", summary="Set a user's password",
         arguments=(("NAME", "the user"), ("PASSWORD", "the new password")),
         example="drpcli users password rocketskates 'a-better-password'")
def _password(client, args):
    need(args, 2, "users password NAME PASSWORD")
    return client.json("PUT", f"/users/{args[0]}/password", {"password": args[1]})


@command("system", "active",
         summary="Make this node the HA active (it takes the VIP) and print its info",
         example="drpcli -E https://10.0.0.2:8092 system active")
def _active(client, args):
    return client.json("POST", "/system/active")


@command("system", "passive", "[DRP_ID]",
         summary="Make this node an HA passive (it gives up the VIP) and print its info",
         arguments=(("DRP_ID", "with automatic failover: the passive in the sync set that "
                               "takes the leader key (default: the first to claim it)"),),
         example="drpcli system passive node-b")
def _passive(client, args):
    if len(args) > 1:
        raise CliError("usage: system passive [DRP_ID]")
    return client.json("POST", "/system/passive", params={"to": args[0]} if args else None)


def parse_globals(argv: list[str]) -> tuple[dict, list[str]]:
    flags = {}
    for flag in GLOBAL_FLAGS:
        flags[flag.short] = flags[flag.long] = flag.option
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
    opts, rest = parse_globals(argv)
    # `drpcli`, `drpcli help [KIND [VERB]]` and -h/--help anywhere answer help, as cobra's does
    if not argv or rest[:1] == ["help"] or any(a in HELP_FLAGS for a in rest):
        words = [a for a in rest[rest[:1] == ["help"]:] if a not in HELP_FLAGS]
        print(help_text(words[:3]))  # three: `system ha SUBVERB --help`
        return 0
    if len(rest) < 2:
        raise CliError("need KIND VERB; see drpcli --help")
    cmd = lookup(rest[0], rest[1])
    client = Client(**opts)
    try:
        out = cmd.fn(client, rest[2:])
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
