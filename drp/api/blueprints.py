"""Every blueprint the API serves, most specific routes first."""
from __future__ import annotations


def all_blueprints():
    from drp.api import blobs, contents, ha, objects, system
    # system's /users/<name>/token, the blob routes (/files, /isos, /plugin_providers,
    # /jobs/<uuid>/log) and /contents must be registered before the generic /<kind>/<key>.
    return [system.bp, ha.bp, blobs.bp, contents.bp, objects.bp]
