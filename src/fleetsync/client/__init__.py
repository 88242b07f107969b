"""Python client of the hub: an informer (list + watch into a local cache, with indexes and handlers), and ``check_gated``."""

from fleetsync.client.gates import check_gated
from fleetsync.client.informer import Informer, Refused, object_key
from fleetsync.model.watchevents import Expired

__all__ = ["Expired", "Informer", "Refused", "check_gated", "object_key"]
