"""Every blueprint the API serves, most specific routes first."""
from __future__ import annotations


def all_blueprints():
    from drp.api import objects, system
    # system's /users/<name>/token must be registered before the generic /<kind>/<key> routes.
    return [system.bp, objects.bp]
