"""drpcli's command table: modules register (kind, verb) handlers here; main dispatches."""
from __future__ import annotations

from typing import Callable

from drp.cli.client import CliError

# (kind, verb) -> fn(client, args) returning what to print (None prints nothing)
COMMANDS: dict[tuple[str, str], Callable] = {}


def command(kind: str, verb: str):
    def register(fn):
        COMMANDS[(kind, verb)] = fn
        return fn
    return register


def need(args: list[str], n: int, usage: str) -> None:
    if len(args) < n:
        raise CliError(f"usage: drpcli {usage}")
