"""Python client of the hub: an informer (list + watch into a local cache, with indexes and handlers)."""

from fleetsync.client.informer import Informer, object_key

__all__ = ["Informer", "object_key"]
