"""What the store refuses with. str(e) is the one-line reason; drp/api maps each class to
dr-provision's status code and Type (drp.api.errors)."""
from __future__ import annotations


class StoreError(Exception):
    """A write the store did not (or may not have) made durable and replicated."""


class WritesRefused(StoreError):
    """This node takes no writes now (a passive, or starting up in HA mode)."""


class NotReplicated(StoreError):
    """Committed here, but the passives did not confirm it before the active role ended.
    Raised by the replication hook given to Store.accept_writes."""


class StorageLost(StoreError):
    """A commit could not be made durable: this node writes nothing more."""
