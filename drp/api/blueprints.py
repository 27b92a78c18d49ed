"""Every blueprint the API serves, most specific routes first."""
from __future__ import annotations

from drp.api import blobs, contents, ha, ha_cluster, ha_trust, objects, params, prefs, system
from drp.api import pubkey  # /<kind>/<key>/pubkey (secure params)


def all_blueprints():
    # system's /users/<name>/token, the blob routes (/files, /isos, /plugin_providers,
    # /jobs/<uuid>/log) and /contents must be registered before the generic /<kind>/<key>.
    return [system.bp, ha.bp, ha_cluster.bp, ha_trust.bp, blobs.bp, contents.bp, params.bp,
            prefs.bp, pubkey.bp, objects.bp]
