"""YAML content bundles without alias amplification.

A YAML alias (*a) reuses an anchored node (&a): nine levels of ten aliases each ("billion
laughs") are 10^9 strings once expanded, from a few hundred bytes. SafeLoader itself constructs
an alias as a shared Python object, but everything after it (validation, json.dumps for the
store, the replicas) walks the expanded tree. So the document is composed first (a node graph,
aliases still shared), measured as if expanded, and constructed only when the expansion stays
within the bounds: aliases may add at most `max_alias_nodes` nodes, the expanded document may
be at most `max_bytes` as JSON (estimated) and MAX_DEPTH deep; recursive aliases are refused.
"""
from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, ScalarNode

from drp.api.jsonbody import MAX_DEPTH

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BundleYamlError(ValueError):
    """Not acceptable YAML; `code` is 400 (malformed, recursive, too deep) or 413 (too big)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _line(error: Exception) -> str:
    return " ".join(str(error).split())  # PyYAML's messages span lines


def _children(node) -> list:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value)  # SequenceNode


def measure(root) -> tuple[int, int, int, int]:
    """(expanded nodes, distinct nodes, estimated JSON bytes, depth) of a composed node graph,
    without expanding it (each distinct node is visited once; no recursion)."""
    done: dict[int, tuple[int, int, int]] = {}  # id(node) -> (nodes, bytes, depth)
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        nid = id(node)
        if nid in done:
            continue
        if isinstance(node, ScalarNode):
            done[nid] = (1, len(node.value) + 3, 0)  # quotes and a separator
            continue
        kids = _children(node)
        if not children_done:
            on_path.add(nid)
            stack.append((node, True))
            for kid in kids:
                if id(kid) in on_path:
                    raise BundleYamlError(400, "bundle YAML has a recursive alias (a node "
                                          "that contains itself)")
                if id(kid) not in done:
                    stack.append((kid, False))
            continue
        on_path.discard(nid)
        measured = [done[id(k)] for k in kids]
        done[nid] = (1 + sum(m[0] for m in measured), 2 + sum(m[1] for m in measured),
                     1 + max((m[2] for m in measured), default=0))
    nodes, size, depth = done[id(root)]
    return nodes, len(done), size, depth


def load(text: str, *, max_alias_nodes: int, max_bytes: int):
    """The YAML document in `text`, or BundleYamlError when it is malformed or expands past
    the bounds (checked before anything is constructed)."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as e:
            raise BundleYamlError(400, f"bundle is neither JSON nor YAML: {_line(e)}") from None
        if root is None:
            return None
        nodes, distinct, size, depth = measure(root)
        if nodes - distinct > max_alias_nodes:
            raise BundleYamlError(413, f"bundle YAML aliases expand to {nodes} nodes from "
                                  f"{distinct}: aliases may add at most {max_alias_nodes} "
                                  "nodes (--max-yaml-alias-nodes)")
        if size > max_bytes:
            raise BundleYamlError(413, f"bundle YAML expands to about {size} bytes as JSON: "
                                  f"at most {max_bytes} bytes (--max-content-size)")
        if depth > MAX_DEPTH:
            raise BundleYamlError(400, f"bundle YAML is nested deeper than {MAX_DEPTH} levels")
        try:
            return loader.construct_document(root)
        except yaml.YAMLError as e:
            raise BundleYamlError(400, f"bundle is not valid YAML: {_line(e)}") from None
    finally:
        loader.dispose()
