"""drpcli's `system ha state|peers|leader|pause|resume` (dr-provision 4.6's names): automatic
failover as etcd holds it (drp.api.ha_cluster); and cluster trust, `system ha
trust|remove|admit|rotate-token|rotate-ca` (drp.api.ha_trust).

The command table is (kind, verb), so `system ha` is one registered verb whose first argument
picks the subverb; each subverb is a Command of its own (not registered: verb "ha state"), so
`drpcli system ha state --help` has its own usage, summary and example (see `subcommand`).
"""
from __future__ import annotations

from drp.cli.client import CliError
from drp.cli.commands import Command, command, need

USAGE = "system ha SUBVERB"


def _get(path: str):
    return lambda client, args: client.json("GET", path)


def _post(path: str):
    return lambda client, args: client.json("POST", path + "".join(f"/{a}" for a in args))


# subverb -> (what it does, its request[, its argument])
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
    "trust": ("Show this node's cluster certificate, the roots it trusts and the removed nodes",
              _get("/system/ha/trust")),
    "remove": ("On the active: refuse DRP_ID's certificate from now on (its replication "
               "stream is cut; it cannot enrol again until admitted)",
               _post("/system/ha/remove"), "DRP_ID"),
    "admit": ("On the active: take DRP_ID off the removed list (it may enrol again with the "
              "HA token)", _post("/system/ha/admit"), "DRP_ID"),
    "rotate-token": ("On the active: make a new HA token and print it; the old one no longer "
                     "enrols, enrolled nodes keep replicating with their certificates",
                     _post("/system/ha/rotate-token")),
    "rotate-ca": ("On the active: start a new cluster CA root now (nodes renew from it; older "
                  "roots stay trusted until they expire)", _post("/system/ha/rotate-ca")),
}
SUBCOMMANDS: dict[str, Command] = {
    name: Command("system", f"ha {name}", lambda client, args, call=spec[1]: call(client, args),
                  spec[2] if len(spec) > 2 else "", spec[0],
                  example=f"drpcli system ha {name}" + (" node-c" if len(spec) > 2 else ""))
    for name, spec in _SUBVERBS.items()}


def subcommand(words: list[str]) -> Command | None:
    """The Command of `system ha SUBVERB ...` (for its --help), else None."""
    if len(words) >= 3 and words[:2] == ["system", "ha"]:
        return SUBCOMMANDS.get(words[2])
    return None


@command("system", "ha", "SUBVERB",
         summary="The HA cluster: etcd failover, node certificates, removal, rotation",
         arguments=(("SUBVERB", f"one of {', '.join(SUBCOMMANDS)} (`drpcli system ha SUBVERB "
                                "--help` says what each does)"),),
         example="drpcli system ha state")
def _ha(client, args):
    need(args, 1, USAGE)
    sub = SUBCOMMANDS.get(args[0])
    if sub is None:
        raise CliError(f"unknown verb {args[0]!r} for system ha; want one of "
                       f"{', '.join(SUBCOMMANDS)}; see drpcli system ha --help")
    wanted = 1 if sub.synopsis else 0
    if len(args[1:]) != wanted:
        raise CliError(f"usage: drpcli {sub.usage}" if len(args[1:]) < wanted else
                       f"unexpected argument {args[1 + wanted]!r}; usage: drpcli {sub.usage}")
    return sub.fn(client, args[1:])
