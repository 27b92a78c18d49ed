"""drpcli's `prefs list|set` and `system actions|action|runaction`, as dr-provision's drpcli
names them."""
from __future__ import annotations

from urllib.parse import quote

from drp.cli.client import CliError
from drp.cli.commands import command, describe, need
from drp.cli.objects import read_json

describe("prefs", "The server's global preferences (a name -> value map)")


def pairs_or_map(args: list[str], usage: str) -> dict:
    """dr-provision's `- | JSON map | NAME VALUE pairs` arguments as one map."""
    need(args, 1, usage)
    if len(args) == 1:
        try:
            body = read_json(args[0])
        except CliError as e:  # neither JSON nor a pair: say what would do
            raise CliError(f"{e}; want -, a JSON object or NAME VALUE pairs; usage: drpcli "
                           f"{usage}") from None
        if not isinstance(body, dict):
            raise CliError(f"want a JSON object, not {type(body).__name__}; usage: drpcli {usage}")
        return body
    if not args or len(args) % 2:
        raise CliError(f"want NAME VALUE pairs (an even number of arguments); usage: drpcli "
                       f"{usage}")
    return dict(zip(args[::2], args[1::2]))


@command("prefs", "list", summary="Show every preference and its value",
         example="drpcli prefs list")
def _prefs_list(client, args):
    return client.json("GET", "/prefs")


@command("prefs", "set", "PREFS",
         summary="Set preferences, then show them all (one bad name or value sets none)",
         arguments=(("PREFS", "NAME VALUE pairs (a preference, e.g. defaultBootEnv, "
                              "knownTokenTimeout, logLevel, and its new value), or a JSON "
                              "object of them, a file holding it, or - for stdin"),),
         example="drpcli prefs set knownTokenTimeout 7200 logLevel info")
def _prefs_set(client, args):
    return client.json("POST", "/prefs", pairs_or_map(args, "prefs set PREFS"))


@command("system", "actions", "[plugin NAME]",
         summary="List the system's actions (plugins offer them; drp runs none)",
         arguments=(("NAME", "only the actions of this plugin"),),
         example="drpcli system actions")
def _actions(client, args):
    return client.json("GET", "/system/actions", params=_plugin(args, 0, "system actions"))


@command("system", "action", "CMD [plugin NAME]", summary="Show one system action",
         arguments=(("CMD", "the action's command name"),
                    ("NAME", "look only at this plugin's actions")),
         example="drpcli system action cmd-name")
def _action(client, args):
    need(args, 1, "system action CMD [plugin NAME]")
    return client.json("GET", f"/system/actions/{quote(args[0], safe='')}",
                       params=_plugin(args, 1, "system action CMD"))


@command("system", "runaction", "CMD [PARAMS]",
         summary="Run a system action and show its result",
         arguments=(("CMD", "the action's command name"),
                    ("PARAMS", "NAME VALUE pairs of the action's parameters, or a JSON object "
                               "of them, a file holding it, or - for stdin")),
         example="drpcli system runaction cmd-name param-name value")
def _runaction(client, args):
    usage = "system runaction CMD [PARAMS]"
    need(args, 1, usage)
    body = pairs_or_map(args[1:], usage) if args[1:] else {}
    return client.json("POST", f"/system/actions/{quote(args[0], safe='')}", body)


def _plugin(args: list[str], at: int, usage: str) -> dict:
    rest = args[at:]
    if not rest:
        return {}
    if len(rest) == 2 and rest[0] == "plugin":
        return {"plugin": rest[1]}
    raise CliError(f"unexpected argument {rest[0]!r}; usage: drpcli {usage} [plugin NAME]")
