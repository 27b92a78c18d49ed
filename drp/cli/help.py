"""drpcli's --help answers, built from the command table (drp.cli.commands): the kinds, one
kind's verbs, or one verb's usage, arguments and example."""
from __future__ import annotations

import textwrap

from drp.cli.client import CliError
from drp.cli.ha import subcommand
from drp.cli.commands import COMMANDS, GLOBAL_FLAGS, HELP_FLAGS, KIND_SUMMARIES, Command, lookup

WIDTH = 100
GLOBALS = " ".join(f"[{f.short} {f.metavar}]" for f in GLOBAL_FLAGS)
GLOBALS_LINE = ("Global flags: " + ", ".join(f"{f.short} {f.metavar}" for f in GLOBAL_FLAGS)
                + " (see drpcli --help)")


def kinds() -> list[str]:
    return sorted({kind for kind, _ in COMMANDS})


def verbs(kind: str) -> list[Command]:
    return sorted((c for (k, _), c in COMMANDS.items() if k == kind), key=lambda c: c.verb)


def _table(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    """Two columns, the second wrapped under itself."""
    width = max(len(left) for left, _ in rows)
    lines = []
    for left, right in rows:
        lines.extend(textwrap.wrap(right, WIDTH, initial_indent=f"{indent}{left:<{width}}   ",
                                   subsequent_indent=" " * (len(indent) + width + 3))
                     or [f"{indent}{left}"])
    return lines


def top_help() -> str:
    rows = []
    for kind in kinds():
        rows.append((kind, KIND_SUMMARIES.get(kind, "")))
        rows.append(("", " ".join(c.verb for c in verbs(kind))))
    flags = [(f"{f.short}, {f.long} {f.metavar}", f.help) for f in GLOBAL_FLAGS]
    flags.append((", ".join(HELP_FLAGS), "this help; after KIND or KIND VERB, that one's help"))
    return "\n".join([
        f"usage: drpcli {GLOBALS} KIND VERB [ARGS...]",
        "",
        "Talks to a dr-provision server's API (/api/v3) and prints its answers as indented JSON.",
        "",
        "Kinds and their verbs:", *_table(rows),
        "",
        "Flags:", *_table(flags),
        "",
        "RS_KEY is user:password (default rocketskates:r0cketsk8ts). JSON may be literal JSON,",
        "a file name, or - for stdin.",
        'Use "drpcli KIND --help" for the verbs of a kind, "drpcli KIND VERB --help" for one verb.',
    ])


def kind_help(kind: str) -> str:
    found = verbs(kind)
    if not found:
        raise CliError(f"unknown command {kind}; see drpcli --help")
    rows = [(f"{c.verb} {c.synopsis}".rstrip(), c.summary) for c in found]
    return "\n".join([
        f"usage: drpcli {kind} VERB [ARGS...]",
        "",
        KIND_SUMMARIES.get(kind, ""),
        "",
        "Verbs:", *_table(rows),
        "",
        f'Use "drpcli {kind} VERB --help" for the arguments of a verb and an example.',
        GLOBALS_LINE,
    ])


def verb_help(cmd: Command) -> str:
    lines = [f"usage: drpcli {cmd.usage}", "", cmd.summary + "."]
    if cmd.arguments:
        lines += ["", "Arguments:", *_table(list(cmd.arguments))]
    if cmd.example:
        lines += ["", "Example:", f"  {cmd.example}"]
    return "\n".join([*lines, "", GLOBALS_LINE])


def help_text(words: list[str]) -> str:
    """The help for `drpcli [KIND [VERB]] --help` (words after the verb are ignored, as cobra
    does); a CliError for a kind or verb that is not there."""
    if not words:
        return top_help()
    if len(words) == 1:
        return kind_help(words[0])
    return verb_help(subcommand(words) or lookup(words[0], words[1]))
