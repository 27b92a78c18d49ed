"""The Go text/template subset that dr-provision's DhcpOption Values use, over the request's
options (`.` is a map of option code → its optvalues.describe string).

Supported, and nothing else (check() refuses the rest, so the API can answer 422):
  literal text; {{index . N}}; {{if C}}…{{else if C}}…{{else}}…{{end}}, nestable;
  C = eq A B | ne A B | index . N | (C), where A, B are (index . N) or "string";
  trim markers {{- and -}} (Go's: the marker needs a space next to it).
A small recursive-descent parser: no eval, nothing from the template reaches Python.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


class TemplateError(ValueError):
    """Text that is no template drp can render (the argument is a one-line reason)."""


@dataclass(frozen=True)
class Index:
    code: int


@dataclass(frozen=True)
class Cond:
    op: str  # "eq", "ne" or "truthy"
    args: tuple  # of Index and str


@dataclass(frozen=True)
class If:
    branches: tuple  # ((Cond, body), …): the first true one renders
    otherwise: tuple  # body when none is true


_WORD = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\\n]|\\.)*")|(`[^`]*`)|(\.)|(-?\d+)'
                   r'|([A-Za-z_]\w*)|(\S))')
_ESC = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


def _split(text: str) -> list[tuple[str, str]]:
    """text as [("text", s) | ("action", inside)], trim markers applied."""
    out: list[tuple[str, str]] = []
    i, trim_next = 0, False
    while True:
        start = text.find("{{", i)
        chunk = text[i:] if start < 0 else text[i:start]
        if trim_next:
            chunk = chunk.lstrip(" \t\r\n")
        if start < 0:
            out.append(("text", chunk))
            return out
        j = start + 2
        if text[j:j + 1] == "-" and text[j + 1:j + 2] in (" ", "\t", "\r", "\n"):
            chunk = chunk.rstrip(" \t\r\n")
            j += 1
        out.append(("text", chunk))
        end = _close(text, j)
        inside = text[j:end]
        trim_next = bool(re.search(r"\s-$", inside))
        if trim_next:
            inside = inside[:-1]
        out.append(("action", inside))
        i = end + 2


def _close(text: str, j: int) -> int:
    """Where the action opened before j ends: the next }} outside a string literal."""
    quote = None
    while j < len(text):
        c = text[j]
        if quote:
            if c == "\\" and quote == '"':
                j += 1
            elif c == quote:
                quote = None
        elif c in "\"`":
            quote = c
        elif text.startswith("}}", j):
            return j
        j += 1
    raise TemplateError("unclosed action: {{ without }}")


def _words(inside: str) -> list[tuple[str, str]]:
    words, i = [], 0
    while i < len(inside):
        if inside[i:].strip() == "":
            break
        m = _WORD.match(inside, i)
        kind = ("(", ")", "str", "raw", ".", "num", "word", "bad")[m.lastindex - 1]
        if kind == "bad":
            raise TemplateError(f"unexpected {m.group(m.lastindex)!r} in {{{{{inside.strip()}}}}}")
        words.append((kind, m.group(m.lastindex)))
        i = m.end()
    return words


class _Action:
    """One action's words, read left to right."""

    def __init__(self, inside: str):
        self.text, self.words, self.at = inside.strip(), _words(inside), 0

    def peek(self, n: int = 0):
        k = self.at + n
        return self.words[k] if k < len(self.words) else ("eof", "")

    def take(self, kind: str, value: str | None = None) -> str:
        k, v = self.peek()
        if k != kind or (value is not None and v != value):
            want = value or kind
            found = v or "the end"
            raise TemplateError(f"expected {want!r} in {{{{{self.text}}}}}, found {found!r}")
        self.at += 1
        return v

    def done(self):
        if self.at != len(self.words):
            raise TemplateError(f"unexpected {self.peek()[1]!r} in {{{{{self.text}}}}}")

    def index(self) -> Index:
        self.take("word", "index")
        self.take(".")
        code = int(self.take("num"))
        if not 0 <= code <= 255:
            raise TemplateError(f"option code {code} in {{{{{self.text}}}}} is not 0..255")
        return Index(code)

    def arg(self):
        kind, value = self.peek()
        if kind == "str":
            self.at += 1
            return re.sub(r"\\(.)", lambda m: _esc(m.group(1), self.text), value[1:-1])
        if kind == "raw":
            self.at += 1
            return value[1:-1]
        self.take("(")
        index = self.index()
        self.take(")")
        return index

    def cond(self) -> Cond:
        if self.peek()[0] == "(":
            self.at += 1
            cond = self.cond()
            self.take(")")
            return cond
        kind, word = self.peek()
        if kind == "word" and word in ("eq", "ne"):
            self.at += 1
            return Cond(word, (self.arg(), self.arg()))
        if kind == "word" and word == "index":
            return Cond("truthy", (self.index(),))
        raise TemplateError(f"unsupported condition in {{{{{self.text}}}}}: use eq, ne or index")


def _esc(c: str, where: str) -> str:
    if c not in _ESC:
        raise TemplateError(f"unsupported escape \\{c} in {{{{{where}}}}}")
    return _ESC[c]


def _body(parts: list, at: int, closers: tuple) -> tuple[tuple, int, _Action | None]:
    """Nodes from parts[at] up to an action whose first word is in closers (returned, not
    consumed past); at the end of parts when closers is empty."""
    nodes: list = []
    while at < len(parts):
        kind, value = parts[at]
        if kind == "text":
            if value:
                nodes.append(value)
            at += 1
            continue
        action = _Action(value)
        first = action.peek()
        if first[0] == "word" and first[1] in closers:
            return tuple(nodes), at, action
        if first == ("word", "if"):
            node, at = _if(parts, at, action)
            nodes.append(node)
            continue
        if first[0] == "word" and first[1] in ("else", "end"):
            raise TemplateError(f"{{{{{action.text}}}}} without {{{{if}}}}")
        if first[0] == "(":
            action.take("(")
            node = action.index()
            action.take(")")
        elif first == ("word", "index"):
            node = action.index()
        else:
            raise TemplateError(f"unsupported action {{{{{action.text}}}}}: only index . N prints")
        action.done()
        nodes.append(node)
        at += 1
    if closers:
        raise TemplateError("{{if}} without {{end}}")
    return tuple(nodes), at, None


def _if(parts: list, at: int, action: _Action) -> tuple[If, int]:
    action.take("word", "if")
    cond = action.cond()
    action.done()
    branches, otherwise = [], ()
    while True:
        body, at, closer = _body(parts, at + 1, ("else", "end"))
        branches.append((cond, body))
        closer.take("word")
        if closer.words[0][1] == "end":
            closer.done()
            return If(tuple(branches), otherwise), at + 1
        if closer.peek() == ("word", "if"):  # else if: another branch
            closer.take("word", "if")
            cond = closer.cond()
            closer.done()
            continue
        closer.done()
        otherwise, at, closer = _body(parts, at + 1, ("else", "end"))
        closer.take("word", "end")  # an {{else}} after {{else}} lands here as an error
        closer.done()
        return If(tuple(branches), otherwise), at + 1


@lru_cache(maxsize=1024)  # a subnet's few templates, parsed once, rendered per packet
def _parse(text: str) -> tuple:
    body, _, _ = _body(_split(text), 0, ())
    return body


def check(text: str) -> None:
    if not isinstance(text, str):  # before the cache, which would hash it
        raise TemplateError("a template must be a string")
    _parse(text)


def _value(arg, opts: dict[int, str]) -> str:
    # A missing option is "" here: Go's text/template prints "<no value>" for a missing map
    # key, but dr-provision's templates only compare with eq, where "" is what they mean.
    return opts.get(arg.code, "") if isinstance(arg, Index) else arg


def _true(cond: Cond, opts: dict[int, str]) -> bool:
    if cond.op == "truthy":
        return _value(cond.args[0], opts) != ""
    same = _value(cond.args[0], opts) == _value(cond.args[1], opts)
    return same if cond.op == "eq" else not same


def _render(nodes: tuple, opts: dict[int, str], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Index):
            out.append(_value(node, opts))
        else:
            for cond, body in node.branches:
                if _true(cond, opts):
                    _render(body, opts, out)
                    break
            else:
                _render(node.otherwise, opts, out)


def render(text: str, opts: dict[int, str]) -> str:
    check(text)
    out: list[str] = []
    _render(_parse(text), opts, out)
    return "".join(out)
