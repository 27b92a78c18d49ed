"""dr-provision's claims: what a role grants, and whether a set of claims allows an action.

A claim is {scope, action, specific} (dr-provision's Claim JSON; {Scope, Action, Specific} is read
too, as drp stored it before issue 16); each field is a comma-separated list or "*". A user's
claims are the union of its roles' claims, plus (as in dr-provision) the right to get itself,
change its own password and get a token for itself. The superuser claim is */*/*.

Some things no claim short of */*/* grants, because they would let a user raise its own rights:
creating users, changing anyone's Roles, tokens or passwords for another user, HA downloads
(a snapshot holds every secret), and roles that grant more than the writer holds.
"""
from __future__ import annotations

from typing import Iterable

# A compiled claim: (scopes, actions, specifics), None standing for "*".
Claim = tuple[frozenset | None, frozenset | None, frozenset | None]

SUPERUSER_ROLE = "superuser"
SUPERUSER_CLAIM = {"scope": "*", "action": "*", "specific": "*"}
# Roles the server knows without reading the store (so a node holding no users yet, or a store
# from before roles existed, still has a superuser); they cannot be changed or removed.
BUILTIN_ROLES = {
    SUPERUSER_ROLE: {"Name": SUPERUSER_ROLE, "Claims": [SUPERUSER_CLAIM],
                     "Description": "Grants every action on everything (*/*/*)",
                     "Documentation": "Built in; cannot be changed or removed.", "Meta": {}},
}
SELF_ACTIONS = frozenset({"get", "password", "token"})


def _parts(text) -> frozenset | None:
    items = {p.strip() for p in str(text or "").split(",") if p.strip()}
    return None if "*" in items else frozenset(items)


def claim_field(claim: dict, name: str):
    """A claim's field by its JSON name (scope, action, specific), in either spelling."""
    return claim.get(name, claim.get(name.capitalize()))


def compile_claims(claims: Iterable[dict]) -> tuple[Claim, ...]:
    return tuple((_parts(claim_field(c, "scope")), _parts(claim_field(c, "action")),
                  _parts(claim_field(c, "specific"))) for c in claims if isinstance(c, dict))


def user_claims(name: str, roles: Iterable[dict | None]) -> tuple[Claim, ...]:
    """Compiled claims of a user holding `roles` (None for a role that does not exist)."""
    own: list[Claim] = [(frozenset({"users"}), SELF_ACTIONS, frozenset({name}))]
    for role in roles:
        if isinstance(role, dict) and isinstance(role.get("Claims"), list):
            own += compile_claims(role["Claims"])
    return tuple(own)


def allowed(claims: Iterable[Claim], scope: str, action: str, specific: str = "") -> bool:
    """Does any claim grant `action` on `specific` in `scope`? specific "" means no one object
    (a list, or a route about the server): a claim on any specific grants it."""
    for scopes, actions, specifics in claims:
        if (scopes is None or scope in scopes) and (actions is None or action in actions) \
                and (specifics is None or specific == "" or specific in specifics):
            return True
    return False


def is_superuser(claims: Iterable[Claim]) -> bool:
    return allowed(claims, "*", "*", "*")


def contains(claims: Iterable[Claim], granted: Iterable[dict]) -> bool:
    """Is every claim in `granted` (a role's Claims) already held by `claims`? A "*" asked for
    must be held as "*", so a role can never grant more than its writer holds."""
    claims = tuple(claims)
    for s, a, sp in compile_claims(granted):
        if s == frozenset() or a == frozenset() or sp == frozenset():
            continue  # an empty field grants nothing
        for scope in ("*",) if s is None else s:
            for action in ("*",) if a is None else a:
                for specific in ("*",) if sp is None else sp:
                    if not allowed(claims, scope, action, specific):
                        return False
    return True
