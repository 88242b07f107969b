"""The base of fleetsync's own exceptions.

``except FleetsyncError`` catches what fleetsync raises on purpose (a refused input, a lost
lease, a broken transport) and never a bug's ``TypeError``. Each class keeps the standard
base it had (``ValueError`` for bad input, ``LookupError`` for a missing thing,
``ConnectionError`` for a transport), so code that catches those still does.
"""

from __future__ import annotations


class FleetsyncError(Exception):
    """Raised, directly or as a subclass, only by fleetsync itself."""
