"""/api/v3/prefs (PrefsApi.md): dr-provision's global preferences, a flat name -> value map.

GET answers every known preference (its default until set); POST merges the body's names in
and answers the whole map. Each set preference is stored as an object of the internal kind
`prefs` ({Name, Val}, keyed by Name): the shape the store had when prefs was a kind, so older
stores keep their values, and every change rides the change log to the passives like any
object. A POST is one write: every name is checked first, and one bad name stores nothing.
"""
from __future__ import annotations

from quart import Blueprint, current_app

from drp.api.errors import ApiError
from drp.api.objects import json_body
from drp.api.respond import json_response
from drp.config import parse_duration

bp = Blueprint("prefs", __name__, url_prefix="/api/v3")
KIND = "prefs"

# dr-provision's preferences and their defaults (its docs' Preference page and a fresh
# dr-provision's `drpcli prefs list`). Values are strings, as dr-provision keeps them.
DEFAULTS = {
    "defaultBootEnv": "local", "unknownBootEnv": "ignore", "defaultStage": "none",
    "defaultWorkflow": "", "knownTokenTimeout": "3600", "unknownTokenTimeout": "600",
    "debugBootEnv": "warn", "debugDhcp": "warn", "debugFrontend": "warn",
    "debugPlugins": "warn", "debugRenderer": "warn", "logLevel": "warn",
    "completeJobsPurgedAfter": "never", "failedJobsPurgedAfter": "never", "jobsToKeep": "50",
}
# Known to dr-provision, but drp keeps its token secret in the store's secrets and never
# shows or takes it through the API.
SECRETS = ("baseTokenSecret", "systemGrantorSecret")
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "panic", "fatal")
# preference -> (kind it names, what its OnlyUnknown must be, or None for any)
REFERENCES = {"defaultBootEnv": ("bootenvs", False), "unknownBootEnv": ("bootenvs", True),
              "defaultStage": ("stages", None), "defaultWorkflow": ("workflows", None)}


async def current() -> dict[str, str]:
    """Every preference: the defaults, overlaid with what is stored (names from before this
    check are kept and shown, as a store may hold them)."""
    stored = {o["Name"]: o["Val"] for o in await current_app.node.store.list(KIND)
              if isinstance(o.get("Name"), str) and isinstance(o.get("Val"), str)}
    return {**DEFAULTS, **stored}


def _value_problem(tx, name: str, value: str) -> str | None:
    """Why `value` cannot be preference `name`, or None."""
    if name in SECRETS:
        return (f"{name}: drp keeps its token secret in its store and does not take it "
                "through the API")
    if name not in DEFAULTS:
        return f"Unknown preference {name}"
    if name in REFERENCES:
        kind, only_unknown = REFERENCES[name]
        if value == DEFAULTS[name]:
            return None  # the default always stands (dr-provision's are built in)
        obj = tx.get(kind, value)
        if obj is None:
            return f"{name}: {kind[:-1].capitalize()} {value} does not exist"
        if only_unknown is not None and bool(obj.get("OnlyUnknown")) != only_unknown:
            return (f"{name}: bootenv {value} " +
                    ("must have OnlyUnknown true" if only_unknown else "has OnlyUnknown set"))
    elif name in ("knownTokenTimeout", "unknownTokenTimeout", "jobsToKeep"):
        if not value.strip().lstrip("-").isdigit():
            return f"{name}: {value!r} is not an integer"
    elif name.startswith("debug") or name == "logLevel":
        if value not in LOG_LEVELS:
            return f"{name}: {value!r} is not a log level ({', '.join(LOG_LEVELS)})"
    elif name.endswith("PurgedAfter") and value != "never":
        try:
            parse_duration(value)
        except ValueError as e:
            return f"{name}: {value!r} is neither never nor a duration ({e})"
    return None


@bp.get("/prefs")
async def list_prefs():
    return json_response(await current())


@bp.post("/prefs")
async def set_prefs():
    body = await json_body(KIND)
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        raise ApiError(400, "want a JSON object of preference name -> string value, e.g. "
                       '{"defaultBootEnv": "local"}', model=KIND)

    def change(tx):
        problems = [p for p in (_value_problem(tx, n, v) for n, v in body.items()) if p]
        if problems:
            raise ApiError(422, *problems, model=KIND, type_="ValidationError")
        for name, value in body.items():
            before = tx.get(KIND, name)
            if before is None or before.get("Val") != value:
                tx.record(KIND, name, "create" if before is None else "update",
                          {**(before or {}), "Name": name, "Val": value})
    await current_app.node.store.write(change)
    return json_response(await current())
