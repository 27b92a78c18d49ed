"""drpcli --help at every level, built from the command table: every registered command and
verb answers it (exit 0, on stdout, a usage line naming it), and what it says matches what the
handler accepts. No server needed: help never reaches one."""
from __future__ import annotations

import re
import subprocess

import pytest

from drp.cli.client import CliError, Client
from drp.cli.commands import COMMANDS, KIND_SUMMARIES
from drp.cli.main import run
from tests.drpserver import BIN, clean_environ, free_port

ALL = sorted(COMMANDS)
KINDS_OF_COMMANDS = sorted({kind for kind, _ in COMMANDS})


def drpcli(*args: str) -> subprocess.CompletedProcess:
    # an endpoint nothing listens on: help must not need the server
    env = {**clean_environ(), "RS_ENDPOINT": f"https://127.0.0.1:{free_port()}"}
    return subprocess.run([str(BIN / "drpcli"), *args], env=env, text=True, capture_output=True,
                          timeout=60)


def help_of(capsys, *args: str) -> str:
    assert run(list(args)) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.endswith("\n")
    return out


def synopsis_words(synopsis: str) -> list[str]:
    """The argument names of a synopsis: `NAME [ttl DURATION]` -> NAME, DURATION (lowercase
    words are literal keywords, `...` a repeat)."""
    words = synopsis.replace("[", " ").replace("]", " ").split()
    return [w for w in words if w != "..." and not w.islower()]


def required_count(synopsis: str) -> int:
    """How many words a synopsis needs: those outside brackets."""
    return len(re.sub(r"\[[^\]]*\]", " ", synopsis).split())


@pytest.mark.parametrize("kind, verb", ALL, ids=[f"{k}-{v}" for k, v in ALL])
def test_every_verb_answers_help(capsys, kind, verb):
    cmd = COMMANDS[(kind, verb)]
    for flag in ("--help", "-h"):
        out = help_of(capsys, kind, verb, flag)
        assert out.startswith(f"usage: drpcli {kind} {verb}"), out
        assert out.splitlines()[0] == f"usage: drpcli {cmd.usage}"
        assert cmd.summary in out and cmd.example in out
    assert help_of(capsys, "help", kind, verb) == out
    # flags before the command and words after the verb change nothing
    assert help_of(capsys, "-E", "https://192.0.2.1:8092", kind, verb, "x", "--help") == out


@pytest.mark.parametrize("kind, verb", ALL, ids=[f"{k}-{v}" for k, v in ALL])
def test_help_matches_what_the_handler_accepts(kind, verb):
    cmd = COMMANDS[(kind, verb)]
    assert cmd.summary and not cmd.summary.endswith(".")
    # every argument named in the synopsis is explained, and nothing else is
    assert [name for name, _ in cmd.arguments] == synopsis_words(cmd.synopsis)
    assert all(text for _, text in cmd.arguments)
    assert "drpcli " in cmd.example and f" {kind} {verb}" in cmd.example
    # one argument short of the synopsis, the handler says exactly the usage help shows
    # (before any request: the endpoint answers nothing)
    need = required_count(cmd.synopsis)
    if need:
        client = Client(endpoint=f"https://127.0.0.1:{free_port()}")
        try:
            with pytest.raises(CliError) as short:
                cmd.fn(client, ["x"] * (need - 1))
        finally:
            client.close()
        assert str(short.value) == f"usage: drpcli {cmd.usage}"


@pytest.mark.parametrize("kind", KINDS_OF_COMMANDS)
def test_every_kind_lists_its_verbs(capsys, kind):
    out = help_of(capsys, kind, "--help")
    lines = out.splitlines()
    assert lines[0] == f"usage: drpcli {kind} VERB [ARGS...]"
    assert KIND_SUMMARIES[kind] in out
    verbs = sorted(v for k, v in COMMANDS if k == kind)
    table = lines[lines.index("Verbs:") + 1:lines.index("", lines.index("Verbs:"))]
    listed = [line.split()[0] for line in table if not line.startswith("   ")]
    assert listed == verbs  # one line each (a long summary wraps under itself)
    for verb in verbs:
        assert COMMANDS[(kind, verb)].summary in out
    assert help_of(capsys, kind, "-h") == out == help_of(capsys, "help", kind)


def test_top_help_names_every_kind_and_verb(capsys):
    out = help_of(capsys, "--help")
    assert out.startswith("usage: drpcli [-E ENDPOINT] [-U USER] [-P PASSWORD] [-T TOKEN] "
                          "KIND VERB [ARGS...]\n")
    lines = out.splitlines()
    for kind in KINDS_OF_COMMANDS:  # the kind and its summary, then its verbs on the next line
        at = next(i for i, line in enumerate(lines) if line.split()[:1] == [kind])
        assert lines[at].split(None, 1)[1] == KIND_SUMMARIES[kind]
        assert lines[at + 1].split() == sorted(v for k, v in COMMANDS if k == kind)
    for flag in ("-E, --endpoint", "-U, --username", "-P, --password", "-T, --token", "-h, --help"):
        assert flag in out
    assert help_of(capsys, "-h") == help_of(capsys, "help") == help_of(capsys) == out


@pytest.mark.parametrize("args", [
    ("--help",), ("machines", "--help"), ("machines", "create", "--help"),
    ("files", "upload", "--help"), ("files", "--help"), ("system", "--help"),
    ("users", "token", "--help"), ("isos", "-h"), ("help", "jobs", "log"),
])
def test_help_from_the_command_line(args):
    res = drpcli(*args)
    assert res.returncode == 0, res
    assert res.stderr == "" and res.stdout.startswith("usage: drpcli "), res


@pytest.mark.parametrize("args, error", [
    (("files", "frob", "--help"), "unknown command files frob"),
    (("gizmos", "list", "--help"), "unknown command gizmos list"),
    (("gizmos", "--help"), "unknown command gizmos"),
    (("machines", "frob", "-h"), "unknown verb 'frob' for machines"),
    (("help", "machines", "frob"), "unknown verb 'frob' for machines"),
    (("files", "frob"), "unknown command files frob"),
    (("machines", "frob"), "unknown verb 'frob' for machines"),
])
def test_unknown_commands_still_fail(args, error):
    res = drpcli(*args)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == f"Error: {error}; see drpcli --help\n"
