"""What a param's definition (a `params` object of the same name) says about its values, applied
on every write of an object's Params (the params routes, and an object's create, PUT and
PATCH: drp.api.objects calls check_write inside the write) and on the reads that may decode.

- Schema (drp.paramschema): a value set or changed must match it, else 422 naming the param
  and the reason. No definition, or one without a Schema: anything goes, as in dr-provision.
  A value the object already had is not checked again (dr-provision does not re-check values
  when a Schema changes either).
- Secure (drp.secureparams): the value is stored and served as a SecureData sealed to the
  object's key pair (dr-provision's NaCl box); a plain value is sealed here, a SecureData (what
  RackN's client seals to GET /<kind>/<key>/pubkey, or a GET-edit-PUT round trip sends back)
  must open with the object's key, else 422, and is stored as it came. Its Schema is checked on
  the plain value.
- A `params` object's own Schema must be a JSON schema (422 otherwise).
"""
from __future__ import annotations

from quart import request

from drp import models, paramschema, secureparams
from drp.api import rbac
from drp.api.errors import ApiError
from drp.claims import allowed
from drp.modelvalues import parse_bool

PARAMS_KINDS = frozenset(models.PARAM_KINDS)  # the kinds whose objects carry Params


def flag(name: str, kind: str, key: str = "") -> bool:
    """A boolean query argument, as Go's ParseBool takes it (the client sends `True`)."""
    value = request.args.get(name, "")
    parsed = parse_bool(value) if value else False
    if parsed is not None:
        return parsed
    raise ApiError(400, f"{name}={value!r} is not a boolean: use true or false", model=kind,
                   key=key)


def wants_decode(kind: str, key: str = "") -> bool:
    """?decode=true: secure params opened; needs the kind's getSecure claim (on the object, or
    on any one of them for a list), as in dr-provision."""
    if not flag("decode", kind, key):
        return False
    if not allowed(request.claims, kind, "getSecure", key):
        raise rbac.forbidden(kind, "getSecure", key)
    return True


async def opener(store) -> secureparams.Keyring | None:
    """This store's Keyring for reads (each object's key: for_object); None while nothing
    secure was ever stored and no pubkey asked for."""
    record = await store.get(secureparams.SECRET_KIND, secureparams.SECRET_KEY)
    return secureparams.keyring(record) if record else None


async def object_key(store, kind: str, key: str) -> secureparams.ObjectKey:
    """The object's key pair (the pubkey route): the store secret is made, in its own write,
    when no secure value was stored yet (a passive has it once the active made it)."""
    ring = await opener(store)
    if ring is None:
        ring = await store.write(secureparams.keyring_in)
    return ring.for_object(kind, key)


def _invalid(kind: str, key: str, messages: list[str]) -> ApiError:
    return ApiError(422, *messages, model=kind, key=key, type_="ValidationError")


def check_write(tx, kind: str, key: str, new: dict, current: dict | None,
                definition_of=None) -> dict:
    """The object as it is to be stored: its Params checked against their definitions and
    secure ones sealed; raises a 422 ApiError listing each value refused. definition_of(name):
    where definitions are looked up (default: the store; a content bundle's own come first)."""
    if kind == "params":
        try:
            paramschema.check_schema(new.get("Schema"))
        except paramschema.BadSchema as e:
            raise _invalid(kind, key, [f"param {key}: {e}"]) from None
        return new
    params = new.get("Params")
    if kind not in PARAMS_KINDS or not isinstance(params, dict) or not params:
        return new
    before = (current or {}).get("Params")
    before = before if isinstance(before, dict) else {}
    out, problems, sealer = {}, [], None  # sealer: this object's key, made on first need
    for name, value in params.items():
        out[name] = value
        if name in before and before[name] == value:
            continue  # as it was: checked (and sealed) when it was set
        definition = (definition_of or (lambda n: tx.get("params", n)))(name)
        if not definition:
            continue
        plain = value
        if definition.get("Secure") is True:
            if sealer is None:
                sealer = secureparams.keyring_in(tx).for_object(kind, key)
            if secureparams.is_secure_data(value):
                try:
                    plain = sealer.open(value)
                except secureparams.SecureDataError as e:
                    problems.append(f"Key '{name}': invalid val: {e}")
                    continue
            else:
                out[name] = sealer.seal(value)
        why = paramschema.problem(definition.get("Schema"), plain,
                                  secret=definition.get("Secure") is True)
        if why:
            shown = "(secure, not shown)" if definition.get("Secure") is True else \
                f"'{paramschema.quoted(plain)}'"
            problems.append(f"Key '{name}': invalid val {shown}: {why}")
    if problems:
        raise _invalid(kind, key, problems)
    return {**new, "Params": out}
