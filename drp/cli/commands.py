"""drpcli's command table: modules register (kind, verb) handlers here, each with its own help
text, so `--help` at every level is built from what is registered; main dispatches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from drp.cli.client import CliError
from drp.models import KINDS


@dataclass(frozen=True)
class Command:
    """One `drpcli KIND VERB` and the help that describes it."""
    kind: str
    verb: str
    fn: Callable  # fn(client, args) returning what to print (None prints nothing)
    synopsis: str  # the arguments after KIND VERB, e.g. "SRC [as DEST]"; "" for none
    summary: str  # one line: what the verb does
    arguments: tuple[tuple[str, str], ...] = ()  # (ARGUMENT, what it is), in synopsis order
    example: str = ""  # a whole command line an operator could type

    @property
    def usage(self) -> str:
        """`KIND VERB SYNOPSIS`: what `usage: drpcli ...` errors and help print."""
        return f"{self.kind} {self.verb} {self.synopsis}".rstrip()


@dataclass(frozen=True)
class GlobalFlag:
    short: str
    long: str
    option: str  # the Client keyword it sets
    metavar: str
    help: str


# (kind, verb) -> Command
COMMANDS: dict[tuple[str, str], Command] = {}
# kind -> one line saying what its verbs work on
KIND_SUMMARIES: dict[str, str] = {}

GLOBAL_FLAGS = (
    GlobalFlag("-E", "--endpoint", "endpoint", "ENDPOINT",
               "the server's URL (else RS_ENDPOINT, else https://127.0.0.1:8092)"),
    GlobalFlag("-U", "--username", "username", "USER",
               "the user to log in as (else RS_KEY's user, else rocketskates)"),
    GlobalFlag("-P", "--password", "password", "PASSWORD",
               "that user's password (else RS_KEY's password)"),
    GlobalFlag("-T", "--token", "token", "TOKEN",
               "a token to log in with (else RS_TOKEN); a -U or -P given wins over it"),
)
HELP_FLAGS = ("-h", "--help")


def describe(kind: str, summary: str) -> None:
    """Say in one line what `drpcli KIND ...` works on (shown by `drpcli --help`)."""
    KIND_SUMMARIES[kind] = summary


def command(kind: str, verb: str, synopsis: str = "", *, summary: str,
            arguments: tuple[tuple[str, str], ...] = (), example: str = ""):
    """Register fn(client, args) as `drpcli KIND VERB SYNOPSIS`, with the help `--help` shows."""
    def register(fn):
        if (kind, verb) in COMMANDS:  # one handler and one help per verb, whichever loads first
            raise ValueError(f"drpcli {kind} {verb} is registered twice")
        COMMANDS[(kind, verb)] = Command(kind, verb, fn, synopsis, summary, arguments, example)
        return fn
    return register


def need(args: list[str], n: int, usage: str) -> None:
    if len(args) < n:
        raise CliError(f"usage: drpcli {usage}")


def lookup(kind: str, verb: str) -> Command:
    """The registered `drpcli KIND VERB`, or the one-line error naming what is unknown."""
    found = COMMANDS.get((kind, verb))
    if found is not None:
        return found
    if kind in KINDS:
        raise CliError(f"unknown verb {verb!r} for {kind}; see drpcli --help")
    raise CliError(f"unknown command {kind} {verb}; see drpcli --help")
