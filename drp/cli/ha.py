"""drpcli's `system ha state|peers|leader|pause|resume` (dr-provision 4.6's names): automatic
failover as etcd holds it (drp.api.ha_cluster).

The command table is (kind, verb), so `system ha` is one registered verb whose first argument
picks the subverb; each subverb is a Command of its own (not registered: verb "ha state"), so
`drpcli system ha state --help` has its own usage, summary and example (see `subcommand`).
"""
from __future__ import annotations

from drp.cli.client import CliError
from drp.cli.commands import Command, command, need

USAGE = "system ha SUBVERB"


def _get(path: str):
    return lambda client: client.json("GET", path)


def _post(path: str):
    return lambda client: client.json("POST", path)


# subverb -> (what it does, its request)
_SUBVERBS = {
    "state": ("Show automatic failover as etcd holds it: leader, sync set, pause, members, "
              "and this node's own record", _get("/system/ha/state")),
    "peers": ("List every node's record in etcd (role, state, head, epoch, address)",
              _get("/system/ha/peers")),
    "leader": ("Show which node holds the leader key, and its address and API port",
               _get("/system/ha/leader")),
    "pause": ("Pause automatic failover for maintenance (recorded in etcd) and show the state",
              _post("/system/ha/pause")),
    "resume": ("Resume automatic failover after a pause and show the state",
               _post("/system/ha/resume")),
}
SUBCOMMANDS: dict[str, Command] = {
    name: Command("system", f"ha {name}", lambda client, args, call=call: call(client), "",
                  summary, example=f"drpcli system ha {name}")
    for name, (summary, call) in _SUBVERBS.items()}


def subcommand(words: list[str]) -> Command | None:
    """The Command of `system ha SUBVERB ...` (for its --help), else None."""
    if len(words) >= 3 and words[:2] == ["system", "ha"]:
        return SUBCOMMANDS.get(words[2])
    return None


@command("system", "ha", "SUBVERB",
         summary="Automatic failover through etcd: show the cluster, pause or resume it",
         arguments=(("SUBVERB", f"one of {', '.join(SUBCOMMANDS)} (`drpcli system ha SUBVERB "
                                "--help` says what each does)"),),
         example="drpcli system ha state")
def _ha(client, args):
    need(args, 1, USAGE)
    sub = SUBCOMMANDS.get(args[0])
    if sub is None:
        raise CliError(f"unknown verb {args[0]!r} for system ha; want one of "
                       f"{', '.join(SUBCOMMANDS)}; see drpcli system ha --help")
    if args[1:]:
        raise CliError(f"unexpected argument {args[1]!r}; usage: drpcli {sub.usage}")
    return sub.fn(client, args[1:])
